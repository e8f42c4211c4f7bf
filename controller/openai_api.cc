#include "controller/openai_api.h"

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>

#include <ctime>
#include <mutex>
#include <random>

#include "common/log.h"
#include "controller/http/json.h"
#include "controller/http/sse.h"
#include "controller/openai_choice_stream.h"
#include "controller/openai_error.h"
#include "controller/openai_model.h"
#include "engine/text/chat/chat_template.h"

namespace spark::controller {

namespace asio = boost::asio;
namespace chat = engine::chat;
using http::Method;
using http::Request;
using http::Response;
using http::ResponseWriter;
using nlohmann::json;
using SteadyTime = std::chrono::steady_clock::time_point;

struct OpenAiService::Shared {
  Controller* controller = nullptr;
  OpenAiOptions options;
  ApiAuth auth;
  OpenAiMetrics metrics;
  ModelTextCache texts;
  std::mutex pool_mu;
  std::unique_ptr<asio::thread_pool> pool;

  // Runs `fn` on a worker thread; dropped once the service is gone.
  void Post(std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(pool_mu);
    if (pool) asio::post(*pool, std::move(fn));
  }
  // Runs `fn` on a worker thread after `delay`.
  void PostAfter(std::chrono::milliseconds delay, std::function<void()> fn) {
    std::lock_guard<std::mutex> lock(pool_mu);
    if (!pool) return;
    auto timer = std::make_shared<asio::steady_timer>(pool->get_executor(), delay);
    timer->async_wait([timer, fn = std::move(fn)](const boost::system::error_code& ec) {
      if (!ec) fn();
    });
  }
};

namespace {

constexpr const char* kChatEndpoint = "/v1/chat/completions";
constexpr const char* kCompletionsEndpoint = "/v1/completions";
constexpr std::chrono::milliseconds kModelPoll{100};

std::string RandomHex() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  char text[33];
  std::snprintf(text, sizeof(text), "%016llx%016llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng()));
  return text;
}

double SecondsBetween(SteadyTime a, SteadyTime b) {
  return std::chrono::duration<double>(b - a).count();
}

json BytesJson(const std::string& bytes) {
  json out = json::array();
  for (unsigned char c : bytes) out.push_back(static_cast<int>(c));
  return out;
}

json ChatLogprobsJson(const std::vector<TokenLogprobInfo>& entries) {
  json content = json::array();
  for (const TokenLogprobInfo& e : entries) {
    json top = json::array();
    for (const TokenLogprobInfo::Alternative& alt : e.top) {
      top.push_back(
          {{"token", alt.token}, {"logprob", alt.logprob}, {"bytes", BytesJson(alt.bytes)}});
    }
    content.push_back({{"token", e.token},
                       {"logprob", e.logprob ? json(*e.logprob) : json(nullptr)},
                       {"bytes", BytesJson(e.bytes)},
                       {"top_logprobs", top}});
  }
  return {{"content", content}};
}

// Legacy completions logprobs; `offset` is the text offset of the first entry (advanced).
json CompletionLogprobsJson(const std::vector<TokenLogprobInfo>& entries, size_t* offset) {
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  for (const TokenLogprobInfo& e : entries) {
    tokens.push_back(e.token);
    token_logprobs.push_back(e.logprob ? json(*e.logprob) : json(nullptr));
    if (e.logprob) {
      json alternatives = json::object();
      for (const TokenLogprobInfo::Alternative& alt : e.top) alternatives[alt.token] = alt.logprob;
      top.push_back(std::move(alternatives));
    } else {
      top.push_back(nullptr);
    }
    offsets.push_back(*offset);
    *offset += e.token.size();
  }
  return {{"tokens", tokens},
          {"token_logprobs", token_logprobs},
          {"top_logprobs", top},
          {"text_offset", offsets}};
}

json ModelJson(const std::string& name, int64_t created_at_ms) {
  return {
      {"id", name}, {"object", "model"}, {"created", created_at_ms / 1000}, {"owned_by", "spark"}};
}

// One choice of an exchange.
struct Choice {
  std::string request_id;
  size_t prompt_index = 0;
  std::optional<ChoiceStream> stream;
  bool done = false;
  bool engine_running = false;  // the engine may still be generating (cancel on close)
  std::string finish_reason;
  uint32_t engine_completion_tokens = 0;
  uint32_t cached_prompt_tokens = 0;
  std::optional<SteadyTime> last_token;
  // Accumulated output (non-streaming).
  std::string text;
  std::string reasoning;
  std::string content;
  std::vector<chat::ParsedToolCall> tool_calls;
  std::vector<TokenLogprobInfo> logprobs;
  std::vector<int32_t> token_ids;
  // Streaming.
  std::vector<TokenLogprobInfo> pending_logprobs;
  size_t text_offset = 0;
};

// One chat or completion request, from admission to the last byte.
class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  enum class Kind { kChat, kCompletion };

