// The OpenAI-compatible endpoints on a real HTTP server and a real Controller, with a fake agent
// (which sends the tiny model's real tokenizer files) and a scripted rank-0 data plane.
#include "controller/openai_api.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "common/check.h"
#include "common/clock.h"
#include "controller/http/client.h"
#include "controller/http/server.h"
#include "controller/rest_api.h"
#include "controller/sparkctl.h"
#include "engine/model/tiny_model.h"
#include "engine/text/chat/chat_template.h"
#include "engine/text/tokenizer.h"
#include "proto/framing.h"
#include "tests/controller/core/fakes.h"

namespace spark::controller {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using testing::FakeAgent;
using ::testing::HasSubstr;
using testing::TempDir;
using Envelope = spark::v1::Envelope;
using Chunks = std::vector<spark::v1::TokenChunk>;

// A rank-0 data plane that answers each GenerateRequest with the chunks a script returns; an
// empty script answer holds the request until it is cancelled (then a CANCELLED chunk).
class ScriptedDataPlane {
 public:
  using Script = std::function<Chunks(const spark::v1::GenerateRequest&)>;

  explicit ScriptedDataPlane(ZmqContext& context)
      : socket_(*ZmqSocket::Create(context, ZmqSocketType::kRouter)) {
    SPARK_CHECK(socket_.Bind("tcp://127.0.0.1:*").ok());
    endpoint_ = *socket_.LastEndpoint();
    thread_ = std::thread([this] { Run(); });
  }
  ~ScriptedDataPlane() {
    stop_ = true;
    thread_.join();
  }
  const std::string& endpoint() const { return endpoint_; }
  void set_script(Script script) {
    std::lock_guard<std::mutex> lock(mu_);
    script_ = std::move(script);
  }
  std::vector<spark::v1::GenerateRequest> requests() const {
    std::lock_guard<std::mutex> lock(mu_);
    return requests_;
  }
  std::vector<std::string> cancels() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cancels_;
  }
  bool WaitForCancels(size_t n, milliseconds timeout) const {
    const auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      if (cancels().size() >= n) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return false;
  }

 private:
  void Run() {
    while (!stop_) {
      Result<ZmqMessage> message = socket_.Recv(milliseconds(20));
      if (!message.ok() || message->size() != 2) continue;
      Result<Envelope> envelope = proto::DecodeEnvelope((*message)[1]);
      if (!envelope.ok()) continue;
      auto reply = [&](spark::v1::TokenChunk chunk) {
        Envelope out;
        out.set_sender_id("shard");
        out.set_generation(envelope->generation());
        *out.mutable_token_chunk() = std::move(chunk);
        socket_.Send({(*message)[0], proto::EncodeEnvelope(out)}).IgnoreError();
      };
      if (envelope->has_cancel_request()) {
        const std::string id = envelope->cancel_request().request_id();
        {
          std::lock_guard<std::mutex> lock(mu_);
          cancels_.push_back(id);
        }
        spark::v1::TokenChunk done;
        done.set_request_id(id);
        done.set_finish_reason(spark::v1::FINISH_REASON_CANCELLED);
        reply(done);
        continue;
      }
      if (!envelope->has_generate_request()) continue;
      const spark::v1::GenerateRequest& request = envelope->generate_request();
      Script script;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (request.request_id().starts_with("chatcmpl-") ||
            request.request_id().starts_with("cmpl-")) {
          requests_.push_back(request);
        }
        script = script_;
      }
      for (spark::v1::TokenChunk chunk : script(request)) {
        chunk.set_request_id(request.request_id());
        reply(std::move(chunk));
      }
    }
  }

  ZmqSocket socket_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  // The controller's first-generation probe is answered by the default script.
  Script script_ = [](const spark::v1::GenerateRequest&) {
    spark::v1::TokenChunk c;
    c.add_token_ids(1);
    c.set_finish_reason(spark::v1::FINISH_REASON_LENGTH);
    return Chunks{c};
  };
  std::vector<spark::v1::GenerateRequest> requests_;
  std::vector<std::string> cancels_;
  std::thread thread_;
};

spark::v1::TokenChunk Tokens(const std::vector<int32_t>& ids, bool last = false) {
  spark::v1::TokenChunk c;
  for (int32_t id : ids) c.add_token_ids(id);
  c.set_finish_reason(last ? spark::v1::FINISH_REASON_STOP : spark::v1::FINISH_REASON_NONE);
  return c;
}

class OpenAiApiTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(engine::WriteTinyModel(model_dir_.path(), {}).ok());
    auto tokenizer = engine::Tokenizer::FromFile(model_dir_.path() / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok());
    tokenizer_ = std::move(*tokenizer);
    Start(ApiAuth{});
  }

  void Start(ApiAuth auth, OpenAiOptions options = {}) {
    Stop();
    store::StoreOptions store_options;
    store_options.path = dir_.File("controller-" + std::to_string(++starts_) + ".db");
    auto store = store::Store::Open(store_options, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ControllerOptions controller_options;
    controller_options.agent_listen = "tcp://127.0.0.1:*";
    controller_options.insecure = true;
    controller_options.max_poll_wait = milliseconds(5);
    controller_ = std::make_unique<Controller>(controller_options, *store_, clock_);
    ASSERT_TRUE(controller_->Start().ok());
    options.limits.max_tokens = 100;
    options.limits.max_messages = 8;
    options.limits.max_body_bytes = 64 * 1024;
    openai_ = std::make_unique<OpenAiService>(*controller_, options, auth);
    server_ = std::make_unique<http::HttpServer>(http::HttpServerOptions{});
    ASSERT_TRUE(AddRestRoutes(*server_, *controller_, *store_, auth).ok());
    ASSERT_TRUE(openai_->AddRoutes(*server_).ok());
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
    client_.emplace(*http::HttpClient::Create(url_));
  }

  void Stop() {
    client_.reset();
    if (server_) server_->Stop();
    agent_.reset();
    controller_.reset();
    openai_.reset();
    server_.reset();
  }
  void TearDown() override { Stop(); }

  // Deploys "m" (tp 1) on a fake agent, makes it ready and sends the tokenizer files.
  void MakeReady(const http::Headers& admin = {}, std::function<void()> before_ready = {}) {
    agent_ = std::make_unique<FakeAgent>(context_, "a", controller_->agent_endpoint());
    ASSERT_TRUE(agent_->Register());
    auto deployed = client_->Send(http::Method::kPost, "/api/v1/models",
                                  json{{"name", "m"}, {"path", "/tiny"}, {"tp", 1}}.dump(), admin);
    ASSERT_TRUE(deployed.ok());
    ASSERT_EQ(deployed->status, 202) << deployed->body;
    auto assignment = agent_->WaitFor(Envelope::kShardAssignment);
    ASSERT_TRUE(assignment);
    const spark::v1::ShardAssignment& a = assignment->shard_assignment();
    assignment_ = a;
    Envelope files;
    spark::v1::TokenizerFiles* f = files.mutable_tokenizer_files();
    f->set_deployment("m");
    f->set_run_id(a.run_id());
    f->set_generation(a.generation());
    for (const char* name : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
      std::ifstream in(model_dir_.path() / name, std::ios::binary);
      std::stringstream text;
      text << in.rdbuf();
      spark::v1::TokenizerFile* file = f->add_files();
      file->set_name(name);
      file->set_content(text.str());
    }
    agent_->Send(files, a.generation());
    if (before_ready) before_ready();
    agent_->Status(a, spark::v1::SHARD_PHASE_READY, data_.endpoint());
    for (int i = 0; i < 400; ++i) {
      auto models = client_->Get("/v1/models", admin);
      if (models.ok() && models->status == 200 && !json::parse(models->body)["data"].empty()) {
        return;
      }
      std::this_thread::sleep_for(milliseconds(10));
    }
    FAIL() << "model m did not become ready";
  }

  std::vector<int32_t> Encode(const std::string& text) const { return tokenizer_->Encode(text); }
  int32_t Id(const std::string& token) const { return *tokenizer_->TokenToId(token); }

  http::ClientResponse Post(const std::string& target, const json& body,
                            const http::Headers& headers = {}) {
    auto r = client_->Post(target, body, headers);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : http::ClientResponse{};
  }
  // The data lines of an SSE stream (without "data: "), checking the event framing.
  std::vector<std::string> Stream(const std::string& target, const json& body) {
    std::vector<std::string> events;
    std::string previous = "";
    auto r =
        client_->Stream(http::Method::kPost, target, body.dump(), {}, [&](std::string_view line) {
          if (line.empty()) {
            EXPECT_TRUE(previous.starts_with("data: ")) << previous;
          } else {
            EXPECT_TRUE(line.starts_with("data: ")) << line;
            EXPECT_TRUE(previous.empty()) << "one data line per event";
            events.emplace_back(line.substr(6));
          }
          previous = std::string(line);
          return true;
        });
    EXPECT_TRUE(r.ok());
    if (r.ok()) {
      EXPECT_EQ(r->status, 200) << r->body;
      const std::string* type = r->Header("Content-Type");
      EXPECT_TRUE(type != nullptr && type->starts_with("text/event-stream"));
    }
    return events;
  }
  static void ExpectError(const http::ClientResponse& r, int status, const std::string& param,
                          const std::string& text) {
    EXPECT_EQ(r.status, status) << r.body;
    json body = json::parse(r.body, nullptr, false);
    ASSERT_TRUE(body.is_object() && body.contains("error")) << r.body;
    const json& e = body["error"];
    EXPECT_TRUE(e["message"].is_string() && e["type"].is_string() && e.contains("param") &&
                e.contains("code"))
        << r.body;
    if (param.empty()) {
      EXPECT_TRUE(e["param"].is_null()) << r.body;
    } else {
      EXPECT_EQ(e["param"], param) << r.body;
    }
    EXPECT_THAT(e["message"].get<std::string>(), HasSubstr(text));
  }

  ManualClock clock_;
  TempDir dir_;
  TempDir model_dir_;
  std::unique_ptr<engine::Tokenizer> tokenizer_;
  ZmqContext context_;
  ScriptedDataPlane data_{context_};
  int starts_ = 0;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<OpenAiService> openai_;
  std::unique_ptr<http::HttpServer> server_;
  std::unique_ptr<FakeAgent> agent_;
  spark::v1::ShardAssignment assignment_;
  std::optional<http::HttpClient> client_;
  std::string url_;
};

