// Cluster scenarios with the real binaries (tests/cluster/cluster.h): a controller and several
// agents as processes, each agent in its own network namespace when root, CPU backend, tiny
// model. Every scenario asserts the REST state, the database rows and the processes, and prints
// the times the acceptance asks for as "[timing] ..." lines.
#include <signal.h>
#include <sys/wait.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/clock.h"
#include "common/process.h"
#include "tests/cluster/cluster.h"

namespace spark::cluster {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;
using ::testing::HasSubstr;

#define START_CLUSTER(var, options)                                   \
  if (!FindBinaries().missing.empty()) {                              \
    GTEST_SKIP() << "binaries not built: " << FindBinaries().missing; \
  }                                                                   \
  auto var = std::make_unique<Cluster>(options);                      \
  {                                                                   \
    Status start_status = var->Start();                               \
    ASSERT_TRUE(start_status.ok()) << start_status.ToString();        \
  }

void Timing(const std::string& what, int64_t ms) {
  std::printf("[timing] %s: %lld ms\n", what.c_str(), static_cast<long long>(ms));
  std::fflush(stdout);
  ::testing::Test::RecordProperty(what, std::to_string(ms));
}

ClusterOptions Agents(int n) {
  ClusterOptions options;
  options.agents = n;
  return options;
}

std::vector<store::RunRecord> Runs(Cluster& c, const std::string& model) {
  store::RunFilter filter;
  filter.deployment = model;
  Result<std::vector<store::RunRecord>> runs =
      c.db().Read([&](store::ReadTxn& txn) { return txn.ListRuns(filter); });
  EXPECT_TRUE(runs.ok()) << runs.status().ToString();
  return runs.ok() ? *runs : std::vector<store::RunRecord>{};
}

std::vector<store::EventRecord> Events(Cluster& c) {
  Result<std::vector<store::EventRecord>> events =
      c.db().Read([](store::ReadTxn& txn) { return txn.ListEvents(0, 10000); });
  EXPECT_TRUE(events.ok()) << events.status().ToString();
  return events.ok() ? *events : std::vector<store::EventRecord>{};
}

std::set<pid_t> MemberPids(const json& model) {
  std::set<pid_t> pids;
  for (const json& m : model["members"]) pids.insert(m["pid"].get<pid_t>());
  return pids;
}

// Greedy reference tokens from `spark-model generate` on the same checkpoint.
std::vector<int> ReferenceTokens(const Cluster& c, const std::vector<int>& prompt, int max_tokens,
                                 int tp) {
  std::string ids;
  for (int id : prompt) ids += (ids.empty() ? "" : ",") + std::to_string(id);
  const std::string out = c.root() + "/reference.json";
  SpawnOptions options;
  options.args = {FindBinaries().model_tool,
                  "generate",
                  c.model_dir(),
                  "--ids",
                  ids,
                  "--max-tokens",
                  std::to_string(max_tokens),
                  "--temperature",
                  "0",
                  "--ignore-eos",
                  "--tp",
                  std::to_string(tp),
                  "--json"};
  options.stdout_path = out;
  RealProcessLauncher launcher;
  Result<std::unique_ptr<Process>> p = launcher.Spawn(options);
  if (!p.ok()) return {};
  Result<ExitInfo> info = (*p)->Wait();
  if (!info.ok() || !info->success()) return {};
  std::ifstream in(out);
  json j = json::parse(in, nullptr, false);
  std::vector<int> tokens;
  if (j.is_discarded()) return tokens;
  for (const json& t : j["ids"]) tokens.push_back(t.get<int>());
  return tokens;
}

TEST(ClusterTest, DeployTp2AndGenerate) {
  START_CLUSTER(c, Agents(2));
  const int64_t t0 = NowMs();
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  json m = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  Timing("deploy POST -> ready", NowMs() - t0);
  EXPECT_EQ(m["generation"], 1);
  ASSERT_EQ(m["members"].size(), 2u);
  std::set<std::string> nodes;
  for (const json& member : m["members"]) {
    EXPECT_EQ(member["phase"], "ready");
    nodes.insert(member["node"].get<std::string>());
  }
  EXPECT_EQ(nodes, (std::set<std::string>{"n0", "n1"}));
  const std::vector<pid_t> live = c->ShardPids();
  EXPECT_EQ(MemberPids(m), std::set<pid_t>(live.begin(), live.end()));

  const std::vector<int> prompt = {1, 2, 3, 4, 5};
  Result<std::vector<int>> tokens = c->Complete("tiny", prompt, 6);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  ASSERT_EQ(tokens->size(), 6u);
  EXPECT_EQ(*tokens, ReferenceTokens(*c, prompt, 6, 2));

  // The same request streamed as server-sent events.
  std::vector<int> streamed;
  bool done = false;
  {
    json body = {{"model", "tiny"},  {"prompt", prompt},   {"max_tokens", 6},
                 {"temperature", 0}, {"ignore_eos", true}, {"stream", true}};
    Result<http::ClientResponse> head = c->Post("/v1/completions", body);
    ASSERT_TRUE(head.ok());
    EXPECT_EQ(head->status, 200);
    for (const std::string& line : [&] {
           std::vector<std::string> lines;
           std::stringstream s(head->body);
           std::string l;
           while (std::getline(s, l)) lines.push_back(l);
           return lines;
         }()) {
      if (line.rfind("data: ", 0) != 0) continue;
      const std::string data = line.substr(6);
      if (data == "[DONE]") {
        done = true;
        continue;
      }
      json chunk = json::parse(data, nullptr, false);
      ASSERT_FALSE(chunk.is_discarded()) << data;
      for (const json& t : chunk["choices"][0]["token_ids"]) streamed.push_back(t.get<int>());
    }
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(streamed, *tokens);

  // A chat completion through the OpenAI endpoint: the controller renders the GLM template and
  // tokenizes with the tokenizer files rank 0's agent sent; greedy, so streaming gives the same
  // text.
  json chat_request = {
      {"model", "tiny"},    {"messages", {{{"role", "user"}, {"content", "Hello, who are you?"}}}},
      {"max_tokens", 8},    {"temperature", 0},
      {"ignore_eos", true}, {"chat_template_kwargs", {{"enable_thinking", false}}}};
  Result<http::ClientResponse> chat = c->Post("/v1/chat/completions", chat_request);
  ASSERT_TRUE(chat.ok());
  ASSERT_EQ(chat->status, 200) << chat->body;
  json answer = json::parse(chat->body);
  EXPECT_EQ(answer["object"], "chat.completion");
  EXPECT_EQ(answer["choices"][0]["message"]["role"], "assistant");
  EXPECT_EQ(answer["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(answer["usage"]["completion_tokens"], 8);
  EXPECT_GT(answer["usage"]["prompt_tokens"].get<int>(), 5);
  const std::string content = answer["choices"][0]["message"]["content"].get<std::string>();
  chat_request["stream"] = true;
  Result<http::ClientResponse> chat_stream = c->Post("/v1/chat/completions", chat_request);
  ASSERT_TRUE(chat_stream.ok());
  std::string streamed_content;
  std::stringstream sse(chat_stream->body);
  std::string sse_line, last_data;
  while (std::getline(sse, sse_line)) {
    if (sse_line.rfind("data: ", 0) != 0) continue;
    last_data = sse_line.substr(6);
    if (last_data == "[DONE]") continue;
    json chunk = json::parse(last_data, nullptr, false);
    ASSERT_FALSE(chunk.is_discarded()) << last_data;
    const json& delta = chunk["choices"][0]["delta"];
    if (delta.contains("content")) streamed_content += delta["content"].get<std::string>();
  }
  EXPECT_EQ(last_data, "[DONE]");
  EXPECT_EQ(streamed_content, content);

  std::vector<store::RunRecord> runs = Runs(*c, "tiny");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].state, store::RunState::kReady);
  EXPECT_GT(runs[0].ready_at_ms, 0);
  Result<store::RunDetail> detail =
      c->db().Read([&](store::ReadTxn& txn) { return txn.GetRun(runs[0].id); });
  ASSERT_TRUE(detail.ok());
  for (const store::RunMemberRecord& member : detail->members) {
    EXPECT_EQ(member.phase, store::MemberPhase::kReady);
    EXPECT_TRUE(MemberPids(m).count(static_cast<pid_t>(member.pid))) << member.pid;
  }
  Result<http::ClientResponse> ready = c->Get("/readyz");
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(ready->status, 200);
}

TEST(ClusterTest, UndeployLeavesNoProcess) {
  START_CLUSTER(c, Agents(2));
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  ASSERT_FALSE(c->WaitReady("tiny", seconds(90)).is_null()) << c->LogTails();
  ASSERT_EQ(c->ShardPids().size(), 2u);
  Result<http::ClientResponse> deleted = c->Delete("/api/v1/models/tiny");
  ASSERT_TRUE(deleted.ok());
  EXPECT_EQ(deleted->status, 202);
  ASSERT_TRUE(WaitUntil(
      [&] {
        Result<http::ClientResponse> r = c->Get("/api/v1/models/tiny");
        return r.ok() && r->status == 404;
      },
      seconds(20)))
      << c->LogTails();
  EXPECT_TRUE(c->ShardPids().empty());
  std::vector<store::RunRecord> runs = Runs(*c, "tiny");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].end_reason, "undeployed");
  Result<store::DeploymentRecord> d =
      c->db().Read([](store::ReadTxn& txn) { return txn.GetDeployment("tiny"); });
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->deleted);
  EXPECT_EQ(d->state, store::DeploymentState::kStopped);
  Result<http::ClientResponse> gone = c->Get("/api/v1/models/tiny");
  ASSERT_TRUE(gone.ok());
  Result<json> error = gone->Json();
  ASSERT_TRUE(error.ok());
  EXPECT_EQ((*error)["error"]["code"], "not_found");
}

