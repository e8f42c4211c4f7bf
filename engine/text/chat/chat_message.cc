#include "engine/text/chat/chat_message.h"

#include <utility>

namespace spark::engine::chat {
namespace {

std::string Field(size_t index, std::string_view field) {
  return "messages[" + std::to_string(index) + "]" + (field.empty() ? "" : ".") +
         std::string(field);
}

const char* TypeName(const Json& value) { return value.type_name(); }

Result<std::string> ParseContent(const Json& content, size_t index) {
  if (content.is_null()) return std::string();
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) {
    return InvalidArgument(Field(index, "content") + ": expected a string, null or an array of " +
                           "content parts, got " + TypeName(content));
  }
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string where = Field(index, "content[" + std::to_string(i) + "]");
    if (part.is_string()) {
      text += part.get<std::string>();
      continue;
    }
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return InvalidArgument(where + ": expected a content part object with a string \"type\"");
    }
    const std::string& type = part["type"].get_ref<const std::string&>();
    if (type != "text") {
      return Unimplemented(where + ": content part type \"" + type +
                           "\" is not supported (text-only models); send {\"type\": \"text\", " +
                           "\"text\": ...} parts");
    }
    if (!part.contains("text") || !part["text"].is_string()) {
      return InvalidArgument(where + ": a text content part needs a string \"text\"");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

Result<ChatToolCall> ParseToolCall(const Json& call, size_t index, size_t call_index) {
  const std::string where = Field(index, "tool_calls[" + std::to_string(call_index) + "]");
  if (!call.is_object()) return InvalidArgument(where + ": expected an object");
  ChatToolCall out;
  if (call.contains("id") && !call["id"].is_null()) {
    if (!call["id"].is_string()) return InvalidArgument(where + ".id: expected a string");
    out.id = call["id"].get<std::string>();
  }
  if (call.contains("type") && !call["type"].is_null() &&
      !(call["type"].is_string() && call["type"].get<std::string>() == "function")) {
    return InvalidArgument(where + ".type: only \"function\" tool calls are supported");
  }
  if (!call.contains("function") || !call["function"].is_object()) {
    return InvalidArgument(where + ".function: expected an object with \"name\" and \"arguments\"");
  }
  const Json& function = call["function"];
  if (!function.contains("name") || !function["name"].is_string() ||
      function["name"].get_ref<const std::string&>().empty()) {
    return InvalidArgument(where + ".function.name: expected a non-empty string");
  }
  out.name = function["name"].get<std::string>();
  if (!function.contains("arguments") || function["arguments"].is_null()) {
    out.arguments = "{}";
    out.arguments_object = Json::object();
    return out;
  }
  const Json& arguments = function["arguments"];
  if (arguments.is_object()) {
    // Some clients send the object itself instead of its JSON text.
    out.arguments_object = arguments;
    out.arguments = PyJsonDumps(arguments);
    return out;
  }
  if (!arguments.is_string()) {
    return InvalidArgument(where + ".function.arguments: expected a JSON object encoded as a " +
                           "string, got " + TypeName(arguments));
  }
  out.arguments = arguments.get<std::string>();
  Json parsed = PyJsonLoads(out.arguments);  // big integers stay exact, as in Python
  if (parsed.is_discarded() || !parsed.is_object()) {
    return InvalidArgument(where + ".function.arguments: not a JSON object (" +
                           (parsed.is_discarded() ? std::string("invalid JSON")
                                                  : std::string("a JSON ") + TypeName(parsed)) +
                           "); send the arguments as the JSON text of an object, e.g. " +
                           "\"{\\\"city\\\": \\\"Paris\\\"}\"");
  }
  out.arguments_object = std::move(parsed);
  return out;
}

Result<std::optional<std::string>> OptionalString(const Json& message, const char* key,
                                                  size_t index) {
  if (!message.contains(key) || message[key].is_null()) return std::optional<std::string>();
  if (!message[key].is_string()) {
    return InvalidArgument(Field(index, key) + ": expected a string or null, got " +
                           TypeName(message[key]));
  }
  return std::optional<std::string>(message[key].get<std::string>());
}

Result<std::optional<bool>> OptionalBool(const Json& kwargs, const char* key) {
  if (!kwargs.contains(key) || kwargs[key].is_null()) return std::optional<bool>();
  if (!kwargs[key].is_boolean()) {
    return InvalidArgument(std::string("chat_template_kwargs.") + key +
                           ": expected true or false, got " + TypeName(kwargs[key]));
  }
  return std::optional<bool>(kwargs[key].get<bool>());
}

}  // namespace

std::string_view ChatRoleName(ChatRole role) {
  switch (role) {
    case ChatRole::kSystem:
      return "system";
    case ChatRole::kUser:
      return "user";
    case ChatRole::kAssistant:
      return "assistant";
    case ChatRole::kTool:
      return "tool";
  }
  return "unknown";
}

Result<ChatMessage> ParseChatMessage(const Json& message, size_t index) {
  if (!message.is_object()) {
    return InvalidArgument(Field(index, "") + ": expected an object, got " + TypeName(message));
  }
  if (!message.contains("role") || !message["role"].is_string()) {
    return InvalidArgument(Field(index, "role") + ": missing; expected one of system, user, " +
                           "assistant, tool");
  }
  const std::string& role = message["role"].get_ref<const std::string&>();
  ChatMessage out;
  if (role == "system") {
    out.role = ChatRole::kSystem;
  } else if (role == "user") {
    out.role = ChatRole::kUser;
  } else if (role == "assistant") {
    out.role = ChatRole::kAssistant;
  } else if (role == "tool") {
    out.role = ChatRole::kTool;
  } else {
    return InvalidArgument(Field(index, "role") + ": \"" + role +
                           "\" is not supported; use system, user, assistant or tool");
  }
  SPARK_ASSIGN_OR_RETURN(
      out.content, ParseContent(message.contains("content") ? message["content"] : Json(), index));
  SPARK_ASSIGN_OR_RETURN(out.reasoning_content,
                         OptionalString(message, "reasoning_content", index));
  SPARK_ASSIGN_OR_RETURN(out.tool_call_id, OptionalString(message, "tool_call_id", index));
  SPARK_ASSIGN_OR_RETURN(out.name, OptionalString(message, "name", index));
  if (message.contains("tool_calls") && !message["tool_calls"].is_null()) {
    const Json& calls = message["tool_calls"];
    if (!calls.is_array()) {
      return InvalidArgument(Field(index, "tool_calls") + ": expected an array, got " +
                             TypeName(calls));
    }
    if (!calls.empty() && out.role != ChatRole::kAssistant) {
      return InvalidArgument(Field(index, "tool_calls") + ": only assistant messages carry " +
                             "tool calls");
    }
    for (size_t i = 0; i < calls.size(); ++i) {
      SPARK_ASSIGN_OR_RETURN(ChatToolCall call, ParseToolCall(calls[i], index, i));
      out.tool_calls.push_back(std::move(call));
    }
  }
  return out;
}

Result<std::vector<ChatMessage>> ParseChatMessages(const Json& messages) {
  if (!messages.is_array()) {
    return InvalidArgument(std::string("messages: expected an array of messages, got ") +
                           TypeName(messages));
  }
  if (messages.empty()) return InvalidArgument("messages: empty; send at least one message");
  std::vector<ChatMessage> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    SPARK_ASSIGN_OR_RETURN(ChatMessage message, ParseChatMessage(messages[i], i));
    out.push_back(std::move(message));
  }
  return out;
}

