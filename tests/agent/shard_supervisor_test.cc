#include "agent/shard_supervisor.h"

#include <signal.h>

#include <gtest/gtest.h>

#include "agent/shard_status_file.h"
#include "common/fake_process.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

class ShardSupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(ShardsDir(dir_.path().string()));
    std::filesystem::create_directories(LogsDir(dir_.path().string()));
    options_.state_dir = dir_.path().string();
    options_.shard_binary = "/opt/spark/bin/spark-shard";
    options_.controller_endpoint = "tcp://10.0.0.1:7440";
    options_.node_name = "n1";
    options_.keys_dir = "/etc/spark/keys";
    options_.boot_id = "boot-1";
    options_.nccl_env = {{"NCCL_SOCKET_IFNAME", "eth0"}, {"NCCL_NVLS_ENABLE", "0"}};
    supervisor_ = std::make_unique<ShardSupervisor>(
        options_, &launcher_, &poller_, &clock_,
        [this](const spark::v1::ShardStatus& s) { statuses_.push_back(s); });
  }

  spark::v1::ShardAssignment Assignment(uint32_t rank = 1) {
    spark::v1::ShardAssignment a;
    a.set_deployment("demo");
    a.set_run_id(9);
    a.set_generation(2);
    a.set_rank(rank);
    a.set_world_size(2);
    (*a.mutable_nccl_env())["NCCL_SOCKET_IFNAME"] = "ib0";
    (*a.mutable_nccl_env())["NCCL_NVLS_ENABLE"] = "1";
    return a;
  }

  // Runs the poller until nothing is ready.
  void Drain() {
    while (*poller_.PollOnce(milliseconds(0)) > 0) {
    }
  }

  testing::TempDir dir_;
  SupervisorOptions options_;
  FakeProcessLauncher launcher_;
  Poller poller_;
  ManualClock clock_;
  std::vector<spark::v1::ShardStatus> statuses_;
  std::unique_ptr<ShardSupervisor> supervisor_;
};

TEST_F(ShardSupervisorTest, SpawnArgumentsAndEnvironment) {
  supervisor_->Start(Assignment());
  ASSERT_EQ(launcher_.spawn_count(), 1);
  const SpawnOptions& o = launcher_.process(0)->options();
  const ShardPaths paths = ShardPathsFor(dir_.path().string(), "demo-2-1");
  EXPECT_EQ(o.args,
            (std::vector<std::string>{"/opt/spark/bin/spark-shard", "--assignment",
                                      paths.assignment, "--controller", "tcp://10.0.0.1:7440",
                                      "--node", "n1", "--keys", "/etc/spark/keys"}));
  // The assignment's NCCL variables override the node's, except NVLS, which is always off.
  EXPECT_EQ(o.env.at("NCCL_SOCKET_IFNAME"), "ib0");
  EXPECT_EQ(o.env.at("NCCL_NVLS_ENABLE"), "0");
  EXPECT_EQ(o.env.at("SPARK_SHARD_STATUS_FILE"), paths.status);
  EXPECT_EQ(o.env.at("SPARK_MOE_TUNING_FILE"), dir_.File("moe_tuning.json"));
  EXPECT_EQ(o.stdout_path, paths.log);
  EXPECT_EQ(o.stderr_path, paths.log);
  EXPECT_TRUE(o.new_process_group);
  EXPECT_TRUE(o.kill_on_parent_death);
  EXPECT_NE(std::find(o.unset_env.begin(), o.unset_env.end(), "NOTIFY_SOCKET"), o.unset_env.end());
  ASSERT_EQ(statuses_.size(), 1u);
  EXPECT_EQ(statuses_[0].phase(), spark::v1::SHARD_PHASE_STARTING);
  EXPECT_EQ(statuses_[0].pid(), launcher_.process(0)->pid());
  EXPECT_EQ(statuses_[0].run_id(), 9u);
  EXPECT_EQ(statuses_[0].started_unix_ms(),
            std::chrono::duration_cast<milliseconds>(clock_.WallNow().time_since_epoch()).count());
}

TEST_F(ShardSupervisorTest, RankZeroGetsTheDataListenAddressAndAdvertisedHost) {
  supervisor_->Start(Assignment(0));
  spark::v1::ShardAssignment written;
  ASSERT_TRUE(written.ParseFromString(
      testing::ReadFile(ShardPathsFor(dir_.path().string(), "demo-2-0").assignment)));
  EXPECT_EQ(written.data_listen_address(), "0.0.0.0:0");
  EXPECT_EQ(written.nccl_env().at("NCCL_NVLS_ENABLE"), "0");

  SupervisorOptions o = options_;
  o.data_listen = "10.1.2.3:7450";
  o.insecure = true;
  spark::v1::ShardAssignment effective = EffectiveAssignment(o, Assignment(0));
  EXPECT_EQ(effective.data_listen_address(), "10.1.2.3:7450");
  const SpawnOptions spawn = ShardSpawnOptions(o, effective, ShardPathsFor("/s", "x"));
  EXPECT_EQ(std::vector<std::string>(spawn.args.end() - 3, spawn.args.end()),
            (std::vector<std::string>{"--insecure", "--advertise-host", "10.1.2.3"}));
  // Rank 1 keeps what the controller sent.
  EXPECT_EQ(EffectiveAssignment(o, Assignment(1)).data_listen_address(), "");
}

