// Llama-3 family chat templates (see chat_template.h).
#include <ctime>
#include <string>
#include <string_view>

#include "engine/text/chat/py_json.h"
#include "engine/text/chat/template_renderers.h"

namespace spark::engine::chat::internal {
namespace {

constexpr std::string_view kDefaultDate = "26 Jul 2024";  // the template's own default
constexpr std::string_view kRespondFormat =
    "Respond in the format {\"name\": function name, \"parameters\": dictionary of argument name "
    "and its value}.Do not use variables.\n\n";

std::string Header(std::string_view role) {
  return "<|start_header_id|>" + std::string(role) + "<|end_header_id|>\n\n";
}

std::string TodayDate() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char buf[32];
  const size_t n = std::strftime(buf, sizeof(buf), "%d %b %Y", &local);
  return std::string(buf, n);
}

void AppendToolsJson(const std::vector<ChatTool>& tools, std::string* out) {
  for (const ChatTool& tool : tools) {
    *out += PyJsonDumps(tool.definition, PyJsonOptions{.ensure_ascii = false, .indent = 4});
    *out += "\n\n";
  }
}

Result<std::string> RenderPlain(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                bool add_generation_prompt) {
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i == 0) out += tmpl.bos_token;
    out += Header(ChatRoleName(messages[i].role));
    out += PyStrip(messages[i].content);
    out += "<|eot_id|>";
  }
  if (add_generation_prompt || tmpl.llama_always_generation_prompt) out += Header("assistant");
  return out;
}

}  // namespace

Result<std::string> RenderLlama3(const ChatTemplate& tmpl, const std::vector<ChatMessage>& messages,
                                 const std::vector<ChatTool>& tools,
                                 const ChatTemplateKwargs& kwargs, bool add_generation_prompt) {
  if (!tmpl.llama_dated_system) return RenderPlain(tmpl, messages, add_generation_prompt);
  if (messages.empty()) return InvalidArgument("messages: empty; send at least one message");
  if (kwargs.extra.contains("builtin_tools")) {
    return Unimplemented(
        "chat_template_kwargs.builtin_tools: Llama built-in tools (ipython mode) are not "
        "supported; declare them as function tools");
  }
  const bool tools_in_user_message = kwargs.tools_in_user_message.value_or(true);
  std::string date;
  if (kwargs.date_string.has_value()) {
    date = *kwargs.date_string;
  } else {
    date = tmpl.llama_date_from_clock ? TodayDate() : std::string(kDefaultDate);
  }
  size_t begin = 0;
  std::string_view system_message;
  if (messages[0].role == ChatRole::kSystem) {
    system_message = PyStrip(messages[0].content);
    begin = 1;
  }
  std::string out = tmpl.bos_token;
  out += Header("system");
  if (!tools.empty()) out += "Environment: ipython\n";
  out += "Cutting Knowledge Date: December 2023\nToday Date: ";
  out += date;
  out += "\n\n";
  if (!tools.empty() && !tools_in_user_message) {
    out +=
        "You have access to the following functions. To call a function, please respond with "
        "JSON for a function call.";
    out += kRespondFormat;
    AppendToolsJson(tools, &out);
  }
  out += system_message;
  out += "<|eot_id|>";
  if (tools_in_user_message && !tools.empty()) {
    if (begin >= messages.size()) {
      return InvalidArgument(
          "Cannot put tools in the first user message when there's no first user message!");
    }
    out += Header("user");
    out +=
        "Given the following functions, please respond with a JSON for a function call with "
        "its proper arguments that best answers the given prompt.\n\n";
    out += kRespondFormat;
    AppendToolsJson(tools, &out);
    out += PyStrip(messages[begin].content);
    out += "<|eot_id|>";
    ++begin;
  }
  for (size_t i = begin; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    if (m.role == ChatRole::kTool) {
      out += Header("ipython");
      // A string is iterable in Jinja, so the template JSON-encodes tool results.
      out += PyJsonQuote(m.content);
      out += "<|eot_id|>";
    } else if (!m.tool_calls.empty()) {
      if (m.tool_calls.size() != 1) {
        return InvalidArgument("This model only supports single tool-calls at once!");
      }
      out += Header("assistant");
      out += "{\"name\": \"";
      out += m.tool_calls[0].name;
      out += "\", \"parameters\": ";
      out += PyJsonDumps(m.tool_calls[0].arguments_object);
      out += "}<|eot_id|>";
    } else {
      out += Header(ChatRoleName(m.role));
      out += PyStrip(m.content);
      out += "<|eot_id|>";
    }
  }
  if (add_generation_prompt) out += Header("assistant");
  return out;
}

}  // namespace spark::engine::chat::internal
