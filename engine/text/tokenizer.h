// Tokenizer: a Hugging Face tokenizer.json byte-level BPE tokenizer (Qwen, Llama 3, GLM-4,
// GPT-2 families), exact with respect to the Rust `tokenizers` library for encoding and
// decoding.
//
// Encode pipeline, as HF's TokenizerImpl::encode_single_sequence:
//   1. cut the raw text on added tokens with normalized=false (special ones only when
//      parse_special), leftmost-longest, with lstrip/rstrip/single_word;
//   2. normalize each remaining piece (NFC, ...), then cut it on normalized added tokens;
//   3. pre-tokenize (Split regex, ByteLevel) and encode each piece with BPE;
//   4. with add_special_tokens, add the post_processor's tokens (TemplateProcessing,
//      RobertaProcessing, BertProcessing; ByteLevel adds none).
// Text that is not well-formed UTF-8 is repaired first (each bad sequence becomes U+FFFD).
// `truncation` and `padding` in tokenizer.json are ignored: the engine applies its own limits.
//
// Decode: ids map to tokens (added tokens first), special tokens are dropped on request, and the
// ByteLevel decoder maps tokens back to bytes; invalid UTF-8 in the result becomes U+FFFD as
// HF's from_utf8_lossy does. Without a decoder, tokens are joined with ' ' (HF behaviour).
// Unlike HF, an unknown id is an error rather than silently dropped.
//
// Unsupported components fail in FromJson with a message naming them, e.g.
//   "tokenizer.json: normalizer type 'Precompiled' is not supported yet".
//
// Thread safety: a Tokenizer is immutable after construction (its word cache is internally
// synchronised); every const method may run on many threads at once. Not copyable or movable:
// hold it by the unique_ptr that FromFile/FromJson return.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace spark::engine {

namespace text {
class AddedVocabulary;
class BpeModel;
class Normalizer;
class PreTokenizer;
}  // namespace text

struct EncodeOptions {
  // Match special added tokens (<|im_start|>) in the text. When false they are encoded as
  // plain text (HF's encode_special_tokens=true); plain added tokens still match.
  bool parse_special = true;
  // Add the post_processor's special tokens (HF's add_special_tokens=true); Qwen3 and GLM-4
  // add none, Llama 3 prepends <|begin_of_text|>.
  bool add_special_tokens = false;
};

class Tokenizer {
 public:
  // Reads and parses a tokenizer.json file. kNotFound when the file cannot be read,
  // kInvalidArgument for malformed JSON, kUnimplemented for unsupported components.
  static Result<std::unique_ptr<Tokenizer>> FromFile(const std::filesystem::path& path);
  // Parses the text of a tokenizer.json.
  static Result<std::unique_ptr<Tokenizer>> FromJson(std::string_view json_text);

  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;
  ~Tokenizer();

  // Encodes `text` without the post_processor's special tokens (HF encode(text,
  // add_special_tokens=False)).
  std::vector<int32_t> Encode(std::string_view text, bool parse_special = true) const;
  std::vector<int32_t> EncodeWithOptions(std::string_view text, const EncodeOptions& options) const;

  // Decodes `ids` to text. kInvalidArgument names the first id that is not in the vocabulary.
  Result<std::string> Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // One past the largest id (model vocab and added tokens): the size of the id space.
  int64_t vocab_size() const;
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of `id` (byte-level form for model tokens), or "" for an unknown id.
  std::string_view IdToToken(int32_t id) const;
  // True for added tokens marked special (skipped by Decode(skip_special=true)).
  bool IsSpecial(int32_t id) const;

  // Appends the bytes that `id` contributes to Decode's output before UTF-8 repair (the
  // decoder's per-token step, without separators). kInvalidArgument for an unknown id.
  Status AppendTokenBytes(int32_t id, std::string* bytes) const;
  // True when the tokenizer has no decoder: Decode then joins tokens with ' '.
  bool decode_joins_with_space() const { return !byte_level_decoder_; }

 private:
  friend class TokenizerBuilder;
  Tokenizer();

  void EncodeText(std::string_view text, bool parse_special, std::vector<int32_t>* ids) const;
  void EncodeNormalizedPiece(std::string_view piece, std::vector<int32_t>* ids) const;

  std::unique_ptr<text::BpeModel> model_;
  std::unique_ptr<text::Normalizer> normalizer_;       // null: none
  std::unique_ptr<text::PreTokenizer> pre_tokenizer_;  // null: whole piece is one word
  std::unique_ptr<text::AddedVocabulary> added_;
  bool byte_level_decoder_ = false;
  // Added-token lookup by id (index into added_->tokens()), dense over [0, id_end_).
  std::vector<int32_t> added_index_by_id_;
  std::vector<bool> special_by_id_;
  int64_t id_end_ = 0;
  // What add_special_tokens puts around a single sequence.
  std::vector<int32_t> special_prefix_;
  std::vector<int32_t> special_suffix_;
};

}  // namespace spark::engine
