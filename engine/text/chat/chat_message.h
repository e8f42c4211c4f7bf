// The chat request model of the OpenAI-compatible endpoint: messages, tools and
// chat_template_kwargs, parsed from OpenAI chat-completions JSON with errors that name the
// offending field.
//
// Normalisation (the one OpenAI-compatible servers apply before a chat template runs, and the one
// the golden renders of tests/reference/chat_golden.py use):
//   content       a string; null -> ""; an array of content parts -> the concatenation of its
//                 {"type": "text"} parts (other part types are rejected: text-only models)
//   tool_calls    [{id, type: "function", function: {name, arguments}}]; `arguments` is the JSON
//                 text as sent, and must be a JSON object (templates iterate over its items)
//   tools         OpenAI function tools; the whole tool object is kept (key order included)
//                 because templates print it as JSON
//
// Thread safety: plain values.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/text/chat/py_json.h"

namespace spark::engine::chat {

enum class ChatRole { kSystem, kUser, kAssistant, kTool };

// "system", "user", "assistant", "tool".
std::string_view ChatRoleName(ChatRole role);

struct ChatToolCall {
  std::string id;         // may be empty in requests
  std::string name;       // function.name
  std::string arguments;  // function.arguments, the JSON text as sent
  Json arguments_object;  // the same, parsed (always a JSON object)
};

struct ChatMessage {
  ChatRole role = ChatRole::kUser;
  std::string content;                           // normalised text (see above)
  std::optional<std::string> reasoning_content;  // present when the request carried a string
  std::vector<ChatToolCall> tool_calls;          // assistant messages only
  std::optional<std::string> tool_call_id;       // tool messages
  std::optional<std::string> name;
};

// One OpenAI function tool: {"type": "function", "function": {"name", "description",
// "parameters"}}.
struct ChatTool {
  std::string name;
  Json parameters = Json::object();  // JSON schema of the arguments ({} when absent)
  Json definition;                   // the whole tool object as sent (rendered into prompts)
};

// chat_template_kwargs of a request. Templates test `enable_thinking is defined`, so "absent" and
// "false" differ: the optionals keep that difference.
struct ChatTemplateKwargs {
  std::optional<bool> enable_thinking;     // GLM, Qwen3: thinking on unless false
  std::optional<bool> clear_thinking;      // GLM-4.7: false keeps the reasoning of every turn
  std::optional<std::string> date_string;  // Llama-3.1+: "Today Date" (template default otherwise)
  std::optional<bool> tools_in_user_message;  // Llama-3.1+: default true
  Json extra = Json::object();                // every other key, kept for templates that read it
};

// Parses an OpenAI `messages` array. Errors name the message index and field
// ("messages[2].tool_calls[0].function.arguments: ...").
Result<std::vector<ChatMessage>> ParseChatMessages(const Json& messages);

// Parses one message; `index` is used in error messages only.
Result<ChatMessage> ParseChatMessage(const Json& message, size_t index);

// Parses an OpenAI `tools` array (null or absent -> empty).
Result<std::vector<ChatTool>> ParseChatTools(const Json& tools);

// Parses `chat_template_kwargs` (null or absent -> all defaults).
Result<ChatTemplateKwargs> ParseChatTemplateKwargs(const Json& kwargs);

// The tool named `name`, or nullptr.
const ChatTool* FindTool(const std::vector<ChatTool>& tools, std::string_view name);

}  // namespace spark::engine::chat
