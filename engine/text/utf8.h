// UTF-8 helpers of the tokenizer: strict decoding, lossy repair and Unicode properties that the
// Hugging Face `tokenizers` semantics rely on (White_Space, word characters).
//
// Lossy repair follows the Unicode "maximal subpart" practice, the one Rust's
// String::from_utf8_lossy and Python's bytes.decode(errors="replace") use: each maximal invalid
// subsequence becomes one U+FFFD.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace spark::engine::text {

enum class Utf8Status {
  kOk,          // a complete, well-formed character
  kInvalid,     // an ill-formed sequence (length = its maximal subpart, at least 1 byte)
  kIncomplete,  // a well-formed prefix that the end of the input cut short
};

struct Utf8Char {
  Utf8Status status;
  uint32_t length;     // bytes consumed
  char32_t codepoint;  // valid when status == kOk
};

// Decodes the character that starts at s[0] (s must not be empty).
Utf8Char DecodeUtf8(std::string_view s);

// Appends the UTF-8 encoding of `cp` (a Unicode scalar value).
void AppendUtf8(char32_t cp, std::string* out);

// True when `s` is well-formed UTF-8.
bool IsValidUtf8(std::string_view s);

// Appends `s` to `out`, replacing each maximal ill-formed subsequence (a cut-short tail
// included) with U+FFFD.
void AppendUtf8Lossy(std::string_view s, std::string* out);

// Appends the longest prefix of `s` that can be emitted now: complete characters are copied,
// ill-formed subsequences become U+FFFD, and a well-formed but cut-short tail is held back.
// Returns the number of bytes of `s` consumed (the held-back tail starts there).
size_t AppendUtf8Complete(std::string_view s, std::string* out);

// Unicode White_Space (what Rust's char::is_whitespace and the regex crate's \s match).
bool IsWhiteSpace(char32_t cp);

// Word character as the Rust regex crate's Unicode \w: Alphabetic, marks, decimal digits,
// connector punctuation and join controls.
bool IsWordChar(char32_t cp);

}  // namespace spark::engine::text