TEST(ClusterTest, KilledShardIsReplacedByANewRun) {
  START_CLUSTER(c, Agents(2));
  const int64_t t0 = NowMs();
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  json m = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  const int64_t load_ms = NowMs() - t0;
  const pid_t victim = m["members"][1]["pid"].get<pid_t>();
  ASSERT_GT(victim, 0);

  const int64_t killed = NowMs();
  ASSERT_EQ(kill(victim, SIGKILL), 0);
  json recovering = c->WaitModel(
      "tiny", [](const json& x) { return x["state"] != "ready"; }, seconds(5));
  ASSERT_FALSE(recovering.is_null());
  const int64_t noticed_ms = NowMs() - killed;
  Timing("kill -9 shard -> noticed (REST state)", noticed_ms);
  EXPECT_LE(noticed_ms, 1000);
  json again = c->WaitModel(
      "tiny",
      [](const json& x) { return x["state"] == "ready" && x["generation"].get<int>() >= 2; },
      seconds(90));
  ASSERT_FALSE(again.is_null()) << c->LogTails();
  const int64_t recovered_ms = NowMs() - killed;
  Timing("kill -9 shard -> ready", recovered_ms);
  EXPECT_LE(recovered_ms, load_ms + 5000) << "load time " << load_ms << " ms";
  EXPECT_EQ(again["restarts"], 1);
  EXPECT_FALSE(MemberPids(again).count(victim));
  Result<std::vector<int>> tokens = c->Complete("tiny", {1, 2, 3}, 4);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  EXPECT_EQ(tokens->size(), 4u);

  std::vector<store::RunRecord> runs = Runs(*c, "tiny");
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[1].generation, 1);
  EXPECT_THAT(runs[1].end_reason, HasSubstr("rank 1 on node n1"));
  EXPECT_THAT(runs[1].end_reason, HasSubstr("SIGKILL"));
  EXPECT_LE(runs[1].ended_at_ms - runs[1].started_at_ms, runs[1].ended_at_ms);
  EXPECT_EQ(runs[0].state, store::RunState::kReady);
  EXPECT_EQ(c->ShardPids().size(), 2u);  // the old rank 0 was stopped
}

