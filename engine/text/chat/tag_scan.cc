#include "engine/text/chat/tag_scan.h"

namespace spark::engine::chat::internal {

TagHit FindFirstTag(std::string_view text, std::initializer_list<std::string_view> tags) {
  TagHit best;
  size_t index = 0;
  for (const std::string_view tag : tags) {
    const size_t pos = text.find(tag);
    if (pos != std::string_view::npos && (!best.found() || pos < best.pos)) {
      best.pos = pos;
      best.tag = index;
      best.length = tag.size();
    }
    ++index;
  }
  return best;
}

size_t PartialTagSuffix(std::string_view text, std::initializer_list<std::string_view> tags) {
  size_t best = 0;
  for (const std::string_view tag : tags) {
    const size_t max_len = std::min(text.size(), tag.size() - 1);
    for (size_t len = max_len; len > best; --len) {
      if (text.substr(text.size() - len) == tag.substr(0, len)) {
        best = len;
        break;
      }
    }
  }
  return best;
}

}  // namespace spark::engine::chat::internal
