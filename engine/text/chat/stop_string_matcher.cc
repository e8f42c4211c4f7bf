#include "engine/text/chat/stop_string_matcher.h"

#include <algorithm>

namespace spark::engine::chat {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stop_strings) {
  for (size_t i = 0; i < stop_strings.size(); ++i) {
    if (stop_strings[i].empty()) continue;
    stops_.push_back(std::move(stop_strings[i]));
    stop_ids_.push_back(static_cast<int>(i));
  }
}

StopStringMatcher::Output StopStringMatcher::Feed(std::string_view delta) {
  Output out;
  if (stopped()) {
    out.stopped = true;
    out.stop_index = stop_index_;
    return out;
  }
  buffer_.append(delta);
  // The occurrence that completes first (then the one that starts first): the one a stream sees
  // first, whatever the deltas.
  size_t best_pos = std::string::npos;
  size_t best_end = std::string::npos;
  size_t best = 0;
  for (size_t i = 0; i < stops_.size(); ++i) {
    const size_t pos = buffer_.find(stops_[i]);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stops_[i].size();
    if (end < best_end || (end == best_end && pos < best_pos)) {
      best_pos = pos;
      best_end = end;
      best = i;
    }
  }
  if (best_pos != std::string::npos) {
    out.text = buffer_.substr(0, best_pos);
    buffer_.clear();
    stop_index_ = stop_ids_[best];
    out.stopped = true;
    out.stop_index = stop_index_;
    return out;
  }
  // Hold back the longest tail that is a proper prefix of a stop string.
  size_t keep = 0;
  for (const std::string& stop : stops_) {
    for (size_t len = std::min(buffer_.size(), stop.size() - 1); len > keep; --len) {
      if (std::string_view(buffer_).substr(buffer_.size() - len) ==
          std::string_view(stop).substr(0, len)) {
        keep = len;
        break;
      }
    }
  }
  out.text = buffer_.substr(0, buffer_.size() - keep);
  buffer_.erase(0, buffer_.size() - keep);
  return out;
}

std::string StopStringMatcher::Finish() {
  std::string tail = std::move(buffer_);
  buffer_.clear();
  return tail;
}

}  // namespace spark::engine::chat
