#include "engine/text/byte_level.h"

#include <array>

#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

constexpr char32_t kAlphabetEnd = 0x144;  // every mapped code point is below this

struct Tables {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, kAlphabetEnd> cp_to_byte{};
  struct Encoded {
    char bytes[2];
    uint8_t length;
  };
  std::array<Encoded, 256> byte_to_utf8{};  // every code point is below U+0800: 1 or 2 bytes

  Tables() {
    cp_to_byte.fill(-1);
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t cp = printable ? static_cast<char32_t>(b) : next++;
      byte_to_cp[b] = cp;
      cp_to_byte[cp] = static_cast<int16_t>(b);
      std::string utf8;
      AppendUtf8(cp, &utf8);
      byte_to_utf8[b].length = static_cast<uint8_t>(utf8.size());
      for (size_t i = 0; i < utf8.size(); ++i) byte_to_utf8[b].bytes[i] = utf8[i];
    }
  }
};

const Tables& GetTables() {
  static const Tables tables;
  return tables;
}

}  // namespace

char32_t ByteToCodepoint(uint8_t b) { return GetTables().byte_to_cp[b]; }

int CodepointToByte(char32_t cp) { return cp < kAlphabetEnd ? GetTables().cp_to_byte[cp] : -1; }

void AppendByteLevel(std::string_view bytes, std::string* out) {
  const Tables& t = GetTables();
  const size_t start = out->size();
  out->resize(start + 2 * bytes.size());
  char* p = out->data() + start;
  for (char c : bytes) {
    const Tables::Encoded& e = t.byte_to_utf8[static_cast<uint8_t>(c)];
    p[0] = e.bytes[0];
    p[1] = e.bytes[1];
    p += e.length;
  }
  out->resize(static_cast<size_t>(p - out->data()));
}

bool AppendBytesFromByteLevel(std::string_view token, std::string* out) {
  const size_t start = out->size();
  size_t i = 0;
  while (i < token.size()) {
    const Utf8Char c = DecodeUtf8(token.substr(i));
    const int b = c.status == Utf8Status::kOk ? CodepointToByte(c.codepoint) : -1;
    if (b < 0) {
      out->resize(start);
      return false;
    }
    out->push_back(static_cast<char>(b));
    i += c.length;
  }
  return true;
}

}  // namespace spark::engine::text
