#include "controller/http/sse.h"

namespace spark::http {

std::string SseEvent(std::string_view data, std::string_view event) {
  std::string out;
  out.reserve(data.size() + event.size() + 16);
  if (!event.empty()) {
    out.append("event: ").append(event).append("\n");
  }
  size_t start = 0;
  while (true) {
    size_t end = data.find_first_of("\r\n", start);
    std::string_view line =
        data.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    out.append("data: ").append(line).append("\n");
    if (end == std::string_view::npos) break;
    start = end + 1;
    if (data[end] == '\r' && start < data.size() && data[start] == '\n') ++start;
    if (start == data.size()) {
      out.append("data: \n");  // a trailing newline is an empty last line
      break;
    }
  }
  out.append("\n");
  return out;
}

std::string SseComment(std::string_view text) {
  std::string out = ": ";
  out.append(text).append("\n\n");
  return out;
}

Headers SseHeaders() {
  return {{"Content-Type", "text/event-stream"},
          {"Cache-Control", "no-cache"},
          {"X-Accel-Buffering", "no"}};
}

}  // namespace spark::http