TEST_F(OpenAiApiTest, ModelsAndNotReady) {
  auto early = Post("/v1/chat/completions",
                    {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "hi"}}}}});
  ExpectError(early, 404, "model", "does not exist");
  MakeReady();
  json models = json::parse(client_->Get("/v1/models")->body);
  EXPECT_EQ(models["object"], "list");
  ASSERT_EQ(models["data"].size(), 1u);
  EXPECT_EQ(models["data"][0]["id"], "m");
  EXPECT_EQ(models["data"][0]["object"], "model");
  EXPECT_EQ(models["data"][0]["owned_by"], "spark");
  EXPECT_EQ(json::parse(client_->Get("/v1/models/m")->body)["id"], "m");
  ExpectError(*client_->Get("/v1/models/nope"), 404, "model", "does not exist");
  ExpectError(*client_->Get("/v1/nothing"), 404, "", "");
}

TEST_F(OpenAiApiTest, NonStreamingChatWithReasoning) {
  MakeReady();
  // GLM-4.5 template (chosen from the tiny tokenizer's tokens) with thinking on: the output
  // starts inside the think block.
  std::vector<int32_t> out = Encode("Let me think");
  const size_t reasoning_tokens = out.size();
  out.push_back(Id("</think>"));
  for (int32_t id : Encode("Hello there")) out.push_back(id);
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    Chunks chunks;
    for (size_t i = 0; i < out.size(); ++i) chunks.push_back(Tokens({out[i]}));
    spark::v1::TokenChunk last = Tokens({Id("<|user|>")}, true);
    last.mutable_usage()->set_completion_tokens(static_cast<uint32_t>(out.size() + 1));
    chunks.push_back(last);
    return chunks;
  });
  json messages = {{{"role", "system"}, {"content", "Be brief."}},
                   {{"role", "user"}, {"content", {{{"type", "text"}, {"text", "Hi"}}}}}};
  auto r = Post("/v1/chat/completions", {{"model", "m"},
                                         {"messages", messages},
                                         {"max_completion_tokens", 50},
                                         {"temperature", 0.5},
                                         {"top_k", 5},
                                         {"min_p", 0.1},
                                         {"presence_penalty", 0.5},
                                         {"frequency_penalty", -0.5},
                                         {"seed", 3}});
  ASSERT_EQ(r.status, 200) << r.body;
  json body = json::parse(r.body);
  EXPECT_EQ(body["object"], "chat.completion");
  EXPECT_THAT(body["id"].get<std::string>(), ::testing::StartsWith("chatcmpl-"));
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["message"]["reasoning_content"], "Let me think");
  EXPECT_EQ(choice["message"]["content"], "Hello there");
  EXPECT_EQ(choice["finish_reason"], "stop");
  EXPECT_TRUE(choice["logprobs"].is_null());

  // The prompt is the native GLM-4.5 render of the conversation, tokenized.
  auto parsed = engine::chat::ParseChatMessages(engine::chat::Json::parse(messages.dump()));
  ASSERT_TRUE(parsed.ok());
  auto prompt =
      engine::chat::RenderChat(engine::chat::ChatTemplateKind::kGlm45, *parsed, {}, {}, true);
  ASSERT_TRUE(prompt.ok());
  const std::vector<spark::v1::GenerateRequest> sent = data_.requests();
  ASSERT_EQ(sent.size(), 1u);
  EXPECT_EQ(
      std::vector<int32_t>(sent[0].prompt_token_ids().begin(), sent[0].prompt_token_ids().end()),
      Encode(*prompt));
  const spark::v1::SamplingParams& s = sent[0].sampling();
  EXPECT_EQ(s.max_tokens(), 50u);
  EXPECT_FLOAT_EQ(s.temperature(), 0.5f);
  EXPECT_EQ(s.top_k(), 5);
  EXPECT_FLOAT_EQ(s.min_p(), 0.1f);
  EXPECT_FLOAT_EQ(s.presence_penalty(), 0.5f);
  EXPECT_FLOAT_EQ(s.frequency_penalty(), -0.5f);
  EXPECT_EQ(s.seed(), 3u);
  // generation_config.json's EOS ids end the generation.
  std::vector<int32_t> stops(s.stop_token_ids().begin(), s.stop_token_ids().end());
  EXPECT_THAT(
      stops, ::testing::IsSupersetOf({Id("<|endoftext|>"), Id("<|user|>"), Id("<|observation|>")}));

  EXPECT_EQ(body["usage"]["prompt_tokens"], sent[0].prompt_token_ids_size());
  EXPECT_EQ(body["usage"]["completion_tokens"], out.size() + 1);
  EXPECT_EQ(body["usage"]["total_tokens"], sent[0].prompt_token_ids_size() + out.size() + 1);
  const int reasoning = body["usage"]["completion_tokens_details"]["reasoning_tokens"];
  EXPECT_GE(reasoning, static_cast<int>(reasoning_tokens));
  EXPECT_LE(reasoning, static_cast<int>(reasoning_tokens) + 2);
}

