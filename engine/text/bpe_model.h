// BpeModel: the byte-pair-encoding `model` of a tokenizer.json, with the exact merge order of
// Hugging Face `tokenizers` (lowest merge rank first, leftmost on ties) and a bounded cache of
// encoded words.
//
// Thread safety: immutable after Create except the word cache, which is internally
// synchronised; Tokenize may run on many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/status.h"

namespace spark::engine::text {

// Hash for heterogeneous lookup of std::string keys with std::string_view.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeConfig {
  Vocab vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // in rank order
  std::optional<std::string> unk_token;
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is in the vocab is one token
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
};

class BpeModel {
 public:
  // Validates the config: merge parts and results in the vocab, unk_token in the vocab.
  static Result<std::unique_ptr<BpeModel>> Create(BpeConfig config);

  // Appends the ids of `word`, one pre-tokenized piece.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token of `id`, or an empty view when the vocab has no such id.
  std::string_view IdToToken(int32_t id) const;
  // One past the largest id of the vocab.
  int32_t id_end() const { return static_cast<int32_t>(id_to_token_.size()); }
  size_t vocab_size() const { return config_.vocab.size(); }

  ~BpeModel();

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  class Cache;

  explicit BpeModel(BpeConfig config);
  std::optional<int32_t> SymbolId(std::string_view symbol) const;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  BpeConfig config_;
  std::vector<std::string_view> id_to_token_;  // views into config_.vocab keys
  std::unordered_map<uint64_t, Merge> merges_;
  std::vector<int32_t> small_char_ids_;  // code point < kSmallChars → id or -1
  std::optional<int32_t> unk_id_;
  std::vector<int32_t> byte_fallback_ids_;  // 256 entries when byte_fallback, -1 if missing
  std::unique_ptr<Cache> cache_;
};

}  // namespace spark::engine::text
