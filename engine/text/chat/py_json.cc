#include "engine/text/chat/py_json.h"

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <utility>
#include <vector>

#include "engine/text/utf8.h"

namespace spark::engine::chat {
namespace {

void AppendHex4(unsigned value, std::string* out) {
  char buf[8];
  std::snprintf(buf, sizeof(buf), "\\u%04x", value & 0xFFFFu);
  out->append(buf);
}

void AppendIndent(int indent, int depth, std::string* out) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * static_cast<size_t>(depth), ' ');
}

void Dump(const Json& value, const PyJsonOptions& options, int depth, std::string* out) {
  switch (value.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded:
      out->append("null");
      return;
    case Json::value_t::boolean:
      out->append(value.get<bool>() ? "true" : "false");
      return;
    case Json::value_t::number_integer:
      out->append(std::to_string(value.get<int64_t>()));
      return;
    case Json::value_t::number_unsigned:
      out->append(std::to_string(value.get<uint64_t>()));
      return;
    case Json::value_t::number_float: {
      const double d = value.get<double>();
      if (std::isnan(d)) {
        out->append("NaN");
      } else if (std::isinf(d)) {
        out->append(d > 0 ? "Infinity" : "-Infinity");
      } else {
        out->append(PyFloatRepr(d));
      }
      return;
    }
    case Json::value_t::string:
      out->append(PyJsonQuote(value.get_ref<const std::string&>(), options.ensure_ascii));
      return;
    case Json::value_t::binary:
      if (IsPyBigInt(value)) {
        const Json::binary_t& digits = value.get_binary();
        out->append(digits.begin(), digits.end());
      } else {
        out->append("null");
      }
      return;
    case Json::value_t::array: {
      if (value.empty()) {
        out->append("[]");
        return;
      }
      out->push_back('[');
      bool first = true;
      for (const auto& item : value) {
        if (!first) out->append(options.indent >= 0 ? "," : ", ");
        first = false;
        if (options.indent >= 0) AppendIndent(options.indent, depth + 1, out);
        Dump(item, options, depth + 1, out);
      }
      if (options.indent >= 0) AppendIndent(options.indent, depth, out);
      out->push_back(']');
      return;
    }
    case Json::value_t::object: {
      if (value.empty()) {
        out->append("{}");
        return;
      }
      out->push_back('{');
      bool first = true;
      for (const auto& [key, item] : value.items()) {
        if (!first) out->append(options.indent >= 0 ? "," : ", ");
        first = false;
        if (options.indent >= 0) AppendIndent(options.indent, depth + 1, out);
        out->append(PyJsonQuote(key, options.ensure_ascii));
        out->append(": ");
        Dump(item, options, depth + 1, out);
      }
      if (options.indent >= 0) AppendIndent(options.indent, depth, out);
      out->push_back('}');
      return;
    }
  }
}

// nlohmann SAX handler building a Json as json.loads would: like nlohmann's own DOM builder, but
// an integer literal beyond 64 bits (which nlohmann reports as a float, with its text) becomes an
// exact big integer.
class PyLoadsHandler {
 public:
  using number_integer_t = Json::number_integer_t;
  using number_unsigned_t = Json::number_unsigned_t;
  using number_float_t = Json::number_float_t;
  using string_t = Json::string_t;
  using binary_t = Json::binary_t;

  Json& root() { return root_; }

  bool null() { return Put(Json(nullptr)) != nullptr; }
  bool boolean(bool value) { return Put(Json(value)) != nullptr; }
  bool number_integer(number_integer_t value) { return Put(Json(value)) != nullptr; }
  bool number_unsigned(number_unsigned_t value) { return Put(Json(value)) != nullptr; }
  bool number_float(number_float_t value, const string_t& text) {
    if (text.find_first_of(".eE") == string_t::npos) {
      Json big = Json::binary(binary_t::container_type(text.begin(), text.end()),
                              static_cast<std::uint8_t>(kPyBigIntSubtype));
      return Put(std::move(big)) != nullptr;
    }
    return Put(Json(value)) != nullptr;
  }
  bool string(string_t& value) { return Put(Json(std::move(value))) != nullptr; }
  bool binary(binary_t& value) { return Put(Json::binary(std::move(value))) != nullptr; }
  bool start_object(std::size_t /*elements*/) {
    stack_.push_back(Put(Json::object()));
    return true;
  }
  bool start_array(std::size_t /*elements*/) {
    stack_.push_back(Put(Json::array()));
    return true;
  }
  bool end_object() {
    stack_.pop_back();
    return true;
  }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  bool key(string_t& name) {
    // operator[] keeps the first position of a repeated key; the later value overwrites it.
    member_ = &(*stack_.back())[name];
    return true;
  }
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/,
                   const nlohmann::detail::exception& /*error*/) {
    return false;
  }

 private:
  // Stores `value` where the parse is (the root, the current object member or a new array item)
  // and returns where it now lives.
  Json* Put(Json value) {
    if (stack_.empty()) {
      root_ = std::move(value);
      return &root_;
    }
    Json& parent = *stack_.back();
    if (parent.is_array()) {
      parent.push_back(std::move(value));
      return &parent.back();
    }
    *member_ = std::move(value);
    return member_;
  }

  Json root_;
  std::vector<Json*> stack_;  // the open containers, innermost last
  Json* member_ = nullptr;    // the object member the next value goes to
};

// Byte offset just past the leading Python whitespace of `s`.
size_t LeadingSpaceEnd(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const text::Utf8Char c = text::DecodeUtf8(s.substr(i));
    if (c.status != text::Utf8Status::kOk || !IsPySpace(c.codepoint)) break;
    i += c.length;
  }
  return i;
}