TEST_F(ShardSupervisorTest, ExitIsReportedFromThePidfd) {
  supervisor_->Start(Assignment());
  auto control = launcher_.process(0);
  testing::WriteFile(ShardPathsFor(dir_.path().string(), "demo-2-1").log,
                     "loading\nboom: out of memory\n");
  spark::v1::ShardStatus own;
  own.set_phase(spark::v1::SHARD_PHASE_FAILED);
  own.set_failure_reason("rendezvous: ranks 1 never joined");
  ASSERT_TRUE(
      WriteShardStatusFile(ShardPathsFor(dir_.path().string(), "demo-2-1").status, own).ok());
  control->Exit(ExitInfo::Signal(SIGSEGV));
  Drain();
  ASSERT_EQ(statuses_.size(), 2u);
  const spark::v1::ShardStatus& s = statuses_[1];
  EXPECT_EQ(s.phase(), spark::v1::SHARD_PHASE_FAILED);
  EXPECT_EQ(s.signal(), SIGSEGV);
  EXPECT_EQ(s.log_tail_size(), 2);
  EXPECT_EQ(s.log_tail(1), "boom: out of memory");
  EXPECT_EQ(s.failure_reason(),
            "rendezvous: ranks 1 never joined (spark-shard killed by signal 11 (SIGSEGV))");
  EXPECT_TRUE(control->reaped());
  EXPECT_EQ(supervisor_->size(), 0u);
  EXPECT_FALSE(std::filesystem::exists(ShardPathsFor(dir_.path().string(), "demo-2-1").pid));
}

TEST_F(ShardSupervisorTest, StopEscalatesToSigkillAfterGrace) {
  supervisor_->Start(Assignment());
  auto control = launcher_.process(0);
  control->set_ignores_sigterm(true);
  const ShardKey key{"demo", 2, 1};
  ASSERT_TRUE(supervisor_->Stop(key, seconds(10), "test"));
  EXPECT_EQ(control->signals(), std::vector<int>{SIGTERM});
  ASSERT_TRUE(supervisor_->NextDeadline().has_value());
  EXPECT_EQ(*supervisor_->NextDeadline(), clock_.Now() + seconds(10));
  clock_.Advance(seconds(9));
  supervisor_->Tick(clock_.Now());
  Drain();
  EXPECT_EQ(control->signals().size(), 1u);
  EXPECT_TRUE(supervisor_->IsRunning(key));
  clock_.Advance(seconds(1));
  supervisor_->Tick(clock_.Now());
  Drain();
  EXPECT_EQ(control->signals()[1], SIGKILL);
  ASSERT_EQ(statuses_.size(), 2u);
  EXPECT_EQ(statuses_[1].phase(), spark::v1::SHARD_PHASE_STOPPED);
  EXPECT_EQ(statuses_[1].signal(), SIGKILL);
  EXPECT_TRUE(statuses_[1].failure_reason().empty());
  EXPECT_FALSE(supervisor_->NextDeadline().has_value());
  EXPECT_FALSE(supervisor_->Stop(key, seconds(1), "again"));
}

TEST_F(ShardSupervisorTest, SpawnFailureIsReportedFailedWithTheFix) {
  launcher_.FailNextSpawn(NotFound("spark-shard: no such file"));
  supervisor_->Start(Assignment());
  ASSERT_EQ(statuses_.size(), 1u);
  EXPECT_EQ(statuses_[0].phase(), spark::v1::SHARD_PHASE_FAILED);
  EXPECT_NE(statuses_[0].failure_reason().find("--shard-binary"), std::string::npos);
  EXPECT_EQ(supervisor_->size(), 0u);
  EXPECT_FALSE(std::filesystem::exists(ShardPathsFor(dir_.path().string(), "demo-2-1").assignment));
}

TEST_F(ShardSupervisorTest, SummariesUseTheShardStatusFile) {
  supervisor_->Start(Assignment(0));
  std::vector<spark::v1::ShardSummary> summaries = supervisor_->Summaries();
  ASSERT_EQ(summaries.size(), 1u);
  EXPECT_EQ(summaries[0].phase(), spark::v1::SHARD_PHASE_UNSPECIFIED);  // no status file yet
  spark::v1::ShardStatus ready;
  ready.set_phase(spark::v1::SHARD_PHASE_READY);
  ready.set_data_endpoint("tcp://10.0.0.2:41000");
  ASSERT_TRUE(
      WriteShardStatusFile(ShardPathsFor(dir_.path().string(), "demo-2-0").status, ready).ok());
  summaries = supervisor_->Summaries();
  EXPECT_EQ(summaries[0].phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_EQ(summaries[0].data_endpoint(), "tcp://10.0.0.2:41000");
  EXPECT_EQ(summaries[0].run_id(), 9u);
  EXPECT_EQ(summaries[0].pid(), launcher_.process(0)->pid());
}

TEST_F(ShardSupervisorTest, DestructionKillsRunningShards) {
  supervisor_->Start(Assignment());
  auto control = launcher_.process(0);
  supervisor_.reset();
  EXPECT_TRUE(control->exited());
  EXPECT_TRUE(control->handle_destroyed());
  EXPECT_EQ(control->exit_info()->signal, SIGKILL);
}

}  // namespace
}  // namespace spark::agent