  Exchange(std::shared_ptr<OpenAiService::Shared> shared, std::shared_ptr<ResponseWriter> writer,
           Kind kind)
      : shared_(std::move(shared)),
        writer_(std::move(writer)),
        kind_(kind),
        arrival_(std::chrono::steady_clock::now()),
        created_(static_cast<int64_t>(std::time(nullptr))) {
    id_ = (kind == Kind::kChat ? "chatcmpl-" : "cmpl-") + RandomHex();
    shared_->metrics.AddQueued(1);
  }
  ~Exchange() {
    if (!counted_first_token_) shared_->metrics.AddQueued(-1);
    if (counted_first_token_ && !finished_) shared_->metrics.AddRunning(-1);
  }

  void StartChat(ChatRequest request) {
    chat_ = std::move(request);
    model_ = chat_->model;
    sampling_ = chat_->sampling;
    Admit();
  }
  void StartCompletion(TextCompletionRequest request) {
    completion_ = std::move(request);
    model_ = completion_->model;
    sampling_ = completion_->sampling;
    Admit();
  }

 private:
  const char* endpoint() const {
    return kind_ == Kind::kChat ? kChatEndpoint : kCompletionsEndpoint;
  }
  std::chrono::steady_clock::time_point deadline() const {
    return arrival_ + shared_->options.model_wait;
  }

  bool NeedsText() const {
    if (kind_ == Kind::kChat) return true;
    if (!sampling_.stop.empty()) return true;
    for (const CompletionPrompt& p : completion_->prompts) {
      if (p.text) return true;
    }
    return false;
  }

  // Asks the controller about the model; retries while it is not serving (bounded).
  void Admit() {
    auto self = shared_from_this();
    shared_->controller->GetServingModel(model_, [self](Result<ServingModelView> view) {
      self->shared_->Post([self, view = std::move(view)]() mutable { self->OnModel(view); });
    });
  }

  void OnModel(const Result<ServingModelView>& view) {
    if (!view.ok()) {
      if (view.status().code() == StatusCode::kNotFound) {
        Fail(
            http::Response(OpenAiErrorResponse(
                404, "the model \"" + model_ + "\" does not exist; GET /v1/models lists the models",
                "invalid_request_error", std::string("model"), "model_not_found")),
            404);
        return;
      }
      FailStatus(view.status());
      return;
    }
    const bool text_missing = NeedsText() && view->tokenizer_files == nullptr;
    if (!view->serving || text_missing) {
      if (!view->failed && std::chrono::steady_clock::now() + kModelPoll <= deadline()) {
        auto self = shared_from_this();
        shared_->PostAfter(kModelPoll, [self] { self->Admit(); });
        return;
      }
      std::string why = view->state;
      if (!view->waiting_reason.empty()) why += ": " + view->waiting_reason;
      if (view->serving) why = "its tokenizer has not arrived from the shard yet";
      FailStatus(
          Unavailable("the model \"" + model_ + "\" is not ready (" + why + "); retry shortly"));
      return;
    }
    if (view->tokenizer_files != nullptr) {
      Result<std::shared_ptr<const ModelText>> text =
          shared_->texts.Get(model_, *view->tokenizer_files);
      if (!text.ok()) {
        if (NeedsText()) {
          FailStatus(text.status());
          return;
        }
      } else {
        text_ = *text;
      }
    }
    Status st = kind_ == Kind::kChat ? PrepareChat() : PrepareCompletion();
    if (!st.ok()) {
      FailStatus(st);
      return;
    }
    Launch();
  }

