// ChatOutputParser: the output pipeline of a chat completion, in SGLang's order: the reasoning
// parser first, its normal text on to the tool-call parser. Produces the pieces of an OpenAI
// chat-completion (streaming delta or, with Parse, the whole message): reasoning_content,
// content and tool_calls.
//
// ChatOutputOptionsFor picks the parsers for a template family and request:
//   GLM-4.5/4.6, GLM-4.7  reasoning (forced while thinking is on: enable_thinking not false) and
//                         the glm45 / glm47 tool-call parser when the request has tools
//   Qwen3 ChatML          reasoning as above; no tool-call parser yet (tool calls stay in content)
//   Llama-3               neither
// Stop strings are applied before this parser (StopStringMatcher) on the raw output.
//
// Thread safety: not thread-safe (one parser per stream).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/text/chat/chat_template.h"
#include "engine/text/chat/reasoning_parser.h"
#include "engine/text/chat/tool_call_parser.h"

namespace spark::engine::chat {

struct ChatOutputOptions {
  bool parse_reasoning = false;
  bool force_reasoning = false;                    // the output starts inside the think block
  std::optional<ToolCallFormat> tool_call_format;  // none: no tool-call parsing
  std::vector<ChatTool> tools;
  ToolCallIdGenerator tool_call_ids;  // default RandomToolCallId
};

ChatOutputOptions ChatOutputOptionsFor(ChatTemplateKind kind, const ChatTemplateKwargs& kwargs,
                                       std::vector<ChatTool> tools);

struct ChatDelta {
  std::string reasoning_content;
  std::string content;
  std::vector<ToolCallDelta> tool_calls;
  bool empty() const { return reasoning_content.empty() && content.empty() && tool_calls.empty(); }
};

struct ChatOutput {
  std::string reasoning_content;
  std::string content;
  std::vector<ParsedToolCall> tool_calls;
};

class ChatOutputParser {
 public:
  explicit ChatOutputParser(ChatOutputOptions options);

  ChatDelta Feed(std::string_view delta);
  ChatDelta Finish();  // the parser is spent afterwards

  // Non-streaming: the whole output.
  static ChatOutput Parse(std::string_view output, ChatOutputOptions options);

 private:
  void ToTools(std::string_view text, bool finish, ChatDelta* out);

  std::optional<ReasoningParser> reasoning_;
  std::unique_ptr<GlmToolParser> tools_;
};

}  // namespace spark::engine::chat
