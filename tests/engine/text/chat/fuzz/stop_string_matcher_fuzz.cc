// Fuzz target: StopStringMatcher. The flag byte picks a set of stop strings; streaming in pieces
// and feeding the whole text give the same text and stop, the text never contains a stop string,
// and without a stop the text is the whole input.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/text/chat/stop_string_matcher.h"
#include "tests/engine/text/chat/fuzz/fuzz_util.h"

namespace spark::engine::chat::fuzz {
namespace {

const std::vector<std::string>& StopSet(uint8_t flags) {
  static const std::vector<std::vector<std::string>> sets = {
      {"</s>"},
      {"<|user|>", "<|observation|>", "<|endoftext|>"},
      {"ab", "b", "aab", "abab"},
      {"\n\n", "。", "STOP"},
  };
  return sets[flags % sets.size()];
}

void FuzzStop(const uint8_t* data, size_t size) {
  const FuzzInput in = SplitFuzzInput(data, size);
  const std::vector<std::string>& stops = StopSet(in.flags);
  StopStringMatcher whole(stops);
  StopStringMatcher::Output want = whole.Feed(in.text);
  want.text += whole.Finish();

  StopStringMatcher stream(stops);
  std::string text;
  int stop_index = -1;
  for (const std::string_view piece : in.pieces) {
    StopStringMatcher::Output out = stream.Feed(piece);
    text += out.text;
    if (out.stopped) stop_index = out.stop_index;
  }
  text += stream.Finish();
  SPARK_FUZZ_CHECK(text == want.text, "streamed text differs");
  SPARK_FUZZ_CHECK(stop_index == want.stop_index, "stop index differs");
  for (const std::string& stop : stops) {
    SPARK_FUZZ_CHECK(text.find(stop) == std::string::npos, "stop string leaked");
  }
  if (stop_index < 0) SPARK_FUZZ_CHECK(text == in.text, "text lost without a stop");
  if (stop_index >= 0) {
    SPARK_FUZZ_CHECK(in.text.substr(0, text.size()) == text, "text is not a prefix");
    SPARK_FUZZ_CHECK(in.text.substr(text.size(), stops[stop_index].size()) == stops[stop_index],
                     "the stop string does not follow the text");
  }
}

}  // namespace
}  // namespace spark::engine::chat::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  spark::engine::chat::fuzz::FuzzStop(data, size);
  return 0;
}
