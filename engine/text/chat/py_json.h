// Python-compatible JSON text and string helpers for the chat templates.
//
// Chat templates are Jinja run by Python: `x | tojson` in a Hugging Face template is
// json.dumps(x, ensure_ascii=False), `.strip()` is Python's str.strip(). Rendering them natively
// byte for byte needs the same output:
//   PyJsonDumps   json.dumps(value, ensure_ascii=..., indent=...) with the default separators
//                 (", " and ": "; "," and ": " with an indent), keys in insertion order, floats as
//                 Python's repr (shortest round-trip, "1.0", "1e-07", "1e+16").
//   PyJsonLoads   json.loads(text) into a Json: integer literals beyond 64 bits stay exact (Python
//                 ints are unbounded) and PyJsonDumps writes them back digit for digit.
//   PyStrip...    str.strip() / lstrip() / rstrip() without arguments: Python's whitespace
//                 (str.isspace: Unicode White_Space plus U+001C..U+001F), UTF-8 aware.
//
// Values are nlohmann::ordered_json (Json), which keeps object keys in the order they were
// parsed or inserted, as Python dicts do.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace spark::engine::chat {

using Json = nlohmann::ordered_json;

struct PyJsonOptions {
  bool ensure_ascii = false;  // true: every non-ASCII character as \uXXXX (surrogate pairs)
  int indent = -1;            // < 0: single line; >= 0: pretty-printed with this many spaces
};

// json.dumps(value, ensure_ascii=options.ensure_ascii, indent=options.indent).
std::string PyJsonDumps(const Json& value, const PyJsonOptions& options = {});

// json.loads(text): the parsed value, or a discarded Json when `text` is not valid JSON (or has
// a number beyond the double range). Duplicate object keys keep the last value at the first key's
// position, as Python dicts do. An integer literal that does not fit 64 bits is held as a binary
// Json value of subtype kPyBigIntSubtype carrying its digits (Json cannot hold it as a number);
// PyJsonDumps writes it as those digits, and IsPyBigInt recognises it.
Json PyJsonLoads(std::string_view text);

inline constexpr std::uint64_t kPyBigIntSubtype = 0x69;  // 'i'

// True for the exact big integers PyJsonLoads produces.
bool IsPyBigInt(const Json& value);

// json.dumps(str) of a UTF-8 string: the quoted, escaped literal.
std::string PyJsonQuote(std::string_view utf8, bool ensure_ascii = false);

// Appends the escaped body of a JSON string literal (no quotes). With ensure_ascii=false it works
// byte by byte (bytes >= 0x80 are copied), so escaping pieces of a string and concatenating them
// gives the escape of the whole string.
void AppendPyJsonEscaped(std::string_view utf8, bool ensure_ascii, std::string* out);

// repr(float(value)) as Python prints it ("0.5", "100.0", "1e-07", "1e+16", "inf", "nan").
std::string PyFloatRepr(double value);

// Python str.isspace() for one code point.
bool IsPySpace(char32_t cp);

// str.strip() / str.lstrip() / str.rstrip() without arguments.
std::string_view PyStrip(std::string_view s);
std::string_view PyLStrip(std::string_view s);
std::string_view PyRStrip(std::string_view s);

// str.strip(chars) / lstrip(chars) / rstrip(chars) for a set of ASCII characters.
std::string_view PyStripChars(std::string_view s, std::string_view ascii_chars);
std::string_view PyLStripChars(std::string_view s, std::string_view ascii_chars);
std::string_view PyRStripChars(std::string_view s, std::string_view ascii_chars);

}  // namespace spark::engine::chat
