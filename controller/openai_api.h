// The OpenAI-compatible inference API of spark-controller (docs/openai-api.md):
//
//   GET  /v1/models                 ready deployments: {"object": "list", "data": [model...]}
//   GET  /v1/models/{id}            one deployment (404 model_not_found when unknown)
//   POST /v1/chat/completions       chat: template, reasoning, tool calls, streaming (SSE)
//   POST /v1/completions            text or token-id prompts, echo, logprobs, streaming
//   GET  /metrics                   Prometheus text (openai_metrics.h)
//
// A request is parsed and validated on the HTTP thread (openai_request.h), then handed to the
// service's worker threads, which look the model up (Controller::GetServingModel), build or
// reuse its tokenizer and chat template (openai_model.h), render and tokenize the prompt and send
// one GenerateRequest per choice to rank 0 (n > 1 and several prompts fan out). Chunks come back
// on the controller's thread and go through one ChoiceStream per choice (openai_choice_stream.h)
// to the client: one JSON response, or SSE chunks ending with "data: [DONE]".
//
// Failure behaviour: a model that is not serving (loading, recovering) or whose tokenizer has not
// arrived yet makes the request wait up to OpenAiOptions::model_wait, then 503 with Retry-After;
// a failed or stopped model answers 503 at once. A client that disconnects cancels its engine
// requests (ResponseWriter::OnClose, within a second). A stream whose run fails ends with an SSE
// error event ({"error": {...}}) and "data: [DONE]"; a request that has not started streaming
// gets the error as its response. Every error is an OpenAI error object (openai_error.h).
//
// Thread safety: AddRoutes before the server starts. The service must outlive the HTTP server's
// Stop and the controller's Stop (exchanges in flight hold only shared state, which stays valid).
#pragma once

#include <chrono>
#include <memory>

#include "common/status.h"
#include "controller/api_keys.h"
#include "controller/controller.h"
#include "controller/http/server.h"
#include "controller/openai_metrics.h"
#include "controller/openai_request.h"

namespace spark::controller {

struct OpenAiOptions {
  OpenAiLimits limits;
  // How long a request waits for a model that is not serving yet; 0: 503 at once.
  std::chrono::milliseconds model_wait{0};
  int worker_threads = 2;
};

class OpenAiService {
 public:
  OpenAiService(Controller& controller, OpenAiOptions options, ApiAuth auth);
  ~OpenAiService();
  OpenAiService(const OpenAiService&) = delete;
  OpenAiService& operator=(const OpenAiService&) = delete;

  Status AddRoutes(http::HttpServer& server);
  OpenAiMetrics& metrics();

  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace spark::controller
