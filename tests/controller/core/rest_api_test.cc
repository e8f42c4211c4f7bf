// The REST API and sparkctl against a Controller on a real HTTP server, with fake agents and a
// fake rank-0 data plane (tests/controller/core/fakes.h).
#include "controller/rest_api.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <set>
#include <sstream>
#include <thread>

#include "common/clock.h"
#include "controller/controller_options.h"
#include "controller/http/client.h"
#include "controller/http/server.h"
#include "controller/openai_api.h"
#include "controller/openai_metrics.h"
#include "controller/sparkctl.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "tests/controller/core/fakes.h"

namespace spark::controller {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using testing::FakeAgent;
using testing::FakeDataPlane;
using ::testing::HasSubstr;
using testing::TempDir;
using Envelope = spark::v1::Envelope;

class RestApiTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(""); }

  void Start(const std::string& token) {
    store_.reset();
    store::StoreOptions store_options;
    store_options.path = dir_.File("controller.db");
    auto store = store::Store::Open(store_options, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ControllerOptions options;
    options.agent_listen = "tcp://127.0.0.1:*";
    options.insecure = true;
    options.max_poll_wait = milliseconds(5);
    controller_ = std::make_unique<Controller>(options, *store_, clock_);
    ASSERT_TRUE(controller_->Start().ok());
    http::HttpServerOptions server_options;
    server_ = std::make_unique<http::HttpServer>(server_options);
    ASSERT_TRUE(AddRestRoutes(*server_, *controller_, *store_, token).ok());
    openai_ = std::make_unique<OpenAiService>(*controller_, OpenAiOptions{}, ApiAuth{});
    ASSERT_TRUE(openai_->AddRoutes(*server_).ok());
    ASSERT_TRUE(server_->Start().ok());
    url_ = "http://127.0.0.1:" + std::to_string(server_->port());
    auto client = http::HttpClient::Create(url_);
    ASSERT_TRUE(client.ok());
    client_.emplace(std::move(*client));
  }

  void TearDown() override {
    client_.reset();
    if (server_) server_->Stop();
    controller_.reset();
    openai_.reset();
  }

  http::ClientResponse Get(const std::string& target) {
    auto r = client_->Get(target);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : http::ClientResponse{};
  }
  http::ClientResponse Post(const std::string& target, const json& body) {
    auto r = client_->Post(target, body);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : http::ClientResponse{};
  }
  static json Body(const http::ClientResponse& r) {
    auto j = r.Json();
    return j.ok() ? *j : json(nullptr);
  }
  static void ExpectError(const http::ClientResponse& r, int status, const std::string& code,
                          const std::string& text) {
    EXPECT_EQ(r.status, status) << r.body;
    json body = Body(r);
    ASSERT_TRUE(body.contains("error")) << r.body;
    EXPECT_EQ(body["error"]["code"], code) << r.body;
    EXPECT_TRUE(body["error"]["type"].is_string());
    EXPECT_THAT(body["error"]["message"].get<std::string>(), HasSubstr(text));
  }

  int Sparkctl(std::vector<std::string> args, std::string* out, std::string* err) {
    args.insert(args.begin(), {"sparkctl", "--controller", url_});
    std::ostringstream o, e;
    const int code = RunSparkctl(args, o, e);
    *out = o.str();
    *err = e.str();
    return code;
  }

  // Deploys "m" (tp 2) on fake agents a and b and makes it ready.
  void MakeReady(FakeAgent& a, FakeAgent& b) {
    ASSERT_EQ(Post("/api/v1/models", {{"name", "m"}, {"path", "/models/tiny"}, {"tp", 2}}).status,
              202);
    auto ea = a.WaitFor(Envelope::kShardAssignment);
    auto eb = b.WaitFor(Envelope::kShardAssignment);
    ASSERT_TRUE(ea && eb);
    a.Status(ea->shard_assignment(), spark::v1::SHARD_PHASE_READY, data_.endpoint());
    b.Status(eb->shard_assignment(), spark::v1::SHARD_PHASE_READY);
    for (int i = 0; i < 200 && Body(Get("/api/v1/models/m"))["state"] != "ready"; ++i) {
      std::this_thread::sleep_for(milliseconds(10));
    }
    ASSERT_EQ(Body(Get("/api/v1/models/m"))["state"], "ready");
  }

  ManualClock clock_;
  TempDir dir_;
  ZmqContext context_;
  FakeDataPlane data_{context_};
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Controller> controller_;
  std::unique_ptr<OpenAiService> openai_;
  std::unique_ptr<http::HttpServer> server_;
  std::optional<http::HttpClient> client_;
  std::string url_;
};