TEST(ClusterTest, KilledAgentWithItsShardsRejoinsAfterARebootAndTheGroupReforms) {
  START_CLUSTER(c, Agents(2));
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  ASSERT_FALSE(c->WaitReady("tiny", seconds(90)).is_null()) << c->LogTails();

  const int64_t killed = NowMs();
  c->KillAgent(1, /*with_shards=*/true);
  ASSERT_TRUE(WaitUntil([&] { return c->Node("n1").value("state", "") == "dead"; }, seconds(10)));
  const int64_t dead_ms = NowMs() - killed;
  Timing("kill -9 agent -> node dead", dead_ms);
  EXPECT_LE(dead_ms, 3500);
  json m = c->Model("tiny");
  EXPECT_NE(m["state"], "ready");
  EXPECT_THAT(m["last_error"].get<std::string>(), HasSubstr("node n1"));

  const int64_t restarted = NowMs();
  ASSERT_TRUE(c->StartAgent(1, /*new_boot_id=*/true).ok());
  json again = c->WaitModel(
      "tiny",
      [](const json& x) { return x["state"] == "ready" && x["generation"].get<int>() >= 2; },
      seconds(90));
  ASSERT_FALSE(again.is_null()) << c->LogTails();
  Timing("agent restart -> ready", NowMs() - restarted);
  std::set<std::string> nodes;
  for (const json& member : again["members"]) nodes.insert(member["node"].get<std::string>());
  EXPECT_EQ(nodes, (std::set<std::string>{"n0", "n1"}));
  EXPECT_EQ(c->ShardPids().size(), 2u);
  ASSERT_TRUE(c->Complete("tiny", {7, 8}, 3).ok());
}

