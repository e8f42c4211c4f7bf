// StopStringMatcher: OpenAI `stop` strings on streamed text. Text is released only once it can
// no longer be the start of a stop string, so a stop string is never leaked into the output, also
// when it is split across deltas (tokens). At the first stop string to complete (of two that end
// at the same byte, the longer) the text before it is returned and the matcher stops; the stop
// string itself and everything after it are dropped. The result does not depend on how the text
// is cut into deltas.
//
// Thread safety: not thread-safe (one matcher per stream).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace spark::engine::chat {

class StopStringMatcher {
 public:
  // Empty strings in `stop_strings` are ignored.
  explicit StopStringMatcher(std::vector<std::string> stop_strings);

  struct Output {
    std::string text;      // safe to emit
    bool stopped = false;  // a stop string was found (now or earlier)
    int stop_index = -1;   // which one (index into the constructor's list), when stopped
  };

  // Adds a delta. After a stop, returns empty text with stopped = true.
  Output Feed(std::string_view delta);

  // Ends the stream: returns the held-back tail (empty after a stop).
  std::string Finish();

  bool stopped() const { return stop_index_ >= 0; }
  int stop_index() const { return stop_index_; }

  // Bytes held back now (a possible start of a stop string).
  size_t held_back_bytes() const { return buffer_.size(); }

 private:
  std::vector<std::string> stops_;
  std::vector<int> stop_ids_;  // index in the caller's list of each kept stop string
  std::string buffer_;
  int stop_index_ = -1;
};

}  // namespace spark::engine::chat
