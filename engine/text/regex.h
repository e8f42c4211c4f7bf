// Regex: a compiled PCRE2 pattern (UTF + UCP, JIT when available) used by the tokenizer's
// Split and ByteLevel pre-tokenizers.
//
// Hugging Face `tokenizers` runs these patterns on Oniguruma. The two engines agree on the
// constructs tokenizer.json files use (\p{L}, \p{N}, (?i:...), (?!\S), alternation order), with
// one difference that Compile removes: PCRE2's \s also matches U+180E, Oniguruma's does not, so
// \s and \S are rewritten to \p{White_Space} and \P{White_Space}.
//
// Thread safety: a compiled Regex is immutable; FindAll may run on many threads at once (match
// data and the JIT stack are per thread). Movable, not copyable.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

struct pcre2_real_code_8;

namespace spark::engine::text {

struct RegexMatch {
  size_t begin;  // byte offsets into the searched text
  size_t end;
};

class Regex {
 public:
  // Compiles `pattern` (Oniguruma/PCRE syntax). Fails with kInvalidArgument naming the pattern,
  // the PCRE2 message and the offset.
  static Result<Regex> Compile(std::string_view pattern);

  Regex(Regex&& other) noexcept;
  Regex& operator=(Regex&& other) noexcept;
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  ~Regex();

  // Appends the successive non-overlapping matches in `text` (well-formed UTF-8, not checked),
  // scanning left to right like Oniguruma's find_iter: an empty match right after the previous
  // match is skipped. If PCRE2 reports a resource error even without JIT, the rest of `text`
  // is treated as unmatched.
  void FindAll(std::string_view text, std::vector<RegexMatch>* matches) const;

  const std::string& pattern() const { return pattern_; }

 private:
  Regex(std::string pattern, pcre2_real_code_8* code) : pattern_(std::move(pattern)), code_(code) {}

  std::string pattern_;
  pcre2_real_code_8* code_ = nullptr;  // owned
};

// Rewrites the Oniguruma-specific parts of `pattern` for PCRE2 (see the header comment).
std::string TranslateOnigurumaPattern(std::string_view pattern);

}  // namespace spark::engine::text
