// Stress (label `stress`, only run when asked for: ctest -C stress -L stress): random kill -9 of
// the controller, agents and shards while a tp=2 deployment runs; at the end the deployment is
// ready again, no shard is left over, the database passes integrity_check and holds exactly one
// open run. SPARK_STRESS_KILLS (default 200) and SPARK_STRESS_SEED (default: random, printed) tune
// it.
#include <signal.h>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <set>
#include <thread>

#include "common/clock.h"
#include "tests/cluster/cluster.h"

namespace spark::cluster {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(ClusterStressTest, RandomKillsEndReadyWithoutOrphans) {
  if (!FindBinaries().missing.empty()) {
    GTEST_SKIP() << "binaries not built: " << FindBinaries().missing;
  }
  const char* kills_env = std::getenv("SPARK_STRESS_KILLS");
  const int kills = kills_env != nullptr ? std::atoi(kills_env) : 200;
  const char* seed_env = std::getenv("SPARK_STRESS_SEED");
  const uint64_t seed =
      seed_env != nullptr ? std::strtoull(seed_env, nullptr, 10) : std::random_device{}();
  std::printf("[stress] %d kills, seed %llu\n", kills, static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);

  ClusterOptions options;
  options.agents = 3;
  options.controller_flags = {"--restart-budget", "100000", "--backoff-initial-ms", "200",
                              "--backoff-max-ms", "2000"};
  Cluster c(options);
  Status started = c.Start();
  ASSERT_TRUE(started.ok()) << started.ToString();
  ASSERT_EQ(c.Deploy("tiny", 2), 202);
  ASSERT_FALSE(c.WaitReady("tiny", seconds(90)).is_null()) << c.LogTails();

  int controller_kills = 0, agent_kills = 0, shard_kills = 0;
  for (int i = 0; i < kills; ++i) {
    const int target = static_cast<int>(rng() % 10);
    if (target == 0) {
      c.KillController();
      ++controller_kills;
      std::this_thread::sleep_for(milliseconds(rng() % 500));
      ASSERT_TRUE(c.StartController().ok()) << c.LogTails();
    } else if (target <= 3) {
      const int agent = static_cast<int>(rng() % static_cast<uint64_t>(c.agents()));
      c.KillAgent(agent, /*with_shards=*/rng() % 2 == 0);
      ++agent_kills;
      std::this_thread::sleep_for(milliseconds(rng() % 500));
      ASSERT_TRUE(c.StartAgent(agent, /*new_boot_id=*/rng() % 4 == 0).ok());
    } else {
      std::vector<pid_t> shards = c.ShardPids();
      if (!shards.empty()) {
        kill(shards[rng() % shards.size()], SIGKILL);
        ++shard_kills;
      }
    }
    std::this_thread::sleep_for(milliseconds(rng() % 1500));
  }
  std::printf("[stress] killed controller %d, agents %d, shards %d times\n", controller_kills,
              agent_kills, shard_kills);

  const int64_t t0 = NowMs();
  json m = c.WaitReady("tiny", seconds(180));
  ASSERT_FALSE(m.is_null()) << c.LogTails();
  std::printf("[timing] stress end -> ready: %lld ms\n", static_cast<long long>(NowMs() - t0));
  Result<std::vector<int>> tokens = c.Complete("tiny", {1, 2, 3}, 3);
  ASSERT_TRUE(tokens.ok()) << tokens.status().ToString();

  // No orphan: exactly the current members run.
  std::set<pid_t> members;
  for (const json& member : m["members"]) members.insert(member["pid"].get<pid_t>());
  ASSERT_TRUE(WaitUntil(
      [&] {
        std::vector<pid_t> live = c.ShardPids();
        return std::set<pid_t>(live.begin(), live.end()) == members;
      },
      seconds(60)))
      << c.LogTails();

  Result<std::vector<store::RunDetail>> open =
      c.db().Read([](store::ReadTxn& txn) { return txn.ListOpenRuns(); });
  ASSERT_TRUE(open.ok());
  EXPECT_EQ(open->size(), 1u);
  store::StoreOptions check;
  check.path = c.db_path();
  check.exclusive_lock = false;
  check.full_integrity_check = true;
  Result<std::unique_ptr<store::Store>> checked = store::Store::Open(check, RealClock::Get());
  EXPECT_TRUE(checked.ok()) << checked.status().ToString();
}

}  // namespace
}  // namespace spark::cluster
