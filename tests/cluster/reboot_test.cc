// Reboot and power-cut recovery with the real binaries started exactly as the packaged systemd
// units start them (ExecStart and Environment of systemd/*.service, the packaged default configs,
// CURVE keys), three agents each in its own network namespace when root:
//  - a node "reboots": its agent and shards are killed with SIGKILL, it gets a new boot id and
//    its agent starts again after a delay;
//  - a "power cut": the controller, every agent and every shard are killed at once and started
//    again in random order.
// Each time the deployment must become ready again with no API call, and the runs table must keep
// every earlier run with the reason it ended. The times are printed as [timing] lines.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/process.h"
#include "tests/cluster/cluster.h"

namespace spark::cluster {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

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
}

ClusterOptions PackagedCluster() {
  ClusterOptions options;
  options.agents = 3;
  options.secure = true;
  options.packaged_units = true;
  return options;
}

std::vector<store::RunRecord> Runs(Cluster& c) {
  store::RunFilter filter;
  filter.deployment = "tiny";
  Result<std::vector<store::RunRecord>> runs =
      c.db().Read([&](store::ReadTxn& txn) { return txn.ListRuns(filter); });
  EXPECT_TRUE(runs.ok()) << runs.status().ToString();
  if (!runs.ok()) return {};
  std::reverse(runs->begin(), runs->end());  // oldest first
  return *runs;
}

// Every run of `before` is still there unchanged except for its end; every run but the newest
// has ended with a reason; generations count up without a gap; the newest is ready.
void ExpectRunHistoryComplete(Cluster& c, const std::vector<store::RunRecord>& before) {
  std::vector<store::RunRecord> runs = Runs(c);
  ASSERT_GT(runs.size(), before.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    const store::RunRecord& r = runs[i];
    std::printf(
        "[runs] generation %lld on %s: %s%s\n", static_cast<long long>(r.generation),
        [&] {
          std::string nodes;
          for (const std::string& n : r.placement) nodes += (nodes.empty() ? "" : ",") + n;
          return nodes;
        }()
            .c_str(),
        r.ended_at_ms > 0 ? "ended: " : "open", r.end_reason.c_str());
    EXPECT_EQ(r.generation, static_cast<int64_t>(i) + 1) << "a run row is missing";
    if (i < before.size()) {
      EXPECT_EQ(r.id, before[i].id);
      EXPECT_EQ(r.started_at_ms, before[i].started_at_ms);
      EXPECT_EQ(r.placement, before[i].placement);
    }
    if (i + 1 < runs.size()) {
      EXPECT_GT(r.ended_at_ms, 0) << "generation " << r.generation << " never ended";
      EXPECT_FALSE(r.end_reason.empty()) << "generation " << r.generation << " has no reason";
    } else {
      EXPECT_EQ(r.ended_at_ms, 0);
      EXPECT_GT(r.ready_at_ms, 0) << "the newest run is not ready";
    }
  }
  std::fflush(stdout);
}

json WaitNewGeneration(Cluster& c, int64_t after, std::chrono::milliseconds timeout) {
  return c.WaitModel(
      "tiny",
      [after](const json& m) {
        return m.value("state", "") == "ready" && m.value("generation", int64_t{0}) > after;
      },
      timeout);
}

TEST(RebootTest, UnitFilesGiveTheCommandLines) {
  Result<std::vector<std::string>> agent =
      UnitExecStart(std::string(SPARK_SOURCE_DIR) + "/systemd/spark-agent.service");
  ASSERT_TRUE(agent.ok()) << agent.status().ToString();
  EXPECT_EQ(*agent, (std::vector<std::string>{"/usr/bin/spark-agent", "--config",
                                              "/etc/spark/agent.toml"}));
  const std::string text = "a = 1\n[log]\nlevel = \"info\"\n";
  EXPECT_EQ(RewriteToml(text, {{"a", "2"}, {"b", "\"x\""}, {"log.sink", "\"stderr\""}}),
            "a = 2\nb = \"x\"\n[log]\nlevel = \"info\"\nsink = \"stderr\"\n");
}

TEST(RebootTest, NodeRebootRecoversWithoutManualCalls) {
  START_CLUSTER(c, PackagedCluster());
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  json m = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  const int64_t generation = m["generation"].get<int64_t>();
  const std::string victim_node = m["members"][1]["node"].get<std::string>();
  const int victim = std::stoi(victim_node.substr(1));
  const std::vector<store::RunRecord> before = Runs(*c);
  const std::string boot_id = c->Node(victim_node).value("boot_id", "");
  ASSERT_FALSE(boot_id.empty());

  const int64_t t0 = NowMs();
  c->KillAgent(victim, /*with_shards=*/true);
  ASSERT_TRUE(c->ShardPids(victim).empty());
  std::this_thread::sleep_for(seconds(2));  // the node is down
  ASSERT_TRUE(c->StartAgent(victim, /*new_boot_id=*/true).ok());
  const int64_t t_up = NowMs();
  json after = WaitNewGeneration(*c, generation, seconds(120));
  ASSERT_FALSE(after.is_null()) << c->LogTails();
  Timing("node reboot: kill -9 -> ready again", NowMs() - t0);
  Timing("node reboot: agent restarted -> ready again", NowMs() - t_up);
  EXPECT_NE(c->Node(victim_node).value("boot_id", ""), boot_id) << "the reboot was not seen";
  ASSERT_TRUE(c->Complete("tiny", {1, 2, 3}, 3).ok()) << c->LogTails();
  ExpectRunHistoryComplete(*c, before);
}