Result<std::vector<ChatTool>> ParseChatTools(const Json& tools) {
  std::vector<ChatTool> out;
  if (tools.is_null()) return out;
  if (!tools.is_array()) {
    return InvalidArgument(std::string("tools: expected an array of function tools, got ") +
                           TypeName(tools));
  }
  for (size_t i = 0; i < tools.size(); ++i) {
    const Json& tool = tools[i];
    const std::string where = "tools[" + std::to_string(i) + "]";
    if (!tool.is_object()) return InvalidArgument(where + ": expected an object");
    if (tool.contains("type") &&
        !(tool["type"].is_string() && tool["type"].get<std::string>() == "function")) {
      return InvalidArgument(where + ".type: only \"function\" tools are supported");
    }
    if (!tool.contains("function") || !tool["function"].is_object()) {
      return InvalidArgument(where + ".function: expected an object with \"name\"");
    }
    const Json& function = tool["function"];
    if (!function.contains("name") || !function["name"].is_string() ||
        function["name"].get_ref<const std::string&>().empty()) {
      return InvalidArgument(where + ".function.name: expected a non-empty string");
    }
    ChatTool parsed;
    parsed.name = function["name"].get<std::string>();
    if (function.contains("parameters") && !function["parameters"].is_null()) {
      if (!function["parameters"].is_object()) {
        return InvalidArgument(where + ".function.parameters: expected a JSON schema object");
      }
      parsed.parameters = function["parameters"];
    }
    parsed.definition = tool;
    out.push_back(std::move(parsed));
  }
  return out;
}

Result<ChatTemplateKwargs> ParseChatTemplateKwargs(const Json& kwargs) {
  ChatTemplateKwargs out;
  if (kwargs.is_null()) return out;
  if (!kwargs.is_object()) {
    return InvalidArgument(std::string("chat_template_kwargs: expected an object, got ") +
                           TypeName(kwargs));
  }
  SPARK_ASSIGN_OR_RETURN(out.enable_thinking, OptionalBool(kwargs, "enable_thinking"));
  SPARK_ASSIGN_OR_RETURN(out.clear_thinking, OptionalBool(kwargs, "clear_thinking"));
  SPARK_ASSIGN_OR_RETURN(out.tools_in_user_message, OptionalBool(kwargs, "tools_in_user_message"));
  if (kwargs.contains("date_string") && !kwargs["date_string"].is_null()) {
    if (!kwargs["date_string"].is_string()) {
      return InvalidArgument("chat_template_kwargs.date_string: expected a string such as " +
                             std::string("\"26 Jul 2024\""));
    }
    out.date_string = kwargs["date_string"].get<std::string>();
  }
  for (const auto& [key, value] : kwargs.items()) {
    if (key == "enable_thinking" || key == "clear_thinking" || key == "date_string" ||
        key == "tools_in_user_message") {
      continue;
    }
    out.extra[key] = value;
  }
  return out;
}

const ChatTool* FindTool(const std::vector<ChatTool>& tools, std::string_view name) {
  for (const ChatTool& tool : tools) {
    if (tool.name == name) return &tool;
  }
  return nullptr;
}

}  // namespace spark::engine::chat