TEST_F(RestApiTest, HealthAndReadiness) {
  EXPECT_EQ(Get("/healthz").status, 200);
  EXPECT_EQ(Get("/readyz").status, 200);
  ASSERT_EQ(Post("/api/v1/models", {{"name", "m"}, {"path", "/p"}, {"tp", 1}}).status, 202);
  http::ClientResponse r = Get("/readyz");
  EXPECT_EQ(r.status, 503);
  ASSERT_NE(r.Header("Retry-After"), nullptr);
  json body = Body(r);
  ASSERT_EQ(body["not_ready"].size(), 1u);
  EXPECT_THAT(body["not_ready"][0].get<std::string>(), HasSubstr("m: pending"));
  EXPECT_EQ(body["error"]["code"], "not_ready");
}

TEST_F(RestApiTest, DeployValidationAndErrors) {
  http::ClientResponse bad = *client_->Send(http::Method::kPost, "/api/v1/models", "{nope");
  ExpectError(bad, 400, "invalid_argument", "not valid JSON");
  ExpectError(Post("/api/v1/models", {{"name", "m"}}), 400, "invalid_argument", "\"path\"");
  ExpectError(Post("/api/v1/models", {{"name", "m"}, {"path", "/p"}, {"tp", 0}}), 400,
              "invalid_argument", "\"tp\"");
  ExpectError(Post("/api/v1/models", {{"name", "m"}, {"path", "/p"}, {"gpus", 2}}), 400,
              "invalid_argument", "unknown field \"gpus\"");
  ExpectError(
      Post("/api/v1/models", {{"name", "m"}, {"path", "/p"}, {"options", {{"max_batchh", 1}}}}),
      400, "invalid_argument", "unknown option");
  ExpectError(Post("/api/v1/models", {{"name", "a/b"}, {"path", "/p"}}), 400, "invalid_argument",
              "not valid");
  http::ClientResponse ok =
      Post("/api/v1/models",
           {{"name", "m"}, {"path", "/p"}, {"tp", 2}, {"options", {{"max_batch", "8"}}}});
  EXPECT_EQ(ok.status, 202);
  json m = Body(ok);
  EXPECT_EQ(m["name"], "m");
  EXPECT_EQ(m["tp"], 2);
  EXPECT_EQ(m["options"]["max_batch"], 8);
  EXPECT_EQ(m["desired"], "running");
  ExpectError(Post("/api/v1/models", {{"name", "m"}, {"path", "/p"}}), 409, "already_exists",
              "already exists");
  ExpectError(Get("/api/v1/models/zz"), 404, "not_found", "model \"zz\" not found");
  ExpectError(*client_->Delete("/api/v1/models/zz"), 404, "not_found", "not found");
  ExpectError(Post("/api/v1/models/zz/restart", json::object()), 404, "not_found", "not found");
  ExpectError(Get("/api/v1/runs?model=zz"), 404, "not_found", "not found");
  ExpectError(Get("/api/v1/events?since=x"), 400, "invalid_argument", "\"since\"");
  json list = Body(Get("/api/v1/models"));
  ASSERT_EQ(list["models"].size(), 1u);
  EXPECT_EQ(list["models"][0]["state"], "pending");
  EXPECT_THAT(list["models"][0]["waiting_reason"].get<std::string>(), HasSubstr("needs 2 nodes"));
}

