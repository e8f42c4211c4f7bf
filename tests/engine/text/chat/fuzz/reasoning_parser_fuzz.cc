// Fuzz target: ReasoningParser, alone and followed by the GLM-4.7 tool-call parser (the output
// pipeline). Flag bit 0 forces reasoning. Streamed results equal Parse(); the reasoning has no
// leading or trailing whitespace.
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/text/chat/chat_output_parser.h"
#include "engine/text/chat/reasoning_parser.h"
#include "tests/engine/text/chat/fuzz/fuzz_util.h"

namespace spark::engine::chat::fuzz {
namespace {

bool IsSpace(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

void FuzzReasoning(const uint8_t* data, size_t size) {
  const FuzzInput in = SplitFuzzInput(data, size);
  const ReasoningParserOptions options{.force_reasoning = (in.flags & 1) != 0};
  const ReasoningDelta want = ReasoningParser::Parse(in.text, options);
  SPARK_FUZZ_CHECK(want.reasoning.empty() ||
                       (!IsSpace(want.reasoning.front()) && !IsSpace(want.reasoning.back())),
                   "reasoning not trimmed");
  SPARK_FUZZ_CHECK(want.reasoning.size() + want.text.size() <= in.text.size(), "output grew");

  ReasoningParser parser(options);
  std::string reasoning;
  std::string text;
  for (const std::string_view piece : in.pieces) {
    ReasoningDelta d = parser.Feed(piece);
    SPARK_FUZZ_CHECK(text.empty() || d.reasoning.empty(), "reasoning after normal text");
    reasoning += d.reasoning;
    text += d.text;
  }
  ReasoningDelta tail = parser.Finish();
  reasoning += tail.reasoning;
  text += tail.text;
  SPARK_FUZZ_CHECK(reasoning == want.reasoning, "streamed reasoning differs from Parse");
  SPARK_FUZZ_CHECK(text == want.text, "streamed text differs from Parse");

  // The whole pipeline.
  ChatOutputOptions pipeline;
  pipeline.parse_reasoning = true;
  pipeline.force_reasoning = options.force_reasoning;
  pipeline.tool_call_format = ToolCallFormat::kGlm47;
  pipeline.tool_call_ids = [] { return std::string("call_x"); };
  const ChatOutput whole = ChatOutputParser::Parse(in.text, pipeline);
  SPARK_FUZZ_CHECK(whole.reasoning_content == want.reasoning, "pipeline reasoning differs");
  ChatOutputParser stream(pipeline);
  std::string content;
  std::string args;
  for (const std::string_view piece : in.pieces) {
    ChatDelta d = stream.Feed(piece);
    content += d.content;
    for (const ToolCallDelta& c : d.tool_calls) args += c.arguments;
  }
  ChatDelta last = stream.Finish();
  content += last.content;
  for (const ToolCallDelta& c : last.tool_calls) args += c.arguments;
  std::string whole_args;
  for (const ParsedToolCall& c : whole.tool_calls) whole_args += c.arguments;
  SPARK_FUZZ_CHECK(content == whole.content, "pipeline content differs");
  SPARK_FUZZ_CHECK(args == whole_args, "pipeline tool-call arguments differ");
}

}  // namespace
}  // namespace spark::engine::chat::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  spark::engine::chat::fuzz::FuzzReasoning(data, size);
  return 0;
}
