// AddedVocabulary: the `added_tokens` of a tokenizer.json (special tokens such as
// <|im_start|> and plain added tokens). Encoding first cuts the raw text on the tokens with
// normalized=false, normalizes the remaining text, then cuts it on the tokens with
// normalized=true (matched in normalized form). Matching is leftmost-longest, with HF's
// single_word, lstrip and rstrip rules.
//
// Thread safety: immutable after construction; all methods may run on many threads at once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace spark::engine::text {

class Normalizer;

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;  // only match when not inside a word
  bool lstrip = false;       // swallow the whitespace on the left
  bool rstrip = false;       // swallow the whitespace on the right
  bool normalized = true;    // match against normalized text
  bool special = false;      // skipped by Decode(skip_special); not parsed when asked not to
};

// A cut of the text: an added token (id >= 0) or a text span to process further (id == -1).
struct AddedSplit {
  size_t begin;
  size_t end;
  int32_t id;
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) gives the normalized form that normalized tokens match.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Cuts `text` on the tokens with the given `normalized` flag. Special tokens are ignored when
  // !parse_special. The splits cover `text` in order; empty text gives no split.
  void Split(std::string_view text, bool normalized, bool parse_special,
             std::vector<AddedSplit>* out) const;

  const std::vector<AddedToken>& tokens() const { return tokens_; }
  bool has_normalized_tokens() const { return !normalized_trie_.nodes.empty(); }

 private:
  // A byte trie over token contents.
  struct Trie {
    struct Node {
      int32_t token = -1;       // index into tokens_ ending here, or -1
      uint32_t first_edge = 0;  // edges_[first_edge, first_edge + edge_count)
      uint32_t edge_count = 0;
    };
    struct Edge {
      uint8_t byte;
      int32_t child;
    };
    std::vector<Node> nodes;
    std::vector<Edge> edges;
    bool first_byte[256] = {};

    void Build(const std::vector<std::pair<std::string, int32_t>>& patterns);
    // Index of the longest pattern that starts at text[0], or -1; its length in *length.
    int32_t LongestAt(std::string_view text, size_t* length) const;
  };

  std::vector<AddedToken> tokens_;
  Trie raw_trie_;
  Trie normalized_trie_;
};

}  // namespace spark::engine::text
