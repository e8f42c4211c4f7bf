// SseLoad: many concurrent streaming HTTP clients on one thread (Boost.Beast, C++20 coroutines).
// Each client holds one keep-alive connection and issues POST requests one after another, taken
// from a shared source until it runs dry; each response is read as a server-sent event stream
// and every token's arrival time is recorded as it is parsed.
//
//   SseLoad load({.host = "127.0.0.1", .port = 8080, .bearer_token = key, .clients = 256});
//   std::vector<StreamTrace> traces = load.Run(next_request, CountChatTokens);
//
// Thread safety: Run is called by one thread; `next` and `count` run on that thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/load/stream_trace.h"

namespace spark::load {

struct SseRequest {
  std::string target;  // "/v1/chat/completions"
  std::string body;    // JSON
};

struct SseLoadOptions {
  std::string host = "127.0.0.1";
  uint16_t port = 8080;
  std::string bearer_token;  // sent when not empty
  int clients = 1;
  std::chrono::milliseconds idle_timeout{120'000};  // longest wait for the next bytes
};

// Tokens carried by one parsed SSE event (a chunk object; never called for "[DONE]").
using TokenCounter = std::function<int(const nlohmann::json& event)>;

// Chat chunks: 1 when a choice's delta has content, reasoning_content or tool_calls.
int CountChatTokens(const nlohmann::json& event);
// Completion chunks: the length of "token_ids" when present, else 1 when a choice has text.
int CountCompletionTokens(const nlohmann::json& event);

class SseLoad {
 public:
  explicit SseLoad(SseLoadOptions options) : options_(std::move(options)) {}

  // Runs until `next` returns nullopt for every client; one trace per request, in completion
  // order.
  std::vector<StreamTrace> Run(const std::function<std::optional<SseRequest>()>& next,
                               const TokenCounter& count);

 private:
  SseLoadOptions options_;
};

}  // namespace spark::load