// Byte offset just past the last non-whitespace character of `s` (0 when all whitespace).
size_t TrailingSpaceStart(std::string_view s) {
  size_t end = 0;
  size_t i = 0;
  while (i < s.size()) {
    const text::Utf8Char c = text::DecodeUtf8(s.substr(i));
    const size_t len = c.length == 0 ? 1 : c.length;
    if (c.status != text::Utf8Status::kOk || !IsPySpace(c.codepoint)) end = i + len;
    i += len;
  }
  return end;
}

}  // namespace

Json PyJsonLoads(std::string_view text) {
  PyLoadsHandler handler;
  if (!Json::sax_parse(text.begin(), text.end(), &handler)) {
    return Json(Json::value_t::discarded);
  }
  return std::move(handler.root());
}

bool IsPyBigInt(const Json& value) {
  return value.is_binary() && value.get_binary().has_subtype() &&
         value.get_binary().subtype() == kPyBigIntSubtype;
}

std::string PyJsonDumps(const Json& value, const PyJsonOptions& options) {
  std::string out;
  Dump(value, options, 0, &out);
  return out;
}

void AppendPyJsonEscaped(std::string_view utf8, bool ensure_ascii, std::string* out) {
  size_t i = 0;
  while (i < utf8.size()) {
    const auto byte = static_cast<unsigned char>(utf8[i]);
    if (byte >= 0x80 && ensure_ascii) {
      const text::Utf8Char c = text::DecodeUtf8(utf8.substr(i));
      if (c.status == text::Utf8Status::kOk) {
        char32_t cp = c.codepoint;
        if (cp >= 0x10000) {
          cp -= 0x10000;
          AppendHex4(0xD800 + static_cast<unsigned>(cp >> 10), out);
          AppendHex4(0xDC00 + static_cast<unsigned>(cp & 0x3FF), out);
        } else {
          AppendHex4(static_cast<unsigned>(cp), out);
        }
        i += c.length;
      } else {
        AppendHex4(0xFFFD, out);
        i += c.length == 0 ? 1 : c.length;
      }
      continue;
    }
    switch (byte) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      default:
        if (byte < 0x20) {
          AppendHex4(byte, out);
        } else {
          out->push_back(static_cast<char>(byte));
        }
    }
    ++i;
  }
}

std::string PyJsonQuote(std::string_view utf8, bool ensure_ascii) {
  std::string out;
  out.reserve(utf8.size() + 2);
  out.push_back('"');
  AppendPyJsonEscaped(utf8, ensure_ascii, &out);
  out.push_back('"');
  return out;
}

std::string PyFloatRepr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  if (value == 0) return std::signbit(value) ? "-0.0" : "0.0";
  // Shortest round-trip digits in scientific form: "d[.ddd]e[+-]XX".
  char buf[64];
  const auto res = std::to_chars(buf, buf + sizeof(buf), value, std::chars_format::scientific);
  const std::string_view sci(buf, static_cast<size_t>(res.ptr - buf));
  std::string out;
  size_t pos = 0;
  if (sci[0] == '-') {
    out.push_back('-');
    pos = 1;
  }
  const size_t e_pos = sci.find('e');
  std::string digits;
  for (size_t i = pos; i < e_pos; ++i) {
    if (sci[i] != '.') digits.push_back(sci[i]);
  }
  const int exponent = std::atoi(std::string(sci.substr(e_pos + 1)).c_str());
  const int decpt = exponent + 1;  // value = 0.DIGITS * 10^decpt
  const int ndigits = static_cast<int>(digits.size());
  if (decpt <= -4 || decpt > 16) {
    out.push_back(digits[0]);
    if (ndigits > 1) {
      out.push_back('.');
      out.append(digits, 1, std::string::npos);
    }
    char exp_buf[16];
    std::snprintf(exp_buf, sizeof(exp_buf), "e%c%02d", exponent < 0 ? '-' : '+',
                  exponent < 0 ? -exponent : exponent);
    out.append(exp_buf);
  } else if (decpt <= 0) {
    out.append("0.");
    out.append(static_cast<size_t>(-decpt), '0');
    out.append(digits);
  } else if (decpt < ndigits) {
    out.append(digits, 0, static_cast<size_t>(decpt));
    out.push_back('.');
    out.append(digits, static_cast<size_t>(decpt), std::string::npos);
  } else {
    out.append(digits);
    out.append(static_cast<size_t>(decpt - ndigits), '0');
    out.append(".0");
  }
  return out;
}

bool IsPySpace(char32_t cp) {
  if (cp <= 0x20) return cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F);
  switch (cp) {
    case 0x85:
    case 0xA0:
    case 0x1680:
    case 0x2028:
    case 0x2029:
    case 0x202F:
    case 0x205F:
    case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

std::string_view PyLStrip(std::string_view s) { return s.substr(LeadingSpaceEnd(s)); }

std::string_view PyRStrip(std::string_view s) { return s.substr(0, TrailingSpaceStart(s)); }

std::string_view PyStrip(std::string_view s) { return PyRStrip(PyLStrip(s)); }

std::string_view PyLStripChars(std::string_view s, std::string_view ascii_chars) {
  const size_t start = s.find_first_not_of(ascii_chars);
  return start == std::string_view::npos ? std::string_view() : s.substr(start);
}

std::string_view PyRStripChars(std::string_view s, std::string_view ascii_chars) {
  const size_t last = s.find_last_not_of(ascii_chars);
  return last == std::string_view::npos ? std::string_view() : s.substr(0, last + 1);
}

std::string_view PyStripChars(std::string_view s, std::string_view ascii_chars) {
  return PyRStripChars(PyLStripChars(s, ascii_chars), ascii_chars);
}

}  // namespace spark::engine::chat
