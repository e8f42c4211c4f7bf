// GPT-2 byte-level alphabet (bytes_to_unicode): every byte value maps to one printable code
// point, so that byte-level BPE vocabularies are plain UTF-8 strings. Printable Latin-1 bytes
// ('!'..'~', U+00A1..U+00AC, U+00AE..U+00FF) map to themselves; the other 68 bytes map to
// U+0100.. in byte order (space → 'Ġ' U+0120, '\n' → 'Ċ' U+010A).
//
// Thread safety: pure functions over constant tables.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace spark::engine::text {

// The code point that byte `b` maps to.
char32_t ByteToCodepoint(uint8_t b);

// The byte that maps to `cp`, or -1 when `cp` is not in the byte-level alphabet.
int CodepointToByte(char32_t cp);

// Appends the byte-level image of `bytes`: each byte becomes its code point, UTF-8 encoded.
void AppendByteLevel(std::string_view bytes, std::string* out);

// Maps a byte-level string back to bytes. When every character is in the alphabet, appends the
// bytes and returns true; otherwise leaves `out` unchanged and returns false.
bool AppendBytesFromByteLevel(std::string_view token, std::string* out);

}  // namespace spark::engine::text
