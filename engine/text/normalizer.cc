#include "engine/text/normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <memory>

#include "common/check.h"

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

}  // namespace

void Normalizer::Normalize(std::string_view text, std::string* out) const {
  out->assign(text);
  // Every normalization form leaves ASCII unchanged.
  if (forms_.empty() || IsAscii(text)) return;
  for (NormalizationForm form : forms_) {
    utf8proc_uint8_t* mapped = nullptr;
    const utf8proc_ssize_t n =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(out->data()),
                     static_cast<utf8proc_ssize_t>(out->size()), &mapped, Options(form));
    std::unique_ptr<utf8proc_uint8_t, FreeDeleter> owner(mapped);
    // The pipeline only hands well-formed UTF-8 to the normalizer.
    SPARK_CHECK(n >= 0) << "utf8proc_map failed: " << utf8proc_errmsg(n);
    out->assign(reinterpret_cast<const char*>(mapped), static_cast<size_t>(n));
  }
}

}  // namespace spark::engine::text