TEST_F(OpenAiApiTest, StreamedChatSplitsReasoningAndToolCallAcrossTokens) {
  MakeReady();
  // Reasoning, then a tool call that starts before </think>; one token per chunk, and the
  // argument value cut into single characters.
  std::vector<int32_t> out = Encode("Need weather");
  out.push_back(Id("<tool_call>"));
  for (int32_t id : Encode("get_weather\n")) out.push_back(id);
  out.push_back(Id("<arg_key>"));
  for (int32_t id : Encode("city")) out.push_back(id);
  out.push_back(Id("</arg_key>"));
  for (int32_t id : Encode("\n")) out.push_back(id);
  out.push_back(Id("<arg_value>"));
  for (char ch : std::string("Paris")) out.push_back(Id(std::string(1, ch)));
  out.push_back(Id("</arg_value>"));
  for (int32_t id : Encode("\n")) out.push_back(id);
  out.push_back(Id("</tool_call>"));
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    Chunks chunks;
    for (int32_t id : out) chunks.push_back(Tokens({id}));
    chunks.push_back(Tokens({Id("<|observation|>")}, true));
    return chunks;
  });
  json tools = {
      {{"type", "function"},
       {"function",
        {{"name", "get_weather"},
         {"parameters", {{"type", "object"}, {"properties", {{"city", {{"type", "string"}}}}}}}}}}};
  std::vector<std::string> events = Stream(
      "/v1/chat/completions", {{"model", "m"},
                               {"messages", {{{"role", "user"}, {"content", "Weather in Paris?"}}}},
                               {"tools", tools},
                               {"stream", true},
                               {"stream_options", {{"include_usage", true}}}});
  ASSERT_GE(events.size(), 4u);
  EXPECT_EQ(events.back(), "[DONE]");
  json first = json::parse(events[0]);
  EXPECT_EQ(first["object"], "chat.completion.chunk");
  EXPECT_EQ(first["choices"][0]["delta"]["role"], "assistant");
  std::string reasoning, content, arguments, call_id, name;
  std::string finish;
  json usage;
  for (size_t i = 1; i + 1 < events.size(); ++i) {
    json chunk = json::parse(events[i]);
    EXPECT_EQ(chunk["id"], first["id"]);
    if (chunk.contains("usage")) {
      EXPECT_TRUE(chunk["choices"].empty());
      usage = chunk["usage"];
      continue;
    }
    const json& c = chunk["choices"][0];
    const json& delta = c["delta"];
    if (delta.contains("reasoning_content")) reasoning += delta["reasoning_content"];
    if (delta.contains("content")) content += delta["content"];
    if (delta.contains("tool_calls")) {
      for (const json& call : delta["tool_calls"]) {
        EXPECT_EQ(call["index"], 0);
        if (call.contains("id")) {
          EXPECT_TRUE(call_id.empty()) << "id only in the first delta of a call";
          call_id = call["id"];
          name = call["function"]["name"];
          EXPECT_EQ(call["type"], "function");
        }
        arguments += call["function"]["arguments"].get<std::string>();
      }
    }
    if (!c["finish_reason"].is_null()) finish = c["finish_reason"];
  }
  EXPECT_EQ(reasoning, "Need weather");
  EXPECT_EQ(content, "");
  EXPECT_THAT(call_id, ::testing::StartsWith("call_"));
  EXPECT_EQ(name, "get_weather");
  EXPECT_EQ(json::parse(arguments), json({{"city", "Paris"}}));
  EXPECT_EQ(finish, "tool_calls");
  ASSERT_TRUE(usage.is_object());
  EXPECT_EQ(usage["completion_tokens"], out.size() + 1);
  EXPECT_GT(usage["completion_tokens_details"]["reasoning_tokens"].get<int>(), 0);
}

