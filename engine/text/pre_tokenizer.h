// PreTokenizer: the `pre_tokenizer` stage of a tokenizer.json pipeline. It cuts normalized text
// into pieces ("words") that the BPE model encodes independently. Supported steps, applied in
// order to every piece the previous step produced (Hugging Face `tokenizers` semantics):
//   Split     a regex (or literal) with a delimiter behaviour and optional inversion;
//   ByteLevel optional prefix space, optional GPT-2 regex split, then the byte-level mapping.
// Empty pieces are dropped after every step.
//
// Thread safety: immutable after construction; PreTokenize may run on many threads at once.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/text/regex.h"

namespace spark::engine::text {

// The pieces of one pre-tokenized text: spans into one buffer.
struct Pieces {
  struct Span {
    size_t begin;
    size_t end;
  };
  std::string buffer;
  std::vector<Span> spans;

  std::string_view piece(size_t i) const {
    return std::string_view(buffer).substr(spans[i].begin, spans[i].end - spans[i].begin);
  }
  void Clear() {
    buffer.clear();
    spans.clear();
  }
};

// What Split does with the delimiters (the regex matches).
enum class SplitBehavior {
  kRemoved,             // drop them
  kIsolated,            // keep each as its own piece
  kMergedWithPrevious,  // append each to the piece before it
  kMergedWithNext,      // prepend each to the piece after it
  kContiguous,          // merge runs of consecutive delimiters into one piece
};

struct SplitStep {
  Regex regex;
  SplitBehavior behavior = SplitBehavior::kIsolated;
  bool invert = false;  // the non-matching parts are the delimiters
};

struct ByteLevelStep {
  bool add_prefix_space = false;  // prepend ' ' to pieces that do not start with one
  bool use_regex = true;          // split with the GPT-2 regex first
};

using PreTokenizerStep = std::variant<SplitStep, ByteLevelStep>;

// The GPT-2 pattern that ByteLevel uses when use_regex is true.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class PreTokenizer {
 public:
  // `gpt2_regex` must be set when a ByteLevelStep uses the regex (Create does that).
  PreTokenizer(std::vector<PreTokenizerStep> steps, std::unique_ptr<Regex> gpt2_regex)
      : steps_(std::move(steps)), gpt2_regex_(std::move(gpt2_regex)) {}

  // Replaces `out` with the pieces of `text` (well-formed UTF-8).
  void PreTokenize(std::string_view text, Pieces* out) const;

  // True when a ByteLevel step maps the text to the byte-level alphabet.
  bool byte_level() const;

 private:
  void ApplySplit(const Regex& regex, SplitBehavior behavior, bool invert, const Pieces& in,
                  Pieces* out) const;
  void ApplyByteLevel(const ByteLevelStep& step, const Pieces& in, Pieces* out) const;

  std::vector<PreTokenizerStep> steps_;
  std::unique_ptr<Regex> gpt2_regex_;
};

}  // namespace spark::engine::text
