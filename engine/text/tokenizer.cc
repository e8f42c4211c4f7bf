#include "engine/text/tokenizer.h"

#include "engine/text/added_vocabulary.h"
#include "engine/text/bpe_model.h"
#include "engine/text/byte_level.h"
#include "engine/text/normalizer.h"
#include "engine/text/pre_tokenizer.h"
#include "engine/text/utf8.h"

namespace spark::engine {

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  EncodeText(text, parse_special, &ids);
  return ids;
}

std::vector<int32_t> Tokenizer::EncodeWithOptions(std::string_view text,
                                                  const EncodeOptions& options) const {
  std::vector<int32_t> ids;
  if (options.add_special_tokens) ids = special_prefix_;
  EncodeText(text, options.parse_special, &ids);
  if (options.add_special_tokens) {
    ids.insert(ids.end(), special_suffix_.begin(), special_suffix_.end());
  }
  return ids;
}

void Tokenizer::EncodeText(std::string_view text, bool parse_special,
                           std::vector<int32_t>* ids) const {
  std::string repaired;
  if (!text::IsValidUtf8(text)) {
    text::AppendUtf8Lossy(text, &repaired);
    text = repaired;
  }
  std::vector<text::AddedSplit> raw_splits;
  added_->Split(text, /*normalized=*/false, parse_special, &raw_splits);
  std::string normalized;
  std::vector<text::AddedSplit> normalized_splits;
  for (const text::AddedSplit& split : raw_splits) {
    if (split.id >= 0) {
      ids->push_back(split.id);
      continue;
    }
    std::string_view piece = text.substr(split.begin, split.end - split.begin);
    if (normalizer_ != nullptr) {
      normalizer_->Normalize(piece, &normalized);
      piece = normalized;
    }
    if (!added_->has_normalized_tokens()) {
      EncodeNormalizedPiece(piece, ids);
      continue;
    }
    normalized_splits.clear();
    added_->Split(piece, /*normalized=*/true, parse_special, &normalized_splits);
    for (const text::AddedSplit& sub : normalized_splits) {
      if (sub.id >= 0) {
        ids->push_back(sub.id);
      } else {
        EncodeNormalizedPiece(piece.substr(sub.begin, sub.end - sub.begin), ids);
      }
    }
  }
}

void Tokenizer::EncodeNormalizedPiece(std::string_view piece, std::vector<int32_t>* ids) const {
  if (pre_tokenizer_ == nullptr) {
    model_->Tokenize(piece, ids);
    return;
  }
  text::Pieces pieces;
  pre_tokenizer_->PreTokenize(piece, &pieces);
  for (size_t i = 0; i < pieces.spans.size(); ++i) model_->Tokenize(pieces.piece(i), ids);
}

int64_t Tokenizer::vocab_size() const { return id_end_; }

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const text::AddedToken& t : added_->tokens()) {
    if (t.content == token) return t.id;
  }
  return model_->TokenToId(token);
}

std::string_view Tokenizer::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_end_) return {};
  const int32_t added = added_index_by_id_[id];
  if (added >= 0) return added_->tokens()[added].content;
  return model_->IdToToken(id);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < id_end_ && special_by_id_[id];
}

Status Tokenizer::AppendTokenBytes(int32_t id, std::string* bytes) const {
  const std::string_view token = IdToToken(id);
  if (token.empty()) {
    return InvalidArgument(
        "token id " + std::to_string(id) + " is not in the vocabulary (ids run from 0 to " +
        std::to_string(id_end_ - 1) + "); the ids come from a different model or are corrupt");
  }
  if (!byte_level_decoder_ || !text::AppendBytesFromByteLevel(token, bytes)) {
    bytes->append(token);  // HF: a token outside the byte alphabet keeps its own bytes
  }
  return Status::Ok();
}

Result<std::string> Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  bytes.reserve(ids.size() * 4);
  bool first = true;
  for (const int32_t id : ids) {
    if (skip_special && IsSpecial(id)) continue;
    if (!byte_level_decoder_ && !first) bytes.push_back(' ');
    SPARK_RETURN_IF_ERROR(AppendTokenBytes(id, &bytes));
    first = false;
  }
  if (text::IsValidUtf8(bytes)) return bytes;
  std::string repaired;
  text::AppendUtf8Lossy(bytes, &repaired);
  return repaired;
}

}  // namespace spark::engine
