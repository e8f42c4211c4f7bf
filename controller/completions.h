// Minimal OpenAI-style /v1/completions over token ids: request parsing and validation, the
// GenerateRequest sent to rank 0, and the JSON of responses and stream chunks.
//
// Request: {"model": NAME, "prompt": [ids...] (or [[ids...]] with one prompt), "max_tokens": 16,
// "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": N, "stop_token_ids": [...],
// "ignore_eos": false, "stream": false}. Text prompts are refused (InvalidArgument, "not
// supported yet") until the tokenizer arrives. Response: {"id", "object": "text_completion",
// "created", "model", "choices": [{"index": 0, "text": "", "token_ids": [...], "finish_reason",
// "logprobs": null}], "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}; a stream
// sends the same object per chunk (token_ids of that chunk, finish_reason null until the last).
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::controller {

struct CompletionRequest {
  std::string model;
  std::vector<int32_t> prompt;
  uint32_t max_tokens = 16;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int32_t top_k = 0;
  std::optional<uint64_t> seed;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool stream = false;
};

Result<CompletionRequest> ParseCompletionRequest(const nlohmann::json& body);

// Every sampling field explicit (the shard applies no defaults).
spark::v1::GenerateRequest ToGenerateRequest(const CompletionRequest& request,
                                             const std::string& request_id);

// "stop", "length", "cancelled", "error"; null JSON for NONE/unspecified.
nlohmann::json FinishReasonJson(spark::v1::FinishReason reason);

nlohmann::json CompletionJson(const std::string& id, const std::string& model,
                              int64_t created_unix_s, const std::vector<int32_t>& token_ids,
                              spark::v1::FinishReason finish_reason, const spark::v1::Usage* usage);

}  // namespace spark::controller