  Status PrepareChat() {
    ChatRequest& r = *chat_;
    if (!text_->chat_template) {
      return InvalidArgument("model: \"" + model_ + "\" has no usable chat template (" +
                             text_->template_source + "); use /v1/completions with a prompt");
    }
    // tool_choice: "none" leaves the tools out of the prompt and the output unparsed; a named
    // function keeps only that tool; "required" and "auto" keep all (no constrained decoding).
    std::vector<chat::ChatTool> tools;
    if (r.tool_choice == ToolChoice::kNamed) {
      tools.push_back(*chat::FindTool(r.tools, r.tool_choice_name));
    } else if (r.tool_choice != ToolChoice::kNone) {
      tools = r.tools;
    }
    SPARK_ASSIGN_OR_RETURN(std::string prompt,
                           chat::RenderChat(*text_->chat_template, r.messages, tools, r.kwargs,
                                            /*add_generation_prompt=*/true));
    engine::EncodeOptions encode;
    encode.parse_special = true;
    encode.add_special_tokens = false;
    prompts_.push_back(text_->tokenizer->EncodeWithOptions(prompt, encode));
    prompt_tokens_ = static_cast<uint32_t>(prompts_[0].size());
    chat_output_ = chat::ChatOutputOptionsFor(text_->chat_template->kind, r.kwargs, tools);
    return Status::Ok();
  }

  Status PrepareCompletion() {
    TextCompletionRequest& r = *completion_;
    for (const CompletionPrompt& p : r.prompts) {
      if (p.text) {
        engine::EncodeOptions encode;
        encode.parse_special = true;
        encode.add_special_tokens = true;
        prompts_.push_back(text_->tokenizer->EncodeWithOptions(*p.text, encode));
        if (prompts_.back().empty()) {
          return InvalidArgument("prompt: the text encodes to no token; send a non-empty prompt");
        }
        echo_text_.push_back(*p.text);
      } else {
        prompts_.push_back(p.token_ids);
        std::string decoded;
        if (text_ && r.echo) {
          Result<std::string> d = text_->tokenizer->Decode(p.token_ids);
          if (!d.ok()) return d.status().WithContext("prompt");
          decoded = *d;
        }
        echo_text_.push_back(decoded);
      }
      prompt_tokens_ += static_cast<uint32_t>(prompts_.back().size());
    }
    return Status::Ok();
  }

  void Launch() {
    std::vector<spark::v1::GenerateRequest> requests;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const uint32_t n = sampling_.n;
      for (size_t p = 0; p < prompts_.size(); ++p) {
        for (uint32_t i = 0; i < n; ++i) {
          Choice c;
          c.prompt_index = p;
          c.request_id = id_ + "-" + std::to_string(choices_.size());
          if (text_) {
            std::optional<chat::ChatOutputOptions> options;
            if (chat_output_) options = *chat_output_;
            c.stream.emplace(text_.get(), sampling_.stop, std::move(options), sampling_.logprobs);
          }
          c.engine_running = true;
          requests.push_back(MakeGenerateRequest(
              c.request_id, prompts_[p], sampling_,
              text_ ? text_->eos_token_ids : std::vector<int32_t>{}, i, /*echo=*/false));
          choices_.push_back(std::move(c));
        }
      }
      remaining_ = choices_.size();
    }
    std::weak_ptr<Exchange> weak = weak_from_this();
    writer_->OnClose([weak] {
      if (auto self = weak.lock()) self->CancelAll("the client disconnected");
    });
    auto self = shared_from_this();
    for (size_t i = 0; i < requests.size(); ++i) {
      shared_->controller->Generate(
          model_, std::move(requests[i]),
          [self, i](Result<spark::v1::TokenChunk> chunk) { self->OnChunk(i, std::move(chunk)); });
    }
  }