TEST(RebootTest, PowerCutRecoversWithoutManualCalls) {
  START_CLUSTER(c, PackagedCluster());
  ASSERT_EQ(c->Deploy("tiny", 2), 202);
  json m = c->WaitReady("tiny", seconds(90));
  ASSERT_FALSE(m.is_null()) << c->LogTails();
  const int64_t generation = m["generation"].get<int64_t>();
  const std::vector<store::RunRecord> before = Runs(*c);

  const int64_t t0 = NowMs();
  c->KillController();
  for (int i = 0; i < c->agents(); ++i) c->KillAgent(i, /*with_shards=*/true);
  ASSERT_TRUE(c->ShardPids().empty());
  Timing("power cut: everything killed", NowMs() - t0);

  // Power back: every process starts in a random order, up to a second apart.
  const unsigned seed = std::random_device{}();
  std::mt19937 random(seed);
  std::vector<int> order = {-1};  // -1: the controller
  for (int i = 0; i < c->agents(); ++i) order.push_back(i);
  std::shuffle(order.begin(), order.end(), random);
  std::string order_text;
  const int64_t t_power = NowMs();
  for (int who : order) {
    std::this_thread::sleep_for(milliseconds(std::uniform_int_distribution<int>(0, 1000)(random)));
    if (who < 0) {
      ASSERT_TRUE(c->StartController().ok()) << c->LogTails();
      order_text += "controller ";
    } else {
      ASSERT_TRUE(c->StartAgent(who, /*new_boot_id=*/true).ok());
      order_text += c->node(who) + " ";
    }
  }
  std::printf("[power] start order (seed %u): %s\n", seed, order_text.c_str());
  json after = WaitNewGeneration(*c, generation, seconds(180));
  ASSERT_FALSE(after.is_null()) << c->LogTails();
  Timing("power cut: power back -> ready again", NowMs() - t_power);
  ASSERT_TRUE(c->Complete("tiny", {1, 2, 3}, 3).ok()) << c->LogTails();
  ExpectRunHistoryComplete(*c, before);
}

// Runs a command to its end; true when it exited with status 0.
bool RunCommand(const std::vector<std::string>& args, const std::string& log) {
  RealProcessLauncher launcher;
  SpawnOptions options;
  options.args = args;
  options.stdout_path = log;
  options.stderr_path = log;
  Result<std::unique_ptr<Process>> process = launcher.Spawn(options);
  if (!process.ok()) return false;
  Result<std::optional<ExitInfo>> info = (*process)->WaitFor(seconds(30));
  return info.ok() && info->has_value() && (*info)->success();
}

bool FileContains(const std::string& path, const std::string& text) {
  std::ifstream in(path);
  std::stringstream content;
  content << in.rdbuf();
  return content.str().find(text) != std::string::npos;
}

// A node whose agent comes back with a key pair the controller has never seen is refused at the
// CURVE handshake (it stays dead, the controller logs the refusal) until `sparkctl keys trust`
// accepts the new key; then it joins without a restart of anything.
TEST(RebootTest, AnAgentWithAnUnknownKeyIsRefusedUntilTrustedWithSparkctl) {
  START_CLUSTER(c, PackagedCluster());
  const std::string agent_keys = c->root() + "/keys/n2";
  const std::string controller_keys = c->root() + "/keys/controller";
  const std::string sparkctl = std::string(SPARK_BINARY_DIR) + "/controller/sparkctl";
  c->KillAgent(2, /*with_shards=*/true);
  ASSERT_TRUE(RunCommand({FindBinaries().agent, "keygen", "--keys", agent_keys, "--force"},
                         c->root() + "/keygen.log"));
  ASSERT_TRUE(c->StartAgent(2, /*new_boot_id=*/true).ok());
  ASSERT_TRUE(WaitUntil([&] { return c->Node("n2").value("state", "") == "dead"; }, seconds(15)))
      << c->LogTails();
  std::this_thread::sleep_for(seconds(3));
  EXPECT_EQ(c->Node("n2").value("state", ""), "dead") << "an unknown key got through";
  EXPECT_TRUE(c->AgentRunning(2));
  EXPECT_TRUE(FileContains(c->controller_log(), "unknown CURVE public key"));

  const int64_t t0 = NowMs();
  ASSERT_TRUE(RunCommand({sparkctl, "keys", "--keys", controller_keys, "trust", "n2",
                          agent_keys + "/agent.pub", "--force"},
                         c->root() + "/sparkctl.log"))
      << "sparkctl keys trust failed; see " << c->root() << "/sparkctl.log";
  ASSERT_TRUE(WaitUntil([&] { return c->Node("n2").value("state", "") == "alive"; }, seconds(40)))
      << c->LogTails();
  Timing("sparkctl keys trust -> node alive", NowMs() - t0);
}

}  // namespace
}  // namespace spark::cluster
