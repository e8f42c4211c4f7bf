// Native chat-template renderers (no general Jinja engine) for the checkpoints spark serves,
// reproducing Hugging Face's apply_chat_template(tokenize=False) byte for byte (checked against
// golden renders of the real templates, tests/data/chat/*.jsonl).
//
//   kGlm45   GLM-4.5 / GLM-4.6 (zai-org chat_template.jinja; llama.cpp models/templates/GLM-4.6)
//   kGlm47   GLM-4.7 (tool calls and tool results without newlines, "<think>" generation prompt,
//            clear_thinking)
//   kChatMl  Qwen3 (ChatML with <think> reasoning, <tools> and JSON <tool_call>s)
//   kLlama3  Llama-3 family: the Llama-3.1/3.2/3.3 template (dated system header, tools, ipython
//            role) and the plain Llama-3.0 template (headers and <|eot_id|> only)
//
// Detection (DetectChatTemplate) reads the checkpoint's template text and looks for markers that
// only that family's template has:
//   GLM      "[gMASK]<sop>" and "<|assistant|>"; then the tool-call instruction line decides:
//            "{function-name}\n<arg_key>" -> kGlm45, "{function-name}<arg_key>" -> kGlm47
//   Qwen3    "<|im_start|>", "<tool_call>", "</think>" and "multi_step_tool"
//   Llama-3  "<|start_header_id|>" and "<|eot_id|>"; "Cutting Knowledge Date" marks the 3.1+
//            template, "strftime_now" a template that dates the prompt with today's date, and a
//            plain template that never tests add_generation_prompt always ends with the
//            assistant header
// Anything else is kUnimplemented ("chat template of <file> is not supported yet").
//
// Rendering rules that apply to every kind: messages are normalised as chat_message.h says; tool
// call arguments are rendered from the parsed object (json.dumps style, key order kept); an empty
// tools list is the same as no tools. Conversations that a template refuses
// (raise_exception) are kInvalidArgument with the template's message.
//
// Thread safety: pure functions; ChatTemplate is a plain value.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/text/chat/chat_message.h"

namespace spark::engine::chat {

enum class ChatTemplateKind { kGlm45, kGlm47, kChatMl, kLlama3 };

// "glm45", "glm47", "chatml", "llama3".
std::string_view ChatTemplateKindName(ChatTemplateKind kind);

struct ChatTemplate {
  ChatTemplateKind kind = ChatTemplateKind::kGlm45;
  // Llama-3 family only.
  bool llama_dated_system = true;               // 3.1+ layout; false: the plain Llama-3.0 template
  bool llama_date_from_clock = false;           // no date_string: today's date ("%d %b %Y")
  bool llama_always_generation_prompt = false;  // plain template that ignores the flag
  std::string bos_token = "<|begin_of_text|>";  // written by Llama-3 templates
  std::string source;                           // where the template text came from (for messages)
};

// The default template of a kind (Llama-3: the 3.1+ layout).
ChatTemplate DefaultChatTemplate(ChatTemplateKind kind);

// Recognises a template text; `source` names the file in errors.
Result<ChatTemplate> DetectChatTemplate(std::string_view template_text, std::string_view source);

// Reads the chat template of a checkpoint directory: chat_template.jinja when present, else the
// "chat_template" of tokenizer_config.json (a string, or the entry named "default" of a list).
// The Llama bos_token comes from tokenizer_config.json when it names one.
Result<ChatTemplate> LoadChatTemplate(const std::filesystem::path& model_dir);

// Renders a conversation the way apply_chat_template(messages, tools=tools, tokenize=False,
// add_generation_prompt=..., **kwargs) does with the real template.
Result<std::string> RenderChat(const ChatTemplate& chat_template,
                               const std::vector<ChatMessage>& messages,
                               const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                               bool add_generation_prompt);

// Same with DefaultChatTemplate(kind).
Result<std::string> RenderChat(ChatTemplateKind kind, const std::vector<ChatMessage>& messages,
                               const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                               bool add_generation_prompt);

}  // namespace spark::engine::chat