TEST(ClusterTest, RestartedControllerAdoptsTheGroupWithoutANewRun) {
  START_CLUSTER(c, Agents(2));
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  json before = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(before.is_null()) << c->LogTails();
  ASSERT_TRUE(
      WaitUntil([&] { return Runs(*c, "tiny")[0].state == store::RunState::kReady; }, seconds(5)));
  const std::vector<store::EventRecord> events_before = Events(*c);
  const std::set<pid_t> pids_before = MemberPids(before);

  c->KillController();
  const int64_t restarted = NowMs();
  ASSERT_TRUE(c->StartController().ok());
  json after = c->WaitReady("tiny", seconds(60));
  ASSERT_FALSE(after.is_null()) << c->LogTails();
  Timing("controller restart -> ready", NowMs() - restarted);
  EXPECT_EQ(after["generation"], 1);
  EXPECT_EQ(MemberPids(after), pids_before);
  std::vector<store::RunRecord> runs = Runs(*c, "tiny");
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].state, store::RunState::kReady);
  // No row lost: every event from before is still there.
  const std::vector<store::EventRecord> events_after = Events(*c);
  std::set<int64_t> ids;
  for (const auto& e : events_after) ids.insert(e.id);
  for (const auto& e : events_before) EXPECT_TRUE(ids.count(e.id)) << e.id << " " << e.message;
  EXPECT_GT(events_after.size(), events_before.size());
  ASSERT_TRUE(c->Complete("tiny", {3, 1, 4}, 3).ok());
  // The database is intact.
  store::StoreOptions check;
  check.path = c->db_path();
  check.exclusive_lock = false;
  check.full_integrity_check = true;
  EXPECT_TRUE(store::Store::Open(check, RealClock::Get()).ok());
}

