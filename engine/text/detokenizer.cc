#include "engine/text/detokenizer.h"

#include "engine/text/utf8.h"

namespace spark::engine {

Result<std::string> Detokenizer::Feed(int32_t id) {
  if (skip_special_ && tokenizer_->IsSpecial(id)) return std::string();
  std::string bytes = pending_;
  if (tokenizer_->decode_joins_with_space() && emitted_any_) bytes.push_back(' ');
  SPARK_RETURN_IF_ERROR(tokenizer_->AppendTokenBytes(id, &bytes));
  emitted_any_ = true;
  std::string out;
  const size_t used = text::AppendUtf8Complete(bytes, &out);
  pending_.assign(bytes, used, std::string::npos);
  return out;
}

std::string Detokenizer::Flush() {
  std::string out;
  text::AppendUtf8Lossy(pending_, &out);
  Reset();
  return out;
}

void Detokenizer::Reset() {
  pending_.clear();
  emitted_any_ = false;
}

}  // namespace spark::engine