TEST_F(OpenAiApiTest, StopStringSplitAcrossTokensIsNeverLeakedAndCancelsTheEngine) {
  MakeReady();
  std::vector<int32_t> out;
  for (char ch : std::string("HiENxENDtail")) out.push_back(Id(std::string(1, ch)));
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    Chunks chunks;
    for (int32_t id : out) chunks.push_back(Tokens({id}));
    return chunks;  // never finishes on its own: the stop string must end it
  });
  json request = {{"model", "m"},
                  {"messages", {{{"role", "user"}, {"content", "x"}}}},
                  {"chat_template_kwargs", {{"enable_thinking", false}}},
                  {"stop", {"END", "never"}}};
  auto r = Post("/v1/chat/completions", request);
  ASSERT_EQ(r.status, 200) << r.body;
  json body = json::parse(r.body);
  EXPECT_EQ(body["choices"][0]["message"]["content"], "HiENx");
  EXPECT_EQ(body["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(body["usage"]["completion_tokens"], 8);
  ASSERT_TRUE(data_.WaitForCancels(1, milliseconds(2000)));

  request["stream"] = true;
  std::vector<std::string> events = Stream("/v1/chat/completions", request);
  std::string content;
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    json chunk = json::parse(e);
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) content += delta["content"];
  }
  EXPECT_EQ(content, "HiENx");
  EXPECT_EQ(events.back(), "[DONE]");
  EXPECT_TRUE(data_.WaitForCancels(2, milliseconds(2000)));
}

TEST_F(OpenAiApiTest, FanOutLogprobsAndCompletions) {
  MakeReady();
  data_.set_script([&](const spark::v1::GenerateRequest& g) {
    Chunks chunks;
    spark::v1::TokenChunk c = Tokens({Id("O"), Id("K")}, true);
    c.mutable_usage()->set_completion_tokens(2);
    c.mutable_usage()->set_prompt_tokens(static_cast<uint32_t>(g.prompt_token_ids_size()));
    if (g.sampling().logprobs()) {
      for (const char* t : {"O", "K"}) {
        spark::v1::TokenLogprob* lp = c.add_logprobs();
        lp->set_logprob(-0.5f);
        for (uint32_t k = 0; k < g.sampling().top_logprobs(); ++k) {
          spark::v1::TopLogprob* top = lp->add_top_logprobs();
          top->set_token_id(Id(k == 0 ? t : "Z"));
          top->set_logprob(k == 0 ? -0.5f : -2.0f);
        }
      }
    }
    chunks.push_back(c);
    return chunks;
  });
  auto r = Post("/v1/chat/completions", {{"model", "m"},
                                         {"messages", {{{"role", "user"}, {"content", "x"}}}},
                                         {"chat_template_kwargs", {{"enable_thinking", false}}},
                                         {"n", 3},
                                         {"seed", 7},
                                         {"logprobs", true},
                                         {"top_logprobs", 2}});
  ASSERT_EQ(r.status, 200) << r.body;
  json body = json::parse(r.body);
  ASSERT_EQ(body["choices"].size(), 3u);
  std::set<uint64_t> seeds;
  for (const auto& g : data_.requests()) seeds.insert(g.sampling().seed());
  EXPECT_EQ(seeds, (std::set<uint64_t>{7, 8, 9}));
  for (int i = 0; i < 3; ++i) {
    const json& c = body["choices"][i];
    EXPECT_EQ(c["index"], i);
    EXPECT_EQ(c["message"]["content"], "OK");
    EXPECT_EQ(c["finish_reason"], "stop");
    const json& lp = c["logprobs"]["content"];
    ASSERT_EQ(lp.size(), 2u);
    EXPECT_EQ(lp[0]["token"], "O");
    EXPECT_FLOAT_EQ(lp[0]["logprob"].get<float>(), -0.5f);
    EXPECT_EQ(lp[0]["bytes"], json({79}));
    ASSERT_EQ(lp[1]["top_logprobs"].size(), 2u);
    EXPECT_EQ(lp[1]["top_logprobs"][0]["token"], "K");
    EXPECT_EQ(lp[1]["top_logprobs"][1]["token"], "Z");
    EXPECT_EQ(lp[1]["top_logprobs"][1]["bytes"], json({90}));
  }
  EXPECT_EQ(body["usage"]["completion_tokens"], 6);

  // Text completion: a text prompt, echo, legacy logprobs.
  auto t =
      Post("/v1/completions", {{"model", "m"}, {"prompt", "Say"}, {"echo", true}, {"logprobs", 1}});
  ASSERT_EQ(t.status, 200) << t.body;
  json text = json::parse(t.body);
  EXPECT_EQ(text["object"], "text_completion");
  const json& choice = text["choices"][0];
  EXPECT_EQ(choice["text"], "SayOK");
  const json& legacy = choice["logprobs"];
  const size_t prompt_tokens = Encode("Say").size();
  ASSERT_EQ(legacy["tokens"].size(), prompt_tokens + 2);
  EXPECT_TRUE(legacy["token_logprobs"][0].is_null());
  EXPECT_EQ(legacy["tokens"][prompt_tokens], "O");
  EXPECT_FLOAT_EQ(legacy["token_logprobs"][prompt_tokens].get<float>(), -0.5f);
  EXPECT_EQ(legacy["top_logprobs"][prompt_tokens + 1].size(), 1u);
  EXPECT_EQ(legacy["text_offset"][prompt_tokens], 3);
  EXPECT_EQ(text["usage"]["prompt_tokens"], prompt_tokens);

  // Streamed completion over two token-id prompts.
  std::vector<std::string> events =
      Stream("/v1/completions", {{"model", "m"}, {"prompt", {{1, 2}, {3}}}, {"stream", true}});
  std::set<int> indexes;
  for (const std::string& e : events) {
    if (e == "[DONE]") continue;
    json chunk = json::parse(e);
    indexes.insert(chunk["choices"][0]["index"].get<int>());
    EXPECT_EQ(chunk["choices"][0]["text"], "OK");
  }
  EXPECT_EQ(indexes, (std::set<int>{0, 1}));

  // Streamed echo: the prompt comes first.
  events = Stream("/v1/completions",
                  {{"model", "m"}, {"prompt", "Say"}, {"echo", true}, {"stream", true}});
  std::string streamed;
  for (const std::string& e : events) {
    if (e != "[DONE]") streamed += json::parse(e)["choices"][0]["text"].get<std::string>();
  }
  EXPECT_EQ(streamed, "SayOK");
}