TEST(ClusterTest, ARankThatNeverJoinsFailsClearlyWithoutHanging) {
  // Agent 1 runs a "shard" that never joins the group.
  const std::string fake =
      ::testing::TempDir() + "/never-joins-" + std::to_string(getpid()) + ".sh";
  {
    std::ofstream script(fake);
    script << "#!/bin/sh\nexec sleep 1000\n";
  }
  std::filesystem::permissions(fake, std::filesystem::perms::owner_all);
  ClusterOptions options = Agents(2);
  options.shard_binary_override[1] = fake;
  options.controller_flags = {"--restart-budget", "1", "--backoff-initial-ms", "200"};
  START_CLUSTER(c, options);
  const int64_t t0 = NowMs();
  ASSERT_EQ(c->Deploy("tiny", 2, {{"rendezvous_timeout_ms", 3000}}, {"n0", "n1"}), 202);
  json failed = c->WaitModel(
      "tiny", [](const json& x) { return x["state"] == "failed"; }, seconds(40));
  ASSERT_FALSE(failed.is_null()) << c->LogTails();
  Timing("rank never joins -> failed (2 runs)", NowMs() - t0);
  std::vector<store::RunRecord> runs = Runs(*c, "tiny");
  ASSERT_EQ(runs.size(), 2u);
  for (const store::RunRecord& run : runs) {
    EXPECT_THAT(run.end_reason, HasSubstr("rank 0 on node n0 failed")) << run.end_reason;
    EXPECT_THAT(run.end_reason, HasSubstr("never joined the rendezvous: rank 1 (node n1)"))
        << run.end_reason;
  }
  EXPECT_THAT(failed["last_error"].get<std::string>(), HasSubstr("restart budget exhausted"));
  EXPECT_THAT(failed["last_error"].get<std::string>(),
              HasSubstr("never joined the rendezvous: rank 1 (node n1)"));
  // Nothing is left running.
  EXPECT_TRUE(WaitUntil([&] { return c->ShardPids().empty(); }, seconds(10)));
  std::filesystem::remove(fake);
}

TEST(ClusterTest, PartitionedAgentIsDeclaredDeadAndItsStaleGenerationIsIgnoredAfterHealing) {
  START_CLUSTER(c, Agents(3));
  if (!c->netns()) GTEST_SKIP() << "partitions need root and network namespaces";
  ASSERT_EQ(c->Deploy("tiny", 2, json::object(), {}), 202);
  json m = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  // Partition the node of rank 1.
  const std::string victim_node = m["members"][1]["node"].get<std::string>();
  const int victim = victim_node == "n0" ? 0 : (victim_node == "n1" ? 1 : 2);
  const std::vector<pid_t> stale = c->ShardPids(victim);
  ASSERT_EQ(stale.size(), 1u);

  const int64_t cut = NowMs();
  ASSERT_TRUE(c->SetPartitioned(victim, true).ok());
  ASSERT_TRUE(
      WaitUntil([&] { return c->Node(victim_node).value("state", "") == "dead"; }, seconds(10)));
  Timing("partition -> node dead", NowMs() - cut);
  json again = c->WaitModel(
      "tiny",
      [](const json& x) { return x["state"] == "ready" && x["generation"].get<int>() >= 2; },
      seconds(90));
  ASSERT_FALSE(again.is_null()) << c->LogTails();
  Timing("partition -> ready on the other nodes", NowMs() - cut);
  for (const json& member : again["members"]) EXPECT_NE(member["node"], victim_node);
  const int generation = again["generation"].get<int>();

  ASSERT_TRUE(c->SetPartitioned(victim, false).ok());
  ASSERT_TRUE(
      WaitUntil([&] { return c->Node(victim_node).value("state", "") == "alive"; }, seconds(30)))
      << c->LogTails();
  // The old generation's shard on the healed node is gone (stopped by the agent or the
  // controller) and did not disturb the serving group.
  EXPECT_TRUE(WaitUntil([&] { return c->ShardPids(victim).empty(); }, seconds(20)))
      << c->LogTails();
  json after = c->Model("tiny");
  EXPECT_EQ(after["state"], "ready");
  EXPECT_EQ(after["generation"], generation);
  ASSERT_TRUE(c->Complete("tiny", {2, 7, 1}, 3).ok());
}

TEST(ClusterTest, SecureClusterServesOverCurve) {
  ClusterOptions options = Agents(2);
  options.secure = true;
  START_CLUSTER(c, options);
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  ASSERT_FALSE(c->WaitReady("tiny", seconds(90)).is_null()) << c->LogTails();
  Result<std::vector<int>> tokens = c->Complete("tiny", {1, 2, 3}, 4);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();
  EXPECT_EQ(*tokens, ReferenceTokens(*c, {1, 2, 3}, 4, 2));
  // The controller knows each agent's authenticated key (used for the rank-0 data plane).
  json n0 = c->Node("n0");
  ASSERT_FALSE(n0.is_null());
  EXPECT_EQ(n0["state"], "alive");
}

