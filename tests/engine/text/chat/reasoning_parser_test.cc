// ReasoningParser: <think> handling (forced or opened by the output), tool calls that start
// before </think>, truncated outputs, and the same result for every way of streaming the output.
#include "engine/text/chat/reasoning_parser.h"

#include <gtest/gtest.h>

#include "tests/engine/text/chat/chunkings.h"

namespace spark::engine::chat {
namespace {

struct Case {
  bool force;
  std::string output;
  std::string reasoning;
  std::string text;
};

const Case kCases[] = {
    {true, "<think>I think.</think>Answer.", "I think.", "Answer."},
    {true, "I think.</think>\n\nAnswer.", "I think.", "Answer."},  // GLM-4.7: prompt opened it
    {true, "\n<think>\nLine 1\n\nLine 2\n</think>\nAnswer\n", "Line 1\n\nLine 2", "Answer\n"},
    {false, "<think>r</think>t", "r", "t"},
    {false, "Plain answer with <think> inside</think>.", "",
     "Plain answer with <think> inside</think>."},
    {false, "  \n<think>r</think> t", "r", "t"},
    {false, "  plain", "", "  plain"},
    {true,
     "Let me call the tool.\n<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris"
     "</arg_value></tool_call>",
     "Let me call the tool.",
     "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</arg_value></tool_call>"},
    {true, "Still thinking ab", "Still thinking ab", ""},
    {true, "reasoning </thi", "reasoning </thi", ""},
    {true, "</think>", "", ""},
    {true, "a<think>b</think>c</think>d<think>", "ab", "c</think>d<think>"},
    {false, "<thi", "", "<thi"},
    {false, "", "", ""},
    {true, "   ", "", ""},
    {true, "x \n </think>  \n", "x", ""},
    {true, "思考 🤔</think>回答", "思考 🤔", "回答"},
};

TEST(ReasoningParserTest, NonStreaming) {
  for (const Case& c : kCases) {
    const ReasoningDelta d = ReasoningParser::Parse(c.output, {.force_reasoning = c.force});
    EXPECT_EQ(d.reasoning, c.reasoning) << c.output;
    EXPECT_EQ(d.text, c.text) << c.output;
  }
}

TEST(ReasoningParserTest, EveryChunkingGivesTheSameResult) {
  for (const Case& c : kCases) {
    for (const auto& pieces : testing::Chunkings(c.output)) {
      ReasoningParser parser({.force_reasoning = c.force});
      std::string reasoning;
      std::string text;
      for (const std::string& piece : pieces) {
        ReasoningDelta d = parser.Feed(piece);
        // Within a delta the reasoning comes first: no reasoning after text.
        if (!text.empty()) {
          EXPECT_TRUE(d.reasoning.empty()) << c.output;
        }
        reasoning += d.reasoning;
        text += d.text;
      }
      ReasoningDelta tail = parser.Finish();
      reasoning += tail.reasoning;
      text += tail.text;
      ASSERT_EQ(reasoning, c.reasoning) << c.output << " cut into " << pieces.size();
      ASSERT_EQ(text, c.text) << c.output << " cut into " << pieces.size();
    }
  }
}

TEST(ReasoningParserTest, StreamsReasoningWithoutWaitingForTheEnd) {
  ReasoningParser parser({.force_reasoning = true});
  EXPECT_EQ(parser.Feed("<think>").reasoning, "");
  EXPECT_EQ(parser.Feed("Hello wor").reasoning, "Hello wor");
  // Trailing whitespace and a possible tag start are held back...
  ReasoningDelta d = parser.Feed("ld \n</th");
  EXPECT_EQ(d.reasoning, "ld");
  EXPECT_TRUE(parser.in_reasoning());
  // ...and the whitespace is dropped at </think>.
  d = parser.Feed("ink>\n\nThe answer");
  EXPECT_EQ(d.reasoning, "");
  EXPECT_EQ(d.text, "The answer");
  EXPECT_FALSE(parser.in_reasoning());
  d = parser.Feed(" is 42.");
  EXPECT_EQ(d.text, " is 42.");
  EXPECT_EQ(parser.Finish().text, "");
}

TEST(ReasoningParserTest, WhitespaceInsideReasoningIsKept) {
  ReasoningParser parser({.force_reasoning = true});
  EXPECT_EQ(parser.Feed("a  ").reasoning, "a");
  EXPECT_EQ(parser.Feed("\n\nb").reasoning, "  \n\nb");
}

}  // namespace
}  // namespace spark::engine::chat