  void CancelAll(const std::string& reason) {
    std::vector<std::string> ids;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (Choice& c : choices_) {
        if (c.engine_running) ids.push_back(c.request_id);
        c.engine_running = false;
      }
    }
    for (const std::string& id : ids) shared_->controller->Cancel(id, reason);
  }

  // --- answers

  void Fail(Response response, int status) {
    shared_->metrics.CountRequest(endpoint(), status);
    finished_ = true;
    writer_->Send(std::move(response));
  }
  void FailStatus(const Status& status) {
    Response r = OpenAiErrorResponse(status);
    const int code = r.status;
    Fail(std::move(r), code);
  }

  json UsageJson() const {
    uint32_t completion = 0, reasoning = 0, cached = 0;
    for (const Choice& c : choices_) {
      completion += CompletionTokens(c);
      if (c.stream) reasoning += c.stream->reasoning_tokens();
      cached = std::max(cached, c.cached_prompt_tokens);
    }
    json usage = {{"prompt_tokens", prompt_tokens_},
                  {"completion_tokens", completion},
                  {"total_tokens", prompt_tokens_ + completion},
                  {"prompt_tokens_details", {{"cached_tokens", cached}}}};
    if (kind_ == Kind::kChat) {
      usage["completion_tokens_details"] = {{"reasoning_tokens", reasoning}};
    }
    return usage;
  }

  static uint32_t CompletionTokens(const Choice& c) {
    const bool by_string = c.stream && c.stream->stopped();
    if (!by_string && c.engine_completion_tokens > 0) return c.engine_completion_tokens;
    return c.stream ? c.stream->tokens() : static_cast<uint32_t>(c.token_ids.size());
  }

  json ChunkBase() const {
    return {{"id", id_},
            {"object", kind_ == Kind::kChat ? "chat.completion.chunk" : "text_completion"},
            {"created", created_},
            {"model", model_}};
  }

  void WriteEvent(const json& body) {
    writer_->Write(http::SseEvent(body.dump(-1, ' ', false, json::error_handler_t::replace)));
  }

  void StartStreamLocked() {
    if (stream_started_) return;
    stream_started_ = true;
    shared_->metrics.CountRequest(endpoint(), 200);
    writer_->StartStream(200, http::SseHeaders());
    if (kind_ != Kind::kChat) {
      if (!completion_->echo) return;
      for (size_t i = 0; i < choices_.size(); ++i) {
        json chunk = ChunkBase();
        chunk["choices"] = json::array({{{"index", i},
                                         {"text", echo_text_[choices_[i].prompt_index]},
                                         {"logprobs", nullptr},
                                         {"finish_reason", nullptr}}});
        WriteEvent(chunk);
      }
      return;
    }
    for (size_t i = 0; i < choices_.size(); ++i) {
      json chunk = ChunkBase();
      chunk["choices"] = json::array({{{"index", i},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
      WriteEvent(chunk);
    }
  }

  static json ToolCallDeltasJson(const std::vector<chat::ToolCallDelta>& calls) {
    json out = json::array();
    for (const chat::ToolCallDelta& d : calls) {
      json item = {{"index", d.index}};
      json function = {{"arguments", d.arguments}};
      if (!d.id.empty()) {
        item["id"] = d.id;
        item["type"] = "function";
        function["name"] = d.name;
      }
      item["function"] = function;
      out.push_back(std::move(item));
    }
    return out;
  }

  // Streams (or accumulates) one piece of choice `index`; `finish` non-empty ends the choice.
  void EmitLocked(size_t index, ChoicePiece piece, const std::vector<int32_t>& token_ids,
                  const std::string& finish) {
    Choice& c = choices_[index];
    for (auto& lp : piece.logprobs) c.pending_logprobs.push_back(std::move(lp));
    if (!sampling_.stream) {
      c.text += piece.text;
      c.reasoning += piece.delta.reasoning_content;
      c.content += piece.delta.content;
      for (const chat::ToolCallDelta& d : piece.delta.tool_calls) {
        if (d.index >= static_cast<int>(c.tool_calls.size())) {
          c.tool_calls.resize(static_cast<size_t>(d.index) + 1);
        }
        chat::ParsedToolCall& call = c.tool_calls[static_cast<size_t>(d.index)];
        if (!d.id.empty()) call.id = d.id;
        if (!d.name.empty()) call.name = d.name;
        call.arguments += d.arguments;
      }
      for (auto& lp : c.pending_logprobs) c.logprobs.push_back(std::move(lp));
      c.pending_logprobs.clear();
      c.token_ids.insert(c.token_ids.end(), token_ids.begin(), token_ids.end());
      return;
    }
    StartStreamLocked();
    json choice = {{"index", index}};
    if (kind_ == Kind::kChat) {
      json delta = json::object();
      if (!piece.delta.reasoning_content.empty()) {
        delta["reasoning_content"] = piece.delta.reasoning_content;
      }
      if (!piece.delta.content.empty()) delta["content"] = piece.delta.content;
      if (!piece.delta.tool_calls.empty()) {
        delta["tool_calls"] = ToolCallDeltasJson(piece.delta.tool_calls);
      }
      if (delta.empty() && finish.empty()) return;  // nothing to say yet (logprobs wait)
      choice["delta"] = delta;
      choice["logprobs"] = c.pending_logprobs.empty() || !sampling_.logprobs
                               ? json(nullptr)
                               : ChatLogprobsJson(c.pending_logprobs);
    } else {
      if (piece.text.empty() && token_ids.empty() && finish.empty()) return;
      choice["text"] = piece.text;
      choice["logprobs"] = c.pending_logprobs.empty() || !sampling_.logprobs
                               ? json(nullptr)
                               : CompletionLogprobsJson(c.pending_logprobs, &c.text_offset);
      choice["token_ids"] = token_ids;
    }
    c.pending_logprobs.clear();
    choice["finish_reason"] = finish.empty() ? json(nullptr) : json(finish);
    json chunk = ChunkBase();
    chunk["choices"] = json::array({choice});
    WriteEvent(chunk);
  }

  void OnChunk(size_t index, Result<spark::v1::TokenChunk> chunk) {
    std::vector<std::string> cancel;
    {
      std::lock_guard<std::mutex> lock(mu_);
      Choice& c = choices_[index];
      if (c.done || finished_) return;
      if (!chunk.ok()) {
        c.engine_running = false;
        FailLocked(chunk.status(), &cancel);
      } else if (chunk->finish_reason() == spark::v1::FINISH_REASON_ERROR) {
        c.engine_running = false;
        FailLocked(Internal("generation failed: " + chunk->error_message()), &cancel);
      } else {
        OnTokensLocked(index, *chunk, &cancel);
      }
    }
    for (const std::string& id : cancel) {
      shared_->controller->Cancel(id, "the request ended");
    }
  }

  void OnTokensLocked(size_t index, const spark::v1::TokenChunk& chunk,
                      std::vector<std::string>* cancel) {
    Choice& c = choices_[index];
    const auto now = std::chrono::steady_clock::now();
    const int tokens = chunk.token_ids_size();
    if (tokens > 0) {
      if (!counted_first_token_) {
        counted_first_token_ = true;
        shared_->metrics.AddQueued(-1);
        shared_->metrics.AddRunning(1);
        shared_->metrics.ObserveTimeToFirstToken(SecondsBetween(arrival_, now));
      }
      if (c.last_token) {
        const double gap = SecondsBetween(*c.last_token, now) / tokens;
        for (int i = 0; i < tokens; ++i) shared_->metrics.ObserveInterTokenLatency(gap);
      }
      c.last_token = now;
    }
    const bool final = IsFinalChunk(chunk);
    if (final) {
      c.engine_running = false;
      c.engine_completion_tokens = chunk.usage().completion_tokens();
      c.cached_prompt_tokens = chunk.usage().cached_prompt_tokens();
      if (chunk.finish_reason() == spark::v1::FINISH_REASON_CANCELLED) {
        FailLocked(Unavailable("the engine cancelled the request (the model is shutting down); "
                               "retry"),
                   cancel);
        return;
      }
    }
    std::vector<int32_t> ids(chunk.token_ids().begin(), chunk.token_ids().end());
    ChoicePiece piece;
    if (c.stream) piece = c.stream->Feed(chunk);
    const bool stopped = c.stream && c.stream->stopped();
    if (!final && !stopped) {
      EmitLocked(index, std::move(piece), ids, "");
      return;
    }
    if (stopped && c.engine_running) {
      cancel->push_back(c.request_id);
      c.engine_running = false;
    }
    if (c.stream) {
      ChoicePiece tail = c.stream->Finish();
      piece.text += tail.text;
      piece.delta.reasoning_content += tail.delta.reasoning_content;
      piece.delta.content += tail.delta.content;
      for (auto& d : tail.delta.tool_calls) piece.delta.tool_calls.push_back(std::move(d));
    }
    std::string finish = "stop";
    if (!stopped && chunk.finish_reason() == spark::v1::FINISH_REASON_LENGTH) finish = "length";
    if (finish == "stop" && c.stream && c.stream->saw_tool_call()) finish = "tool_calls";
    c.finish_reason = finish;
    EmitLocked(index, std::move(piece), ids, finish);
    c.done = true;
    if (--remaining_ == 0) CompleteLocked();
  }

  void FailLocked(const Status& status, std::vector<std::string>* cancel) {
    for (Choice& other : choices_) {
      if (other.engine_running) cancel->push_back(other.request_id);
      other.engine_running = false;
      other.done = true;
    }
    if (writer_->IsClosed()) {  // the client went away: nobody to tell
      finished_ = true;
      if (counted_first_token_) shared_->metrics.AddRunning(-1);
      shared_->metrics.CountRequest(endpoint(), 499);
      return;
    }
    if (stream_started_) {
      writer_->Write(http::SseEvent(OpenAiErrorEventJson(status)));
      writer_->Write(http::SseEvent("[DONE]"));
      writer_->End();
      finished_ = true;
      if (counted_first_token_) shared_->metrics.AddRunning(-1);
      return;
    }
    Response r = OpenAiErrorResponse(status);
    const int code = r.status;
    if (counted_first_token_) shared_->metrics.AddRunning(-1);
    Fail(std::move(r), code);
  }

  void CompleteLocked() {
    finished_ = true;
    if (counted_first_token_) shared_->metrics.AddRunning(-1);
    shared_->metrics.AddPromptTokens(prompt_tokens_);
    uint32_t completion = 0;
    for (const Choice& c : choices_) completion += CompletionTokens(c);
    shared_->metrics.AddCompletionTokens(completion);
    if (chat_ && chat_->json_object) CheckJsonObjects();
    if (sampling_.stream) {
      StartStreamLocked();
      if (sampling_.include_usage) {
        json chunk = ChunkBase();
        chunk["choices"] = json::array();
        chunk["usage"] = UsageJson();
        WriteEvent(chunk);
      }
      writer_->Write(http::SseEvent("[DONE]"));
      writer_->End();
      return;
    }
    json body = {{"id", id_},
                 {"object", kind_ == Kind::kChat ? "chat.completion" : "text_completion"},
                 {"created", created_},
                 {"model", model_}};
    json choices = json::array();
    for (size_t i = 0; i < choices_.size(); ++i) {
      Choice& c = choices_[i];
      json choice = {{"index", i}, {"finish_reason", c.finish_reason}};
      if (kind_ == Kind::kChat) {
        json message = {{"role", "assistant"}};
        message["content"] =
            c.content.empty() && !c.tool_calls.empty() ? json(nullptr) : json(c.content);
        if (!c.reasoning.empty()) message["reasoning_content"] = c.reasoning;
        if (!c.tool_calls.empty()) {
          json calls = json::array();
          for (const chat::ParsedToolCall& call : c.tool_calls) {
            calls.push_back({{"id", call.id},
                             {"type", "function"},
                             {"function", {{"name", call.name}, {"arguments", call.arguments}}}});
          }
          message["tool_calls"] = calls;
        }
        choice["message"] = message;
        choice["logprobs"] = sampling_.logprobs ? ChatLogprobsJson(c.logprobs) : json(nullptr);
      } else {
        std::string text = c.text;
        std::vector<TokenLogprobInfo> logprobs;
        if (completion_->echo) {
          text = echo_text_[c.prompt_index] + text;
          if (sampling_.logprobs && c.stream) {
            for (int32_t id : prompts_[c.prompt_index]) {
              logprobs.push_back(c.stream->Describe(id, std::nullopt));
            }
          }
        }
        for (auto& lp : c.logprobs) logprobs.push_back(std::move(lp));
        size_t offset = 0;
        choice["text"] = text;
        choice["logprobs"] =
            sampling_.logprobs ? CompletionLogprobsJson(logprobs, &offset) : json(nullptr);
        choice["token_ids"] = c.token_ids;
      }
      choices.push_back(std::move(choice));
    }
    body["choices"] = choices;
    body["usage"] = UsageJson();
    shared_->metrics.CountRequest(endpoint(), 200);
    writer_->Send(http::JsonResponse(200, body));
  }

  void CheckJsonObjects() {
    for (const Choice& c : choices_) {
      json parsed = json::parse(c.content, nullptr, /*allow_exceptions=*/false);
      if (!sampling_.stream && (parsed.is_discarded() || !parsed.is_object())) {
        SPARK_LOG(INFO).With("request", c.request_id).With("model", model_)
            << "response_format json_object: the output is not a JSON object (no constrained "
               "decoding)";
      }
    }
  }

  std::shared_ptr<OpenAiService::Shared> shared_;
  std::shared_ptr<ResponseWriter> writer_;
  Kind kind_;
  SteadyTime arrival_;
  int64_t created_;
  std::string id_;
  std::string model_;
  SamplingOptions sampling_;
  std::optional<ChatRequest> chat_;
  std::optional<TextCompletionRequest> completion_;
  std::shared_ptr<const ModelText> text_;
  std::optional<chat::ChatOutputOptions> chat_output_;
  std::vector<std::vector<int32_t>> prompts_;
  std::vector<std::string> echo_text_;
  uint32_t prompt_tokens_ = 0;

  std::mutex mu_;
  std::vector<Choice> choices_;
  size_t remaining_ = 0;
  bool stream_started_ = false;
  bool counted_first_token_ = false;
  bool finished_ = false;
};

}  // namespace

OpenAiService::OpenAiService(Controller& controller, OpenAiOptions options, ApiAuth auth)
    : shared_(std::make_shared<Shared>()) {
  shared_->controller = &controller;
  shared_->options = std::move(options);
  shared_->auth = std::move(auth);
  shared_->pool = std::make_unique<asio::thread_pool>(std::max(1, shared_->options.worker_threads));
}

OpenAiService::~OpenAiService() {
  std::unique_ptr<asio::thread_pool> pool;
  {
    std::lock_guard<std::mutex> lock(shared_->pool_mu);
    pool = std::move(shared_->pool);
  }
  if (pool) {
    pool->stop();
    pool->join();
  }
}

OpenAiMetrics& OpenAiService::metrics() { return shared_->metrics; }

Status OpenAiService::AddRoutes(http::HttpServer& server) {
  std::shared_ptr<Shared> s = shared_;
  const size_t body_limit = s->options.limits.max_body_bytes;

  auto guarded = [s](const char* endpoint, http::AsyncHandler handler) -> http::AsyncHandler {
    return [s, endpoint, handler = std::move(handler)](const Request& r,
                                                       std::shared_ptr<ResponseWriter> w) {
      if (std::optional<Response> denied = s->auth.CheckInference(r)) {
        s->metrics.CountRequest(endpoint, denied->status);
        w->Send(std::move(*denied));
        return;
      }
      handler(r, std::move(w));
    };
  };

  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kGet, "/v1/models",
                      guarded("/v1/models", [s](const Request&, std::shared_ptr<ResponseWriter> w) {
                        s->controller->ListDeployments([s, w](std::vector<DeploymentView> views) {
                          json data = json::array();
                          for (const DeploymentView& v : views) {
                            if (v.serving && !v.record.deleted) {
                              data.push_back(ModelJson(v.record.name, v.record.created_at_ms));
                            }
                          }
                          s->metrics.CountRequest("/v1/models", 200);
                          w->Send(http::JsonResponse(200, {{"object", "list"}, {"data", data}}));
                        });
                      })));

  SPARK_RETURN_IF_ERROR(server.AddAsync(
      Method::kGet, "/v1/models/{id}",
      guarded("/v1/models/{id}", [s](const Request& r, std::shared_ptr<ResponseWriter> w) {
        const std::string name = r.Param("id");
        s->controller->GetServingModel(name, [s, w, name](Result<ServingModelView> view) {
          if (!view.ok()) {
            s->metrics.CountRequest("/v1/models/{id}", 404);
            w->Send(OpenAiErrorResponse(
                404, "the model \"" + name + "\" does not exist; GET /v1/models lists the models",
                "invalid_request_error", std::string("model"), "model_not_found"));
            return;
          }
          s->metrics.CountRequest("/v1/models/{id}", 200);
          w->Send(http::JsonResponse(200, ModelJson(view->name, view->created_at_ms)));
        });
      })));

  auto inference = [s](Exchange::Kind kind) -> http::AsyncHandler {
    return [s, kind](const Request& r, std::shared_ptr<ResponseWriter> w) {
      const char* endpoint = kind == Exchange::Kind::kChat ? kChatEndpoint : kCompletionsEndpoint;
      auto reject = [&](const Status& st) {
        Response response = OpenAiErrorResponse(st);
        s->metrics.CountRequest(endpoint, response.status);
        w->Send(std::move(response));
      };
      Result<engine::chat::Json> body = ParseRequestBody(r.body);
      if (!body.ok()) return reject(body.status());
      if (kind == Exchange::Kind::kChat) {
        Result<ChatRequest> request = ParseChatRequest(*body, s->options.limits);
        if (!request.ok()) return reject(request.status());
        auto exchange = std::make_shared<Exchange>(s, w, kind);
        exchange->StartChat(std::move(*request));
      } else {
        Result<TextCompletionRequest> request =
            ParseTextCompletionRequest(*body, s->options.limits);
        if (!request.ok()) return reject(request.status());
        auto exchange = std::make_shared<Exchange>(s, w, kind);
        exchange->StartCompletion(std::move(*request));
      }
    };
  };
  SPARK_RETURN_IF_ERROR(server.AddAsync(Method::kPost, kChatEndpoint,
                                        guarded(kChatEndpoint, inference(Exchange::Kind::kChat)),
                                        {.max_body_bytes = body_limit}));
  SPARK_RETURN_IF_ERROR(
      server.AddAsync(Method::kPost, kCompletionsEndpoint,
                      guarded(kCompletionsEndpoint, inference(Exchange::Kind::kCompletion)),
                      {.max_body_bytes = body_limit}));

  SPARK_RETURN_IF_ERROR(server.AddAsync(
      Method::kGet, "/metrics",
      guarded("/metrics", [s](const Request&, std::shared_ptr<ResponseWriter> w) {
        s->controller->ListDeployments([s, w](std::vector<DeploymentView> views) {
          Response response;
          response.status = 200;
          response.headers.emplace_back("Content-Type", "text/plain; version=0.0.4; charset=utf-8");
          response.body = s->metrics.Render(views);
          w->Send(std::move(response));
        });
      })));
  return Status::Ok();
}

}  // namespace spark::controller