TEST(ClusterTest, TwoDeploymentsOnFourNodes) {
  START_CLUSTER(c, Agents(4));
  ASSERT_EQ(c->Deploy("alpha", 2), 202);
  ASSERT_EQ(c->Deploy("beta", 2, {{"max_batch", 4}}), 202);
  json a = c->WaitReady("alpha", seconds(90));
  json b = c->WaitReady("beta", seconds(90));
  ASSERT_FALSE(a.is_null()) << c->LogTails();
  ASSERT_FALSE(b.is_null()) << c->LogTails();
  std::set<std::string> nodes;
  for (const json& member : a["members"]) nodes.insert(member["node"].get<std::string>());
  for (const json& member : b["members"]) nodes.insert(member["node"].get<std::string>());
  EXPECT_EQ(nodes.size(), 4u);
  ASSERT_TRUE(c->Complete("alpha", {1, 2}, 3).ok());
  ASSERT_TRUE(c->Complete("beta", {1, 2}, 3).ok());
  EXPECT_EQ(c->ShardPids().size(), 4u);
  Result<http::ClientResponse> list = c->Get("/api/v1/models");
  ASSERT_TRUE(list.ok());
  EXPECT_EQ((*list->Json())["models"].size(), 2u);
}

// `spark-model tiny DIR --mtp`: the tiny GLM checkpoint with an MTP (nextn) layer.
Status WriteTinyMtpModel(const std::string& dir) {
  SpawnOptions options;
  options.args = {FindBinaries().model_tool, "tiny", dir, "--mtp"};
  RealProcessLauncher launcher;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Process> p, launcher.Spawn(options));
  SPARK_ASSIGN_OR_RETURN(ExitInfo info, p->Wait());
  if (!info.success()) return Internal("spark-model tiny --mtp: " + info.ToString());
  return Status::Ok();
}

// The value of the sample `series` (name with labels) in a Prometheus exposition; -1 if absent.
double Sample(const std::string& exposition, const std::string& series) {
  std::stringstream lines(exposition);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return -1;
}

std::string ChatContent(Cluster& c, const std::string& model, int* completion_tokens) {
  json request = {
      {"model", model},     {"messages", {{{"role", "user"}, {"content", "Hello, who are you?"}}}},
      {"max_tokens", 10},   {"temperature", 0},
      {"ignore_eos", true}, {"chat_template_kwargs", {{"enable_thinking", false}}}};
  Result<http::ClientResponse> chat = c.Post("/v1/chat/completions", request);
  if (!chat.ok() || chat->status != 200) {
    ADD_FAILURE() << model << ": " << (chat.ok() ? chat->body : chat.status().ToString());
    return "";
  }
  json answer = json::parse(chat->body);
  *completion_tokens = answer["usage"]["completion_tokens"].get<int>();
  return answer["choices"][0]["message"]["content"].get<std::string>();
}

