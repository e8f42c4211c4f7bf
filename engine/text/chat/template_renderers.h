// Internal: the per-family renderers behind RenderChat (chat_template.h). Each reproduces one
// real template; see that header for the contract.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "engine/text/chat/chat_message.h"
#include "engine/text/chat/chat_template.h"

namespace spark::engine::chat::internal {

// GLM-4.5/4.6 (glm47 = false) and GLM-4.7 (glm47 = true).
Result<std::string> RenderGlm(bool glm47, const std::vector<ChatMessage>& messages,
                              const std::vector<ChatTool>& tools, const ChatTemplateKwargs& kwargs,
                              bool add_generation_prompt);

// Qwen3 ChatML.
Result<std::string> RenderQwen3(const std::vector<ChatMessage>& messages,
                                const std::vector<ChatTool>& tools,
                                const ChatTemplateKwargs& kwargs, bool add_generation_prompt);

// Llama-3 family (layout chosen by the ChatTemplate flags).
Result<std::string> RenderLlama3(const ChatTemplate& chat_template,
                                 const std::vector<ChatMessage>& messages,
                                 const std::vector<ChatTool>& tools,
                                 const ChatTemplateKwargs& kwargs, bool add_generation_prompt);

// The reasoning and visible content of an assistant message as the GLM and Qwen3 templates
// derive them: `reasoning_content` when the message has one, else the text before the first
// "</think>" (after its last "<think>", newlines trimmed) and the text after the last "</think>".
struct AssistantParts {
  std::string reasoning;
  std::string content;
};
AssistantParts SplitAssistantReasoning(const ChatMessage& message);

}  // namespace spark::engine::chat::internal
