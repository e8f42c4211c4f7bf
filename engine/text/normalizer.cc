#include "engine/text/normalizer.h"

#include <utf8proc.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>

#include "common/check.h"
#include "engine/text/utf8.h"

namespace spark::engine::text {
namespace {

bool IsAscii(std::string_view s) {
  for (char c : s) {
    if (static_cast<unsigned char>(c) >= 0x80) return false;
  }
  return true;
}

utf8proc_option_t Options(NormalizationForm form) {
  const int base = UTF8PROC_STABLE;
  switch (form) {
    case NormalizationForm::kNfc:
      return static_cast<utf8proc_option_t>(base | UTF8PROC_COMPOSE);
    case NormalizationForm::kNfd:
      return static_cast<utf8proc_option_t>(base | UTF8PROC_DECOMPOSE);
    case NormalizationForm::kNfkc:
      return static_cast<utf8proc_option_t>(base | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
    case NormalizationForm::kNfkd:
      return static_cast<utf8proc_option_t>(base | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT);
  }
  return static_cast<utf8proc_option_t>(base);
}

struct FreeDeleter {
  void operator()(utf8proc_uint8_t* p) const { std::free(p); }
};

void Apply(NormalizationForm form, std::string_view text, std::string* out) {
  utf8proc_uint8_t* mapped = nullptr;
  const utf8proc_ssize_t n =
      utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                   static_cast<utf8proc_ssize_t>(text.size()), &mapped, Options(form));
  std::unique_ptr<utf8proc_uint8_t, FreeDeleter> owner(mapped);
  // The pipeline only hands well-formed UTF-8 to the normalizer.
  SPARK_CHECK(n >= 0) << "utf8proc_map failed: " << utf8proc_errmsg(n);
  out->append(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
}

// True when NFC can neither change `cp` nor combine it with a neighbour that comes before it:
// a starter (combining class 0) without a canonical decomposition, outside the blocks whose
// starters can be the second half of a canonical composition (Indic vowel signs, Hangul
// jamo, ...; the NFC_Quick_Check=Maybe starters all live there). NFC of a text then equals
// the concatenation of NFC over pieces cut right before such characters.
bool NfcInert(char32_t cp) {
  if (cp < 0x80) return true;
  if ((cp >= 0x0900 && cp <= 0x0DFF) || (cp >= 0x1000 && cp <= 0x109F) ||
      (cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0x1B00 && cp <= 0x1B7F) ||
      (cp >= 0x11000 && cp <= 0x11FFF) || (cp >= 0x16100 && cp <= 0x1613F)) {
    return false;
  }
  const utf8proc_property_t* p = utf8proc_get_property(static_cast<utf8proc_int32_t>(cp));
  const bool canonical_decomposition = p->decomp_seqindex != UINT16_MAX && p->decomp_type == 0;
  return p->combining_class == 0 && !canonical_decomposition;
}

// NFC that sends only the runs around non-inert characters through utf8proc.
void Nfc(std::string_view text, std::string* out) {
  size_t copied = 0;      // text[0, copied) is in *out
  size_t prev_start = 0;  // start of the character before i
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<uint8_t>(text[i]) < 0x80) {
      prev_start = i++;
      continue;
    }
    const Utf8Char c = DecodeUtf8(text.substr(i));
    if (NfcInert(c.codepoint)) {
      prev_start = i;
      i += c.length;
      continue;
    }
    // A run of non-inert characters, with the starter before it that they may combine with.
    const size_t begin = std::max(prev_start, copied);
    size_t end = i + c.length;
    while (end < text.size()) {
      const Utf8Char next = DecodeUtf8(text.substr(end));
      if (NfcInert(next.codepoint)) break;
      end += next.length;
    }
    out->append(text.substr(copied, begin - copied));
    Apply(NormalizationForm::kNfc, text.substr(begin, end - begin), out);
    copied = end;
    i = end;
  }
  out->append(text.substr(copied));
}

}  // namespace

void Normalizer::Normalize(std::string_view text, std::string* out) const {
  out->assign(text);
  // Every normalization form leaves ASCII unchanged.
  if (forms_.empty() || IsAscii(text)) return;
  std::string input;
  for (NormalizationForm form : forms_) {
    input.swap(*out);
    out->clear();
    if (form == NormalizationForm::kNfc) {
      Nfc(input, out);
    } else {
      Apply(form, input, out);
    }
  }
}

}  // namespace spark::engine::text
