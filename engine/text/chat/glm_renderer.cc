// GLM-4.5/4.6 and GLM-4.7 chat templates (see chat_template.h; the whitespace below is what the
// templates produce under trim_blocks/lstrip_blocks).
#include <string>
#include <string_view>

#include "engine/text/chat/py_json.h"
#include "engine/text/chat/template_renderers.h"

namespace spark::engine::chat::internal {
namespace {

constexpr std::string_view kToolsHeader =
    "<|system|>\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n";
constexpr std::string_view kToolsFooterGlm45 =
    "</tools>\n\nFor each function call, output the function name and arguments within the "
    "following XML format:\n<tool_call>{function-name}\n<arg_key>{arg-key-1}</arg_key>\n"
    "<arg_value>{arg-value-1}</arg_value>\n<arg_key>{arg-key-2}</arg_key>\n"
    "<arg_value>{arg-value-2}</arg_value>\n...\n</tool_call>";
constexpr std::string_view kToolsFooterGlm47 =
    "</tools>\n\nFor each function call, output the function name and arguments within the "
    "following XML format:\n<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key>"
    "<arg_value>{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key>"
    "<arg_value>{arg-value-2}</arg_value>...</tool_call>";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// `v | tojson(ensure_ascii=False) if v is not string else v`
std::string ArgValue(const Json& value) {
  if (value.is_string()) return value.get<std::string>();
  return PyJsonDumps(value);
}

}  // namespace

Result<std::string> RenderGlm(bool glm47, const std::vector<ChatMessage>& messages,
                              const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                              bool add_generation_prompt) {
  const bool thinking_off = kwargs.enable_thinking.has_value() && !*kwargs.enable_thinking;
  const bool keep_all_reasoning = kwargs.clear_thinking.has_value() && !*kwargs.clear_thinking;
  std::string out = "[gMASK]<sop>";
  if (!tools.empty()) {
    out += kToolsHeader;
    for (const ChatTool& tool : tools) {
      out += PyJsonDumps(tool.definition);
      out += '\n';
    }
    out += glm47 ? kToolsFooterGlm47 : kToolsFooterGlm45;
  }
  long last_user_index = -1;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].role == ChatRole::kUser) last_user_index = static_cast<long>(i);
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    switch (m.role) {
      case ChatRole::kUser:
        out += glm47 ? "<|user|>" : "<|user|>\n";
        out += m.content;
        if (!glm47 && thinking_off && !EndsWith(m.content, "/nothink")) out += "/nothink";
        break;
      case ChatRole::kAssistant: {
        out += "<|assistant|>";
        const AssistantParts parts = SplitAssistantReasoning(m);
        const bool after_last_user = static_cast<long>(i) > last_user_index;
        const bool keep = (glm47 ? (keep_all_reasoning || after_last_user) : after_last_user) &&
                          !parts.reasoning.empty();
        if (keep) {
          out += glm47 ? "<think>" : "\n<think>";
          out += PyStrip(parts.reasoning);
          out += "</think>";
        } else {
          out += glm47 ? "</think>" : "\n<think></think>";
        }
        const std::string_view content = PyStrip(parts.content);
        if (!content.empty()) {
          if (!glm47) out += '\n';
          out += content;
        }
        for (const ChatToolCall& call : m.tool_calls) {
          out += glm47 ? "<tool_call>" : "\n<tool_call>";
          out += call.name;
          if (!glm47) out += '\n';
          for (const auto& [key, value] : call.arguments_object.items()) {
            out += "<arg_key>";
            out += key;
            out += glm47 ? "</arg_key><arg_value>" : "</arg_key>\n<arg_value>";
            out += ArgValue(value);
            out += glm47 ? "</arg_value>" : "</arg_value>\n";
          }
          out += "</tool_call>";
        }
        break;
      }
      case ChatRole::kTool:
        if (i == 0 || messages[i - 1].role != ChatRole::kTool) out += "<|observation|>";
        out += glm47 ? "<tool_response>" : "\n<tool_response>\n";
        out += m.content;
        out += glm47 ? "</tool_response>" : "\n</tool_response>";
        break;
      case ChatRole::kSystem:
        out += glm47 ? "<|system|>" : "<|system|>\n";
        out += m.content;
        break;
    }
  }
  if (add_generation_prompt) {
    out += "<|assistant|>";
    if (glm47) {
      out += thinking_off ? "</think>" : "<think>";
    } else if (thinking_off) {
      out += "\n<think></think>";
    }
  }
  return out;
}

AssistantParts SplitAssistantReasoning(const ChatMessage& message) {
  AssistantParts parts;
  if (message.reasoning_content.has_value()) {
    parts.reasoning = *message.reasoning_content;
    parts.content = message.content;
    return parts;
  }
  const std::string& content = message.content;
  const size_t first_close = content.find("</think>");
  if (first_close == std::string::npos) {
    parts.content = content;
    return parts;
  }
  // content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n')
  std::string_view before = PyRStripChars(std::string_view(content).substr(0, first_close), "\n");
  const size_t last_open = before.rfind("<think>");
  if (last_open != std::string_view::npos) before = before.substr(last_open + 7);
  parts.reasoning = std::string(PyLStripChars(before, "\n"));
  // content.split('</think>')[-1].lstrip('\n')
  const size_t last_close = content.rfind("</think>");
  parts.content =
      std::string(PyLStripChars(std::string_view(content).substr(last_close + 8), "\n"));
  return parts;
}

}  // namespace spark::engine::chat::internal