TEST_F(OpenAiApiTest, ValidationErrorsNameTheFieldAndLimit) {
  MakeReady();
  auto bad_json = client_->Send(http::Method::kPost, "/v1/chat/completions", "{nope");
  ExpectError(*bad_json, 400, "", "not valid JSON");
  json base = {{"model", "m"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}};
  auto with = [&](const std::string& key, const json& value) {
    json b = base;
    b[key] = value;
    return Post("/v1/chat/completions", b);
  };
  ExpectError(with("temperature", "hot"), 400, "temperature", "expected a number");
  ExpectError(with("max_tokens", 1000), 400, "max_tokens", "ceiling");
  ExpectError(with("n", 0), 400, "n", "out of range");
  ExpectError(with("top_logprobs", 3), 400, "top_logprobs", "logprobs");
  ExpectError(with("stop", 5), 400, "stop", "string");
  ExpectError(with("stream", "yes"), 400, "stream", "true or false");
  ExpectError(with("tool_choice", "required"), 400, "tool_choice", "tools");
  ExpectError(with("response_format", {{"type", "json_schema"}}), 400, "response_format.type",
              "not supported yet");
  ExpectError(with("messages", {{{"role", "robot"}, {"content", "x"}}}), 400, "messages[0].role",
              "not supported");
  ExpectError(with("messages", json::array()), 400, "messages", "empty");
  json many = json::array();
  for (int i = 0; i < 9; ++i) many.push_back({{"role", "user"}, {"content", "x"}});
  ExpectError(with("messages", many), 400, "messages", "limit of 8");
  ExpectError(with("model", 5), 400, "model", "string");
  ExpectError(with("model", "nope"), 404, "model", "does not exist");
  json named = base;
  named["tools"] = {{{"type", "function"}, {"function", {{"name", "f"}}}}};
  named["tool_choice"] = {{"type", "function"}, {"function", {{"name", "g"}}}};
  ExpectError(Post("/v1/chat/completions", named), 400, "tool_choice.function.name", "not one of");
  auto huge =
      client_->Send(http::Method::kPost, "/v1/chat/completions", std::string(70 * 1024, ' '));
  ASSERT_TRUE(huge.ok());
  EXPECT_EQ(huge->status, 413);
  EXPECT_THAT(huge->body, HasSubstr("65536"));
  ExpectError(Post("/v1/completions", {{"model", "m"}, {"prompt", {-1}}}), 400, "prompt",
              "token ids");
  ExpectError(Post("/v1/completions", {{"model", "m"}, {"prompt", "x"}, {"logprobs", 9}}), 400,
              "logprobs", "out of range");
  // Still serving.
  data_.set_script(
      [&](const spark::v1::GenerateRequest&) { return Chunks{Tokens({Id("O")}, true)}; });
  EXPECT_EQ(Post("/v1/completions", {{"model", "m"}, {"prompt", "x"}}).status, 200);
}