TEST_F(RestApiTest, ServingLifecycleThroughTheApi) {
  FakeAgent a(context_, "a", controller_->agent_endpoint());
  FakeAgent b(context_, "b", controller_->agent_endpoint());
  ASSERT_TRUE(a.Register());
  ASSERT_TRUE(b.Register());
  json nodes = Body(Get("/api/v1/nodes"));
  ASSERT_EQ(nodes["nodes"].size(), 2u);
  EXPECT_EQ(nodes["nodes"][0]["name"], "a");
  EXPECT_EQ(nodes["nodes"][0]["state"], "alive");
  EXPECT_EQ(nodes["nodes"][0]["backend"], "cpu");
  EXPECT_EQ(nodes["nodes"][0]["nccl_env"]["NCCL_SOCKET_IFNAME"], "lo");
  EXPECT_EQ(nodes["nodes"][0]["preflight_ok"], true);

  // Not ready yet: 503 with Retry-After.
  ASSERT_EQ(Post("/api/v1/models", {{"name", "m"}, {"path", "/models/tiny"}, {"tp", 2}}).status,
            202);
  http::ClientResponse early = Post("/v1/completions", {{"model", "m"}, {"prompt", {1, 2}}});
  ExpectError(early, 503, "unavailable", "not ready");
  ASSERT_NE(early.Header("Retry-After"), nullptr);
  auto ea = a.WaitFor(Envelope::kShardAssignment);
  auto eb = b.WaitFor(Envelope::kShardAssignment);
  ASSERT_TRUE(ea && eb);
  a.Status(ea->shard_assignment(), spark::v1::SHARD_PHASE_LOADING);
  json loading = Body(Get("/api/v1/models/m"));
  for (int i = 0; i < 100 && loading["members"][0]["phase"] != "loading"; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    loading = Body(Get("/api/v1/models/m"));
  }
  EXPECT_EQ(loading["state"], "loading");
  EXPECT_EQ(loading["members"][0]["phase"], "loading");
  EXPECT_EQ(loading["members"][1]["phase"], "assigned");
  EXPECT_EQ(loading["run"]["state"], "starting");
  a.Status(ea->shard_assignment(), spark::v1::SHARD_PHASE_READY, data_.endpoint());
  b.Status(eb->shard_assignment(), spark::v1::SHARD_PHASE_READY);
  json m;
  for (int i = 0; i < 200; ++i) {
    m = Body(Get("/api/v1/models/m"));
    if (m["state"] == "ready") break;
    std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_EQ(m["state"], "ready");
  EXPECT_EQ(m["generation"], 1);
  EXPECT_EQ(m["serving"], true);
  EXPECT_EQ(m["members"].size(), 2u);
  EXPECT_EQ(m["members"][1]["node"], "b");
  EXPECT_EQ(Get("/readyz").status, 200);

  // Completions, whole and streamed.
  http::ClientResponse done =
      Post("/v1/completions", {{"model", "m"}, {"prompt", {5, 6, 7}}, {"max_tokens", 2}});
  ASSERT_EQ(done.status, 200) << done.body;
  json c = Body(done);
  EXPECT_EQ(c["object"], "text_completion");
  EXPECT_EQ(c["model"], "m");
  EXPECT_EQ(c["choices"][0]["token_ids"], json({11, 12}));
  EXPECT_EQ(c["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(c["choices"][0]["text"], "");
  EXPECT_EQ(c["usage"]["prompt_tokens"], 3);
  EXPECT_EQ(c["usage"]["completion_tokens"], 2);
  EXPECT_EQ(c["usage"]["total_tokens"], 5);
  std::vector<std::string> lines;
  auto streamed = client_->Stream(http::Method::kPost, "/v1/completions",
                                  json{{"model", "m"}, {"prompt", {1}}, {"stream", true}}.dump(),
                                  {}, [&](std::string_view line) {
                                    if (!line.empty()) lines.emplace_back(line);
                                    return true;
                                  });
  ASSERT_TRUE(streamed.ok());
  EXPECT_EQ(streamed->status, 200);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(json::parse(lines[0].substr(6))["choices"][0]["token_ids"], json({11}));
  EXPECT_TRUE(json::parse(lines[0].substr(6))["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(json::parse(lines[1].substr(6))["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(lines[2], "data: [DONE]");
  // A text prompt needs the tokenizer, which this fake rank 0 never sends.
  ExpectError(Post("/v1/completions", {{"model", "m"}, {"prompt", "hello"}}), 503, "unavailable",
              "tokenizer");
  ExpectError(Post("/v1/completions", {{"model", "nope"}, {"prompt", {1}}}), 404, "model_not_found",
              "does not exist");
  const std::vector<spark::v1::GenerateRequest> sent = data_.requests();
  ASSERT_GE(sent.size(), 2u);
  EXPECT_EQ(sent[1].sampling().max_tokens(), 2u);
  EXPECT_FLOAT_EQ(sent[1].sampling().top_p(), 1.0f);
  EXPECT_FLOAT_EQ(sent[1].sampling().repetition_penalty(), 1.0f);

  // History.
  json runs = Body(Get("/api/v1/runs?model=m"));
  ASSERT_EQ(runs["runs"].size(), 1u);
  EXPECT_EQ(runs["runs"][0]["generation"], 1);
  EXPECT_EQ(runs["runs"][0]["placement"], json({"a", "b"}));
  EXPECT_EQ(runs["runs"][0]["members"].size(), 2u);
  // Events are committed by the store's writer thread: wait for them.
  json events;
  std::set<std::string> kinds;
  for (int i = 0; i < 500 && !kinds.count("run_ready"); ++i) {
    if (i > 0) std::this_thread::sleep_for(milliseconds(10));
    events = Body(Get("/api/v1/events?since=0"));
    kinds.clear();
    for (const json& e : events["events"]) kinds.insert(e["kind"].get<std::string>());
  }
  EXPECT_TRUE(kinds.count("deployed"));
  EXPECT_TRUE(kinds.count("run_started"));
  EXPECT_TRUE(kinds.count("run_ready"));
  const int64_t last = events["last_id"].get<int64_t>();
  EXPECT_TRUE(Body(Get("/api/v1/events?since=" + std::to_string(last)))["events"].empty());

  // Restart: a new generation.
  http::ClientResponse restarted = Post("/api/v1/models/m/restart", json::object());
  EXPECT_EQ(restarted.status, 202);
  auto ra = a.WaitFor(Envelope::kShardAssignment);
  ASSERT_TRUE(ra.has_value());
  EXPECT_EQ(ra->shard_assignment().generation(), 2u);

  // Undeploy.
  http::ClientResponse deleted = *client_->Delete("/api/v1/models/m");
  EXPECT_EQ(deleted.status, 202);
  EXPECT_EQ(Body(deleted)["state"], "stopping");
}

TEST_F(RestApiTest, SparkctlTablesJsonAndExitCodes) {
  FakeAgent a(context_, "a", controller_->agent_endpoint());
  ASSERT_TRUE(a.Register());
  std::string out, err;
  ASSERT_EQ(Sparkctl({"nodes"}, &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("NAME  STATE  BACKEND"));
  EXPECT_THAT(out, HasSubstr("a     alive  cpu"));
  ASSERT_EQ(Sparkctl({"deploy", "m", "--path", "/models/tiny", "--tp", "1", "--option",
                      "max_batch=4", "--option", "extra.knob=on"},
                     &out, &err),
            0)
      << err;
  EXPECT_THAT(out, HasSubstr("deployed m"));
  auto assignment = a.WaitFor(Envelope::kShardAssignment);
  ASSERT_TRUE(assignment.has_value());
  EXPECT_EQ(assignment->shard_assignment().options().max_batch(), 4u);
  EXPECT_EQ(assignment->shard_assignment().options().extra().at("knob"), "on");
  ASSERT_EQ(Sparkctl({"ls"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("NAME  STATE"));
  EXPECT_THAT(out, HasSubstr("m     loading"));
  ASSERT_EQ(Sparkctl({"--json", "status", "m"}, &out, &err), 0);
  json status = json::parse(out);
  EXPECT_EQ(status["name"], "m");
  EXPECT_EQ(status["members"][0]["node"], "a");
  ASSERT_EQ(Sparkctl({"status", "m"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("state:       loading"));
  EXPECT_THAT(out, HasSubstr("RANK  NODE  PHASE"));
  ASSERT_EQ(Sparkctl({"runs", "m"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("ID  MODEL  GEN  STATE"));
  ASSERT_EQ(Sparkctl({"events", "--since", "0"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("deployed"));
  EXPECT_EQ(Sparkctl({"status", "nope"}, &out, &err), 1);
  EXPECT_THAT(err, HasSubstr("error 404: model \"nope\" not found"));
  EXPECT_EQ(Sparkctl({"deploy", "x", "--path", "/p", "--option", "novalue"}, &out, &err), 2);
  EXPECT_EQ(Sparkctl({"frobnicate"}, &out, &err), 2);
  a.Status(assignment->shard_assignment(), spark::v1::SHARD_PHASE_READY, data_.endpoint());
  ASSERT_EQ(Sparkctl({"wait", "m", "--timeout-s", "10"}, &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("m is ready"));
  ASSERT_EQ(Sparkctl({"undeploy", "m"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("undeploying m"));

  std::ostringstream o, e;
  EXPECT_EQ(RunSparkctl({"sparkctl", "--controller", "http://127.0.0.1:1", "ls"}, o, e), 3);
  EXPECT_THAT(e.str(), HasSubstr("cannot reach the controller"));
}

// Rank 0's READY report carrying speculative decoding counters, as spark-shard sends it.
void ReportSpeculativeStats(FakeAgent& agent, const spark::v1::ShardAssignment& assignment,
                            uint64_t verify_steps, uint64_t drafted, uint64_t accepted,
                            uint64_t emitted, double draft_ms, double verify_ms) {
  Envelope envelope;
  spark::v1::ShardStatus* s = envelope.mutable_shard_status();
  s->set_deployment(assignment.deployment());
  s->set_run_id(assignment.run_id());
  s->set_generation(assignment.generation());
  s->set_rank(assignment.rank());
  s->set_phase(spark::v1::SHARD_PHASE_READY);
  s->set_pid(1000);
  spark::v1::SpeculativeStats* stats = s->mutable_speculative();
  stats->set_verify_steps(verify_steps);
  stats->set_drafted_tokens(drafted);
  stats->set_accepted_tokens(accepted);
  stats->set_emitted_tokens(emitted);
  stats->set_draft_ms(draft_ms);
  stats->set_verify_ms(verify_ms);
  agent.Send(std::move(envelope), assignment.generation());
}

std::vector<std::string> MetricLines(const std::string& exposition, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(exposition);
  for (std::string line; std::getline(in, line);) {
    if (line.starts_with(prefix)) lines.push_back(line);
  }
  return lines;
}

TEST_F(RestApiTest, SpeculativeOptionsAndCountersThroughSparkctlRestAndMetrics) {
  FakeAgent a(context_, "a", controller_->agent_endpoint());
  ASSERT_TRUE(a.Register());
  std::string out, err;
  // Bad speculative options: the controller's message reaches the user.
  EXPECT_EQ(Sparkctl({"deploy", "m", "--path", "/models/tiny", "--option", "speculative.steps=2",
                      "--option", "speculative.topk=2"},
                     &out, &err),
            1);
  EXPECT_THAT(err, HasSubstr("\"speculative.draft_tokens\" is required with topk 2"));
  EXPECT_EQ(Sparkctl({"deploy", "m", "--path", "/p", "--option", "speculative.=2"}, &out, &err), 2);
  EXPECT_EQ(Sparkctl({"deploy", "m", "--path", "/p", "--option", "spec.steps=2"}, &out, &err), 2);
  EXPECT_THAT(err, HasSubstr("only extra.KEY and speculative.FIELD"));

  ASSERT_EQ(Sparkctl({"deploy", "m", "--path", "/models/tiny", "--option", "speculative.steps=2"},
                     &out, &err),
            0)
      << err;
  auto assignment = a.WaitFor(Envelope::kShardAssignment);
  ASSERT_TRUE(assignment.has_value());
  const spark::v1::SpeculativeOptions& wire =
      assignment->shard_assignment().options().speculative();
  EXPECT_EQ(wire.steps(), 2u);
  EXPECT_EQ(wire.topk(), 1u);
  EXPECT_EQ(wire.draft_tokens(), 3u);
  json m = Body(Get("/api/v1/models/m"));
  EXPECT_EQ(m["options"],
            json({{"speculative", {{"steps", 2}, {"topk", 1}, {"draft_tokens", 3}}}}));
  EXPECT_EQ(m["speculative"]["verify_steps"], 0);
  EXPECT_EQ(m["speculative"]["acceptance_length"], 0.0);

  a.Status(assignment->shard_assignment(), spark::v1::SHARD_PHASE_READY, data_.endpoint());
  ReportSpeculativeStats(a, assignment->shard_assignment(), 10, 20, 15, 25, 1500, 2500);
  for (int i = 0; i < 300 && m["speculative"]["verify_steps"] != 10; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    m = Body(Get("/api/v1/models/m"));
  }
  EXPECT_EQ(m["speculative"], json({{"verify_steps", 10},
                                    {"drafted_tokens", 20},
                                    {"accepted_tokens", 15},
                                    {"emitted_tokens", 25},
                                    {"acceptance_length", 2.5},
                                    {"draft_ms", 1500.0},
                                    {"verify_ms", 2500.0}}));
  ASSERT_EQ(Sparkctl({"status", "m"}, &out, &err), 0);
  EXPECT_THAT(out, HasSubstr("speculative: 2.50 tokens per verify (10 verifies), 15/20 drafts "
                             "accepted (75%), draft 1.5 s, verify 2.5 s"));

  // A new run counts on from the old one's totals.
  ASSERT_EQ(Post("/api/v1/models/m/restart", json::object()).status, 202);
  auto second = a.WaitFor(Envelope::kShardAssignment);
  ASSERT_TRUE(second.has_value());
  ASSERT_EQ(second->shard_assignment().generation(), 2u);
  a.Status(second->shard_assignment(), spark::v1::SHARD_PHASE_READY, data_.endpoint());
  ReportSpeculativeStats(a, second->shard_assignment(), 4, 8, 4, 8, 500, 500);
  ReportSpeculativeStats(a, second->shard_assignment(), 6, 12, 6, 12, 500, 500);
  for (int i = 0; i < 300 && m["speculative"]["verify_steps"] != 16; ++i) {
    std::this_thread::sleep_for(milliseconds(10));
    m = Body(Get("/api/v1/models/m"));
  }
  EXPECT_EQ(m["speculative"]["verify_steps"], 16);
  EXPECT_EQ(m["speculative"]["emitted_tokens"], 37);

  // A deployment without speculative decoding has no counters.
  ASSERT_EQ(Post("/api/v1/models", {{"name", "plain"}, {"path", "/models/tiny"}}).status, 202);
  EXPECT_TRUE(Body(Get("/api/v1/models/plain"))["speculative"].is_null());

  const std::string metrics = Get("/metrics").body;
  EXPECT_EQ(MetricLines(metrics, "spark_spec_"),
            std::vector<std::string>({"spark_spec_acceptance_length{model=\"m\"} 2.3125",
                                      "spark_spec_verify_steps_total{model=\"m\"} 16",
                                      "spark_spec_drafted_tokens_total{model=\"m\"} 32",
                                      "spark_spec_accepted_tokens_total{model=\"m\"} 21",
                                      "spark_spec_emitted_tokens_total{model=\"m\"} 37",
                                      "spark_spec_draft_seconds_total{model=\"m\"} 2",
                                      "spark_spec_verify_seconds_total{model=\"m\"} 3"}));
  EXPECT_THAT(metrics, HasSubstr("# TYPE spark_spec_draft_seconds_total counter\n"));
  EXPECT_THAT(metrics, HasSubstr("# TYPE spark_spec_acceptance_length gauge\n"));
}

TEST(OpenAiMetricsTest, NoSpeculativeFamiliesWithoutSpeculativeDeployments) {
  DeploymentView plain;
  plain.record.name = "plain";
  std::string out;
  RenderSpeculative({plain}, &out);
  EXPECT_EQ(out, "");
  DeploymentView spec;
  spec.record.name = "a\"b";
  spec.speculative.emplace();
  RenderSpeculative({plain, spec}, &out);
  EXPECT_THAT(out, HasSubstr("spark_spec_acceptance_length{model=\"a\\\"b\"} 0\n"));
  EXPECT_EQ(MetricLines(out, "spark_spec_").size(), 7u);
}

// The kernel tunings the controller keeps (kernel_tunings) through GET /api/v1/tunings and
// sparkctl tunings: every device class, or one; MoE records with their choice in words.
TEST_F(RestApiTest, TuningsListedPerDeviceClassThroughRestAndSparkctl) {
  engine::MoeTuningRecord tile;
  tile.device = {"NVIDIA H100 80GB HBM3", 9, 0, 232448};
  tile.format = "fp8-per-channel";
  tile.gemm = "gate_up";
  tile.experts = 128;
  tile.n = 2816;
  tile.k = 4096;
  tile.top_k = 8;
  tile.batch = 64;
  tile.config = {32, 128, 128, 4, 3, 1};
  tile.measured_us = 41.5;
  tile.tuned_unix_ms = 1767225600000;
  tile.source = "tuner";
  engine::MoeTuningRecord gemv = tile;
  gemv.device = {"NVIDIA GB10", 12, 1, 101376};
  gemv.gemm = "gemv";
  gemv.batch = 1;
  gemv.config = {};
  gemv.gemv = {2, 0, 16, 4, "half_mma"};
  gemv.measured_us = 180.25;
  for (const engine::MoeTuningRecord& r : {tile, gemv}) {
    store::KernelTuning t;
    t.device_class = r.device.Key();
    t.key = r.Key();
    t.config_json = engine::MoeTuningRecordToJson(r);
    t.measured_us = r.measured_us;
    ASSERT_TRUE(
        store_->Write([t](store::WriteTxn& txn) { return txn.UpsertKernelTuning(t); }).get().ok());
  }
  json all = Body(Get("/api/v1/tunings"));
  ASSERT_EQ(all["tunings"].size(), 2u) << all.dump();
  EXPECT_EQ(all["tunings"][0]["device_class"], "NVIDIA GB10/sm121/smem101376");  // by class
  EXPECT_EQ(all["tunings"][0]["gemm"], "gemv");
  EXPECT_EQ(all["tunings"][0]["choice"], "gate_up k2 | down o16 v4 | half_mma");
  EXPECT_EQ(all["tunings"][0]["record"]["gemv"]["down_vectors"], 4);
  EXPECT_EQ(all["tunings"][1]["choice"], "m32n128k128B w4 s3 split1");
  EXPECT_EQ(all["tunings"][1]["batch"], 64);
  EXPECT_EQ(all["tunings"][1]["tuned_unix_ms"], 1767225600000);
  json one =
      Body(Get("/api/v1/tunings?device_class=NVIDIA%20H100%2080GB%20HBM3%2Fsm90%2Fsmem232448"));
  ASSERT_EQ(one["tunings"].size(), 1u) << one.dump();
  EXPECT_EQ(one["tunings"][0]["key"], "moe/fp8-per-channel/gate_up/e128/n2816/k4096/top8/b64");
  EXPECT_TRUE(Body(Get("/api/v1/tunings?device_class=nope"))["tunings"].empty());

  std::string out, err;
  ASSERT_EQ(Sparkctl({"tunings"}, &out, &err), 0) << err;
  EXPECT_THAT(out, HasSubstr("DEVICE_CLASS"));
  EXPECT_THAT(out, HasSubstr("gate_up k2 | down o16 v4 | half_mma"));
  EXPECT_THAT(out, HasSubstr("180.2"));
  EXPECT_THAT(out, HasSubstr("2026-01-01T00:00:00Z"));
  ASSERT_EQ(Sparkctl({"tunings", "--device-class", "NVIDIA GB10/sm121/smem101376"}, &out, &err), 0)
      << err;
  EXPECT_THAT(out, HasSubstr("moe/fp8-per-channel/gemv/e128/n2816/k4096/top8/b1"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("gate_up/e128")));
  ASSERT_EQ(Sparkctl({"--json", "tunings"}, &out, &err), 0) << err;
  EXPECT_EQ(json::parse(out)["tunings"].size(), 2u);
}

TEST_F(RestApiTest, BearerTokenGuardsTheApiButNotTheProbes) {
  TearDown();
  Start("s3cret");
  EXPECT_EQ(Get("/healthz").status, 200);
  EXPECT_EQ(Get("/readyz").status, 200);
  EXPECT_EQ(Get("/api/v1/models").status, 401);
  auto authorized = client_->Get("/api/v1/models", {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(authorized.ok());
  EXPECT_EQ(authorized->status, 200);
}

TEST(ControllerOptionsTest, FlagsOverrideTheConfigFile) {
  TempDir dir;
  const std::string path = dir.File("controller.toml");
  {
    std::ofstream f(path);
    f << "http_listen = \"127.0.0.1:9000\"\nheartbeat_ms = 500\nrestart_budget = 2\n"
         "[log]\nlevel = \"debug\"\n";
  }
  auto command = ParseControllerCommandLine(
      {"spark-controller", "--config", path, "--heartbeat-ms", "250", "--insecure"});
  ASSERT_TRUE(command.ok()) << command.status().ToString();
  const DaemonOptions& o = command->options;
  EXPECT_EQ(o.http_listen, "127.0.0.1:9000");
  EXPECT_EQ(o.controller.heartbeat_interval.count(), 250);
  EXPECT_EQ(o.controller.restart.budget, 2);
  EXPECT_TRUE(o.controller.insecure);
  EXPECT_EQ(o.log_level, LogLevel::kDebug);
  EXPECT_EQ(o.controller.agent_listen, "tcp://0.0.0.0:7440");

  auto bad = ParseControllerCommandLine({"spark-controller", "--agent-listen", "0.0.0.0:7440"});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("tcp://HOST:PORT"));
  {
    std::ofstream f(path);
    f << "heartbeat_msec = 5\n";
  }
  auto typo = ParseControllerCommandLine({"spark-controller", "--config", path});
  ASSERT_FALSE(typo.ok());
  EXPECT_THAT(typo.status().message(), HasSubstr("heartbeat_msec"));
  auto keygen = ParseControllerCommandLine({"spark-controller", "keygen", "--keys", "/k"});
  ASSERT_TRUE(keygen.ok());
  EXPECT_EQ(keygen->kind, DaemonCommand::kKeygen);
  EXPECT_EQ(keygen->keygen_dir, "/k");
  auto host = ParseHostPort("[::1]:8080");
  ASSERT_TRUE(host.ok());
  EXPECT_EQ(host->first, "::1");
  EXPECT_EQ(host->second, 8080);
  EXPECT_FALSE(ParseHostPort("localhost").ok());
}

}  // namespace
}  // namespace spark::controller
