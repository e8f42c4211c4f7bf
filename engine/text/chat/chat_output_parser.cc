#include "engine/text/chat/chat_output_parser.h"

#include <utility>

namespace spark::engine::chat {

ChatOutputOptions ChatOutputOptionsFor(ChatTemplateKind kind, const ChatTemplateKwargs& kwargs,
                                       std::vector<ChatTool> tools) {
  ChatOutputOptions options;
  const bool thinking = kwargs.enable_thinking.value_or(true);
  switch (kind) {
    case ChatTemplateKind::kGlm45:
    case ChatTemplateKind::kGlm47:
      options.parse_reasoning = true;
      options.force_reasoning = thinking;
      if (!tools.empty()) {
        options.tool_call_format =
            kind == ChatTemplateKind::kGlm45 ? ToolCallFormat::kGlm45 : ToolCallFormat::kGlm47;
      }
      break;
    case ChatTemplateKind::kChatMl:
      options.parse_reasoning = true;
      options.force_reasoning = thinking;
      break;
    case ChatTemplateKind::kLlama3:
      break;
  }
  options.tools = std::move(tools);
  return options;
}

ChatOutputParser::ChatOutputParser(ChatOutputOptions options) {
  if (options.parse_reasoning) {
    reasoning_.emplace(ReasoningParserOptions{.force_reasoning = options.force_reasoning});
  }
  if (options.tool_call_format.has_value()) {
    tools_ = std::make_unique<GlmToolParser>(*options.tool_call_format, std::move(options.tools),
                                             std::move(options.tool_call_ids));
  }
}

void ChatOutputParser::ToTools(std::string_view text, bool finish, ChatDelta* out) {
  if (tools_ == nullptr) {
    out->content += text;
    return;
  }
  ToolParseDelta delta = tools_->Feed(text);
  if (finish) {
    ToolParseDelta tail = tools_->Finish();
    delta.text += tail.text;
    for (ToolCallDelta& call : tail.calls) {
      if (!delta.calls.empty() && delta.calls.back().index == call.index && call.id.empty()) {
        delta.calls.back().arguments += call.arguments;
      } else {
        delta.calls.push_back(std::move(call));
      }
    }
  }
  out->content += delta.text;
  for (ToolCallDelta& call : delta.calls) out->tool_calls.push_back(std::move(call));
}

ChatDelta ChatOutputParser::Feed(std::string_view delta) {
  ChatDelta out;
  if (reasoning_.has_value()) {
    ReasoningDelta r = reasoning_->Feed(delta);
    out.reasoning_content = std::move(r.reasoning);
    ToTools(r.text, /*finish=*/false, &out);
  } else {
    ToTools(delta, /*finish=*/false, &out);
  }
  return out;
}

ChatDelta ChatOutputParser::Finish() {
  ChatDelta out;
  std::string text;
  if (reasoning_.has_value()) {
    ReasoningDelta r = reasoning_->Finish();
    out.reasoning_content = std::move(r.reasoning);
    text = std::move(r.text);
  }
  ToTools(text, /*finish=*/true, &out);
  return out;
}

ChatOutput ChatOutputParser::Parse(std::string_view output, ChatOutputOptions options) {
  const bool has_tools = options.tool_call_format.has_value();
  ChatOutputParser parser(std::move(options));
  ChatOutput result;
  ChatDelta first = parser.Feed(output);
  ChatDelta last = parser.Finish();
  result.reasoning_content = first.reasoning_content + last.reasoning_content;
  result.content = first.content + last.content;
  if (has_tools) result.tool_calls = parser.tools_->calls();
  return result;
}

}  // namespace spark::engine::chat