TEST(ClusterTest, SpeculativeDecodingServesTheSameGreedyOutputAndCountsDrafts) {
  START_CLUSTER(c, Agents(4));
  const std::string mtp_dir = c->root() + "/model-mtp";
  ASSERT_TRUE(WriteTinyMtpModel(mtp_dir).ok());
  auto deploy = [&](const std::string& name, const json& options) {
    Result<http::ClientResponse> r = c->Post(
        "/api/v1/models", {{"name", name}, {"path", mtp_dir}, {"tp", 2}, {"options", options}});
    return r.ok() ? r->status : 0;
  };
  ASSERT_EQ(deploy("spec", {{"speculative", {{"steps", 2}, {"topk", 1}}}}), 202);
  ASSERT_EQ(deploy("plain", json::object()), 202);
  json spec = c->WaitReady("spec", seconds(120));
  ASSERT_FALSE(spec.is_null()) << c->LogTails();
  ASSERT_FALSE(c->WaitReady("plain", seconds(120)).is_null()) << c->LogTails();
  EXPECT_EQ(spec["options"]["speculative"], json({{"steps", 2}, {"topk", 1}, {"draft_tokens", 3}}));
  ASSERT_TRUE(spec["speculative"].is_object()) << spec.dump();
  EXPECT_TRUE(c->Model("plain")["speculative"].is_null());

  // Greedy: speculation changes the speed, never the tokens.
  const std::vector<int> prompt = {1, 2, 3, 4, 5};
  Result<std::vector<int>> with = c->Complete("spec", prompt, 16);
  Result<std::vector<int>> without = c->Complete("plain", prompt, 16);
  ASSERT_TRUE(with.ok()) << with.status().ToString() << c->LogTails();
  ASSERT_TRUE(without.ok()) << without.status().ToString();
  ASSERT_EQ(with->size(), 16u);
  EXPECT_EQ(*with, *without);
  int spec_tokens = 0, plain_tokens = 0;
  const std::string spec_text = ChatContent(*c, "spec", &spec_tokens);
  const std::string plain_text = ChatContent(*c, "plain", &plain_tokens);
  EXPECT_EQ(spec_tokens, 10);
  EXPECT_EQ(plain_tokens, 10);
  EXPECT_EQ(spec_text, plain_text);

  // Rank 0 reports its counters about once a second.
  const std::string drafted = "spark_spec_drafted_tokens_total{model=\"spec\"}";
  std::string metrics;
  ASSERT_TRUE(WaitUntil(
      [&] {
        Result<http::ClientResponse> r = c->Get("/metrics");
        if (r.ok()) metrics = r->body;
        return Sample(metrics, drafted) > 0;
      },
      seconds(10)))
      << metrics;
  const double verify_steps = Sample(metrics, "spark_spec_verify_steps_total{model=\"spec\"}");
  const double accepted = Sample(metrics, "spark_spec_accepted_tokens_total{model=\"spec\"}");
  EXPECT_GT(verify_steps, 0);
  EXPECT_GE(accepted, 0);
  EXPECT_LE(accepted, Sample(metrics, drafted));
  // A chain of 2 drafts: each verify step emits 1 to 3 tokens.
  const double length = Sample(metrics, "spark_spec_acceptance_length{model=\"spec\"}");
  EXPECT_GE(length, 1.0);
  EXPECT_LE(length, 3.0);
  EXPECT_DOUBLE_EQ(length, accepted / verify_steps + 1.0);
  EXPECT_GT(Sample(metrics, "spark_spec_draft_seconds_total{model=\"spec\"}"), 0);
  EXPECT_GT(Sample(metrics, "spark_spec_verify_seconds_total{model=\"spec\"}"), 0);
  EXPECT_EQ(Sample(metrics, "spark_spec_drafted_tokens_total{model=\"plain\"}"), -1);
  json counted = c->Model("spec")["speculative"];
  EXPECT_GT(counted["drafted_tokens"].get<int64_t>(), 0) << counted.dump();
  std::printf(
      "[speculative] verify steps %.0f, accepted %.0f of %.0f drafts, acceptance length "
      "%.3f\n",
      verify_steps, accepted, Sample(metrics, drafted), length);
}

TEST(ClusterTest, SpeculativeDecodingOnAModelWithoutMtpFailsNamingTheFix) {
  ClusterOptions options = Agents(1);
  options.controller_flags = {"--restart-budget", "1"};
  START_CLUSTER(c, options);
  ASSERT_EQ(c->Deploy("tiny", 1, {{"speculative", {{"steps", 2}}}}), 202);
  json m = c->WaitModel(
      "tiny",
      [](const json& x) {
        return x["last_error"].get<std::string>().find("MTP") != std::string::npos;
      },
      seconds(60));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  EXPECT_THAT(m["last_error"].get<std::string>(),
              HasSubstr("has no MTP layer (num_nextn_predict_layers = 0): deploy without "
                        "speculative"));
}

}  // namespace
}  // namespace spark::cluster
