// Requests of the OpenAI-compatible endpoints, parsed and validated: POST /v1/chat/completions
// and POST /v1/completions. Every error is InvalidArgument (or Unimplemented for a feature spark
// does not have) whose message starts with the field at fault ("temperature: expected a number
// between 0 and 2, got \"hot\""), so the OpenAI error's `param` can name it (openai_error.h).
// Unknown fields are ignored, as OpenAI-compatible servers do (SDKs send "user", "store", ...).
//
// Sampling fields (both endpoints): max_tokens (chat also max_completion_tokens; absent:
// OpenAiLimits::default_max_tokens), temperature [0, 2], top_p (0, 1], top_k (-1 or 0: off),
// min_p [0, 1], seed (any integer; n > 1 derives seed + i), presence_penalty and
// frequency_penalty [-2, 2], repetition_penalty (> 0), stop (a string or up to max_stop_strings
// strings), n [1, max_n], stream, stream_options.include_usage, ignore_eos and stop_token_ids
// (vLLM extensions). Chat: logprobs (bool), top_logprobs [0, 20] (needs logprobs); completions:
// logprobs (an integer [0, 5]: the number of alternatives, as legacy OpenAI), echo.
//
// Chat: messages (1 to max_messages; engine/text/chat/chat_message.h), tools, tool_choice
// ("none", "auto", "required", {"type": "function", "function": {"name"}} naming a defined
// tool), response_format {"type": "text" | "json_object"} ("json_schema" is not supported yet),
// chat_template_kwargs. Completions: prompt as a string, an array of strings, an array of token
// ids or an array of token-id arrays (at most max_prompts); suffix is not supported.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/text/chat/chat_message.h"
#include "engine/text/chat/py_json.h"
#include "spark.pb.h"

namespace spark::controller {

struct OpenAiLimits {
  size_t max_body_bytes = 8 * 1024 * 1024;
  size_t max_messages = 2048;
  uint32_t max_tokens = 32768;         // ceiling of max_tokens
  uint32_t default_max_tokens = 1024;  // when the request gives none
  uint32_t max_n = 16;
  size_t max_stop_strings = 16;
  size_t max_prompts = 64;             // /v1/completions prompts per request
  size_t max_prompt_tokens = 1 << 20;  // tokens of one prompt
};

struct SamplingOptions {
  uint32_t max_tokens = 0;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  float min_p = 0.0f;
  std::optional<int64_t> seed;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  float repetition_penalty = 1.0f;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  uint32_t n = 1;
  bool logprobs = false;
  uint32_t top_logprobs = 0;
  bool stream = false;
  bool include_usage = false;
};

enum class ToolChoice { kAuto, kNone, kRequired, kNamed };

struct ChatRequest {
  std::string model;
  std::vector<engine::chat::ChatMessage> messages;
  std::vector<engine::chat::ChatTool> tools;
  ToolChoice tool_choice = ToolChoice::kAuto;
  std::string tool_choice_name;  // kNamed
  bool json_object = false;      // response_format json_object
  engine::chat::ChatTemplateKwargs kwargs;
  SamplingOptions sampling;
};

struct CompletionPrompt {
  std::optional<std::string> text;  // text prompt (tokenized by the server)
  std::vector<int32_t> token_ids;   // token-id prompt (when text is nullopt)
};

struct TextCompletionRequest {
  std::string model;
  std::vector<CompletionPrompt> prompts;
  bool echo = false;
  SamplingOptions sampling;
};

// Parses a request body (the raw bytes): not JSON or not an object is InvalidArgument naming the
// byte where parsing failed.
Result<engine::chat::Json> ParseRequestBody(const std::string& body);

Result<ChatRequest> ParseChatRequest(const engine::chat::Json& body, const OpenAiLimits& limits);
Result<TextCompletionRequest> ParseTextCompletionRequest(const engine::chat::Json& body,
                                                         const OpenAiLimits& limits);

// The GenerateRequest of one choice: `prompt` ids, the sampling options (seed + choice_index
// when a seed was given), `extra_stop_ids` (the model's EOS ids, unless ignore_eos) added to
// stop_token_ids. Every field explicit: the shard applies no defaults.
spark::v1::GenerateRequest MakeGenerateRequest(const std::string& request_id,
                                               const std::vector<int32_t>& prompt,
                                               const SamplingOptions& sampling,
                                               const std::vector<int32_t>& extra_stop_ids,
                                               uint32_t choice_index, bool echo);

}  // namespace spark::controller