TEST_F(OpenAiApiTest, ApiKeysAndAdminKey) {
  ApiAuth auth;
  auth.inference_keys = ApiKeySet::FromKeys({"user-key", "second-key"});
  auth.admin_keys = ApiKeySet::FromKeys({"admin-key"});
  Start(auth);
  const http::Headers admin = {{"Authorization", "Bearer admin-key"}};
  const http::Headers user = {{"Authorization", "Bearer second-key"}};
  const http::Headers wrong = {{"Authorization", "Bearer nope"}};
  auto missing = *client_->Get("/v1/models");
  ExpectError(missing, 401, "", "missing API key");
  ASSERT_NE(missing.Header("WWW-Authenticate"), nullptr);
  EXPECT_EQ(json::parse(missing.body)["error"]["type"], "authentication_error");
  ExpectError(*client_->Get("/v1/models", wrong), 401, "", "invalid API key");
  EXPECT_EQ(client_->Get("/v1/models", user)->status, 200);
  EXPECT_EQ(client_->Get("/v1/models", admin)->status, 200);
  EXPECT_EQ(client_->Get("/metrics")->status, 401);
  ExpectError(*client_->Get("/api/v1/models"), 401, "", "missing API key");
  auto forbidden = *client_->Get("/api/v1/models", user);
  ExpectError(forbidden, 403, "", "admin key");
  EXPECT_EQ(json::parse(forbidden.body)["error"]["type"], "permission_error");
  EXPECT_EQ(client_->Get("/api/v1/models", admin)->status, 200);
  EXPECT_EQ(client_->Get("/healthz")->status, 200);

  TempDir keys;
  {
    std::ofstream f(keys.File("keys"));
    f << "# inference keys\n\n  k1  \nk2\n";
  }
  auto loaded = ApiKeySet::LoadFile(keys.File("keys"));
  ASSERT_TRUE(loaded.ok());
  EXPECT_EQ(loaded->size(), 2u);
  EXPECT_TRUE(loaded->Contains("k1"));
  EXPECT_FALSE(loaded->Contains("k"));
  EXPECT_FALSE(loaded->Contains("# inference keys"));
  {
    std::ofstream f(keys.File("empty"));
    f << "# nothing\n";
  }
  EXPECT_THAT(ApiKeySet::LoadFile(keys.File("empty")).status().message(), HasSubstr("no key"));
  EXPECT_EQ(ApiKeySet::LoadFile(keys.File("absent")).status().code(), StatusCode::kNotFound);

  // sparkctl sends the admin key.
  {
    std::ofstream f(keys.File("admin"));
    f << "# admin\nadmin-key\n";
  }
  std::ostringstream o, e;
  EXPECT_EQ(RunSparkctl({"sparkctl", "--controller", url_, "ls"}, o, e), 1);
  EXPECT_THAT(e.str(), HasSubstr("missing API key"));
  EXPECT_EQ(
      RunSparkctl({"sparkctl", "--controller", url_, "--admin-key-file", keys.File("admin"), "ls"},
                  o, e),
      0)
      << e.str();
  EXPECT_EQ(RunSparkctl({"sparkctl", "--controller", url_, "--token", "user-key", "ls"}, o, e), 1);
  EXPECT_THAT(e.str(), HasSubstr("admin key"));
}

TEST_F(OpenAiApiTest, DisconnectCancelsTheEngineRequestWithinASecond) {
  MakeReady();
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    return Chunks{Tokens({Id("O")})};  // then holds the request open
  });
  auto r = client_->Stream(http::Method::kPost, "/v1/completions",
                           json{{"model", "m"}, {"prompt", "x"}, {"stream", true}}.dump(), {},
                           [](std::string_view line) { return line.empty(); });
  ASSERT_TRUE(r.ok());
  const auto closed = std::chrono::steady_clock::now();
  ASSERT_TRUE(data_.WaitForCancels(1, milliseconds(1000)));
  EXPECT_LT(std::chrono::steady_clock::now() - closed, milliseconds(1000));
  EXPECT_EQ(data_.cancels()[0], data_.requests()[0].request_id());
}

