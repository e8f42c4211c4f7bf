// Normalizer: the `normalizer` stage of a tokenizer.json pipeline, a sequence of Unicode
// normalization forms (NFC, NFD, NFKC, NFKD) applied through utf8proc.
//
// Thread safety: immutable after construction; Normalize may run on many threads at once.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace spark::engine::text {

enum class NormalizationForm { kNfc, kNfd, kNfkc, kNfkd };

class Normalizer {
 public:
  // Applies `forms` in order (a tokenizer.json "Sequence" flattens to this list).
  explicit Normalizer(std::vector<NormalizationForm> forms) : forms_(std::move(forms)) {}

  // Writes the normalized form of `text` (well-formed UTF-8) into `out` (replacing it).
  void Normalize(std::string_view text, std::string* out) const;

  const std::vector<NormalizationForm>& forms() const { return forms_; }

 private:
  std::vector<NormalizationForm> forms_;
};

}  // namespace spark::engine::text
