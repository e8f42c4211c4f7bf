// Qwen3 ChatML chat template (see chat_template.h).
#include <string>
#include <string_view>

#include "engine/text/chat/py_json.h"
#include "engine/text/chat/template_renderers.h"

namespace spark::engine::chat::internal {
namespace {

constexpr std::string_view kToolsIntro =
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
constexpr std::string_view kToolsOutro =
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, "
    "\"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n";

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

Result<std::string> RenderQwen3(const std::vector<ChatMessage>& messages,
                                const std::vector<ChatTool>& tools,
                                const ChatTemplateKwargs& kwargs, bool add_generation_prompt) {
  if (messages.empty()) return InvalidArgument("messages: empty; send at least one message");
  std::string out;
  const bool first_is_system = messages[0].role == ChatRole::kSystem;
  if (!tools.empty()) {
    out += "<|im_start|>system\n";
    if (first_is_system) {
      out += messages[0].content;
      out += "\n\n";
    }
    out += kToolsIntro;
    for (const ChatTool& tool : tools) {
      out += '\n';
      out += PyJsonDumps(tool.definition);
    }
    out += kToolsOutro;
  } else if (first_is_system) {
    out += "<|im_start|>system\n";
    out += messages[0].content;
    out += "<|im_end|>\n";
  }
  // The last user message that is not a wrapped tool response.
  size_t last_query_index = messages.size() - 1;
  for (size_t j = messages.size(); j-- > 0;) {
    const ChatMessage& m = messages[j];
    if (m.role == ChatRole::kUser &&
        !(StartsWith(m.content, "<tool_response>") && EndsWith(m.content, "</tool_response>"))) {
      last_query_index = j;
      break;
    }
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool last = i + 1 == messages.size();
    switch (m.role) {
      case ChatRole::kUser:
      case ChatRole::kSystem:
        if (m.role == ChatRole::kSystem && i == 0) break;
        out += "<|im_start|>";
        out += ChatRoleName(m.role);
        out += '\n';
        out += m.content;
        out += "<|im_end|>\n";
        break;
      case ChatRole::kAssistant: {
        const AssistantParts parts = SplitAssistantReasoning(m);
        out += "<|im_start|>assistant\n";
        if (i > last_query_index && (last || !parts.reasoning.empty())) {
          out += "<think>\n";
          out += PyStripChars(parts.reasoning, "\n");
          out += "\n</think>\n\n";
          out += PyLStripChars(parts.content, "\n");
        } else {
          out += parts.content;
        }
        for (size_t c = 0; c < m.tool_calls.size(); ++c) {
          if (c > 0 || !parts.content.empty()) out += '\n';
          out += "<tool_call>\n{\"name\": \"";
          out += m.tool_calls[c].name;
          out += "\", \"arguments\": ";
          out += PyJsonDumps(m.tool_calls[c].arguments_object);
          out += "}\n</tool_call>";
        }
        out += "<|im_end|>\n";
        break;
      }
      case ChatRole::kTool:
        if (i == 0 || messages[i - 1].role != ChatRole::kTool) out += "<|im_start|>user";
        out += "\n<tool_response>\n";
        out += m.content;
        out += "\n</tool_response>";
        if (last || messages[i + 1].role != ChatRole::kTool) out += "<|im_end|>\n";
        break;
    }
  }
  if (add_generation_prompt) {
    out += "<|im_start|>assistant\n";
    if (kwargs.enable_thinking.has_value() && !*kwargs.enable_thinking) {
      out += "<think>\n\n</think>\n\n";
    }
  }
  return out;
}

}  // namespace spark::engine::chat::internal