TEST_F(OpenAiApiTest, StreamEndsWithAnErrorEventWhenTheGroupFails) {
  MakeReady();
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    return Chunks{Tokens({Id("O")})};  // then holds the request open
  });
  std::vector<std::string> events;
  std::thread failer([&] {
    for (int i = 0; i < 200 && events.empty(); ++i) std::this_thread::sleep_for(milliseconds(5));
    agent_->Status(assignment_, spark::v1::SHARD_PHASE_FAILED);
  });
  auto r = client_->Stream(http::Method::kPost, "/v1/completions",
                           json{{"model", "m"}, {"prompt", "x"}, {"stream", true}}.dump(), {},
                           [&](std::string_view line) {
                             if (!line.empty()) events.emplace_back(line.substr(6));
                             return true;
                           });
  failer.join();
  ASSERT_TRUE(r.ok());
  ASSERT_GE(events.size(), 3u);
  json error = json::parse(events[events.size() - 2]);
  ASSERT_TRUE(error.contains("error")) << events[events.size() - 2];
  EXPECT_TRUE(error["error"]["message"].is_string());
  EXPECT_EQ(events.back(), "[DONE]");
  // The model is no longer serving: 503 with Retry-After.
  auto after = Post("/v1/completions", {{"model", "m"}, {"prompt", "x"}});
  ExpectError(after, 503, "", "not ready");
  EXPECT_NE(after.Header("Retry-After"), nullptr);
}

TEST_F(OpenAiApiTest, RequestWaitsBoundedForAModelThatIsNotReady) {
  OpenAiOptions options;
  options.model_wait = milliseconds(5000);
  Start(ApiAuth{}, options);
  data_.set_script([&](const spark::v1::GenerateRequest& g) {
    if (!g.request_id().starts_with("cmpl-")) return Chunks{Tokens({1}, true)};
    return Chunks{Tokens({Id("O"), Id("K")}, true)};
  });
  std::optional<http::ClientResponse> waited;
  std::thread request;
  MakeReady({}, [&] {
    request = std::thread([&] {
      auto client = http::HttpClient::Create(url_);
      auto r = client->Post("/v1/completions", json{{"model", "m"}, {"prompt", "x"}});
      if (r.ok()) waited = *r;
    });
    std::this_thread::sleep_for(milliseconds(300));  // the request is waiting now
  });
  request.join();
  ASSERT_TRUE(waited.has_value());
  EXPECT_EQ(waited->status, 200) << waited->body;
  EXPECT_EQ(json::parse(waited->body)["choices"][0]["text"], "OK");
}

TEST_F(OpenAiApiTest, MetricsAreParsablePrometheusText) {
  MakeReady();
  data_.set_script([&](const spark::v1::GenerateRequest&) {
    return Chunks{Tokens({Id("O")}), Tokens({Id("K")}, true)};
  });
  ASSERT_EQ(Post("/v1/completions", {{"model", "m"}, {"prompt", "x"}}).status, 200);
  ASSERT_EQ(Post("/v1/completions", {{"model", "m"}, {"prompt", 5}}).status, 400);
  auto r = client_->Get("/metrics");
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->status, 200);
  EXPECT_THAT(*r->Header("Content-Type"), HasSubstr("text/plain; version=0.0.4"));
  const std::regex sample(
      R"(^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? (-?[0-9.eE+-]+|\+Inf|NaN)$)");
  const std::regex comment(R"(^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*$)");
  std::map<std::string, double> values;
  std::istringstream lines(r->body);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.starts_with("#")) {
      EXPECT_TRUE(std::regex_match(line, comment)) << line;
      continue;
    }
    ASSERT_TRUE(std::regex_match(line, sample)) << line;
    const size_t space = line.rfind(' ');
    values[line.substr(0, space)] = std::stod(line.substr(space + 1));
  }
  EXPECT_EQ(values["spark_http_requests_total{endpoint=\"/v1/completions\",status=\"200\"}"], 1);
  EXPECT_EQ(values["spark_http_requests_total{endpoint=\"/v1/completions\",status=\"400\"}"], 1);
  EXPECT_EQ(values["spark_time_to_first_token_seconds_count"], 1);
  EXPECT_EQ(values["spark_inter_token_latency_seconds_count"], 1);
  EXPECT_EQ(values["spark_completion_tokens_total"], 2);
  EXPECT_EQ(values["spark_prompt_tokens_total"], 1);
  EXPECT_EQ(values["spark_requests_queued"], 0);
  EXPECT_EQ(values["spark_requests_running"], 0);
  EXPECT_EQ(values["spark_deployment_state{model=\"m\",state=\"ready\"}"], 1);
  EXPECT_EQ(values["spark_deployment_restarts{model=\"m\"}"], 0);
}

}  // namespace
}  // namespace spark::controller
