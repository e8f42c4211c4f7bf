// StopStringMatcher: a stop string is never leaked, wherever the deltas split it; the text before
// it is complete.
#include "engine/text/chat/stop_string_matcher.h"

#include <gtest/gtest.h>

#include "tests/engine/text/chat/chunkings.h"

namespace spark::engine::chat {
namespace {

struct StreamRun {
  std::string text;
  bool stopped = false;
  int stop_index = -1;
};

StreamRun Stream(const std::vector<std::string>& stops, const std::vector<std::string>& pieces) {
  StopStringMatcher matcher(stops);
  StreamRun run;
  for (const std::string& piece : pieces) {
    const StopStringMatcher::Output out = matcher.Feed(piece);
    run.text += out.text;
    if (out.stopped) {
      run.stopped = true;
      run.stop_index = out.stop_index;
    }
  }
  run.text += matcher.Finish();
  return run;
}

TEST(StopStringMatcherTest, EveryChunkingStopsAtTheSamePlace) {
  struct Case {
    std::vector<std::string> stops;
    std::string output;
    std::string text;
    int stop_index;  // -1: no stop
  };
  const Case cases[] = {
      {{"</s>", "STOP"}, "Hello </s> world STOP", "Hello ", 0},
      {{"</s>", "STOP"}, "Hello STO</s", "Hello STO</s", -1},
      {{"b", "ab"}, "xab", "x", 1},        // same end: the longer one
      {{"bc", "abcd"}, "zabcd", "za", 0},  // the first to complete wins
      {{"", "。\n"}, "第一句。\n第二句", "第一句", 1},
      {{"<|user|>", "<|observation|>"}, "answer<|obs<|observation|>more", "answer<|obs", 1},
      {{"aaa"}, "aaaa", "", 0},
      {{"aab"}, "aaaab", "aa", 0},
      {{}, "nothing to stop", "nothing to stop", -1},
  };
  for (const Case& c : cases) {
    for (const auto& pieces : testing::Chunkings(c.output)) {
      const StreamRun run = Stream(c.stops, pieces);
      ASSERT_EQ(run.text, c.text) << c.output;
      ASSERT_EQ(run.stopped, c.stop_index >= 0) << c.output;
      ASSERT_EQ(run.stop_index, c.stop_index) << c.output;
    }
  }
}

TEST(StopStringMatcherTest, HoldsBackOnlyAPossibleStart) {
  StopStringMatcher matcher({"</answer>"});
  StopStringMatcher::Output out = matcher.Feed("The result </ans");
  EXPECT_EQ(out.text, "The result ");
  EXPECT_FALSE(out.stopped);
  EXPECT_EQ(matcher.held_back_bytes(), 5u);
  out = matcher.Feed("wer");
  EXPECT_EQ(out.text, "");
  out = matcher.Feed("s> are");  // "</answers" is not the stop string
  EXPECT_EQ(out.text, "</answers> are");
  EXPECT_EQ(matcher.held_back_bytes(), 0u);
  out = matcher.Feed(" done</answer> ignored");
  EXPECT_EQ(out.text, " done");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(out.stop_index, 0);
  out = matcher.Feed("later");
  EXPECT_EQ(out.text, "");
  EXPECT_TRUE(out.stopped);
  EXPECT_EQ(matcher.Finish(), "");
}

}  // namespace
}  // namespace spark::engine::chat
