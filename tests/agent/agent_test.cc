// The agent event loop against a fake controller (a ROUTER in the test speaking the wire
// protocol) with a fake spark-shard (a shell script) spawned by the real process launcher.
#include "agent/agent.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "agent/keys.h"
#include "agent/node_facts.h"
#include "agent/shard_files.h"
#include "agent/shard_status_file.h"
#include "agent/tokenizer_files.h"
#include "common/log.h"
#include "common/process.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "tests/agent/fake_controller.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;
using testing::FakeController;
using testing::Received;
using testing::TempDir;
using V1 = spark::v1::Envelope;

class FakeNotifier : public Notifier {
 public:
  void Notify(std::string_view state) override {
    std::lock_guard<std::mutex> lock(mu_);
    states_.emplace_back(state);
  }
  std::chrono::microseconds WatchdogInterval() override { return watchdog_; }
  std::vector<std::string> states() const {
    std::lock_guard<std::mutex> lock(mu_);
    return states_;
  }
  int Count(std::string_view prefix) const {
    int n = 0;
    for (const auto& s : states()) n += s.starts_with(prefix) ? 1 : 0;
    return n;
  }
  std::chrono::microseconds watchdog_{0};

 private:
  mutable std::mutex mu_;
  std::vector<std::string> states_;
};

bool IsRegistration(const Received& r) { return r.envelope.has_node_registration(); }

class AgentTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_FALSE(dir_.path().empty());
    model_ = testing::MakeModelDir(dir_.File("model"));
    testing::WriteFile(dir_.File("boot_id"), "boot-1\n");
    shard_binary_ = testing::WriteScript(dir_.File("bin/fake-shard"), testing::kFakeShardScript);
    // The fake shard must not inherit a real service manager socket from the test runner.
    ::setenv("NOTIFY_SOCKET", "/nonexistent/notify", 1);
    ASSERT_NO_FATAL_FAILURE(StartController({}));
  }

  void TearDown() override {
    StopAgent();
    controller_.reset();
    ::unsetenv("NOTIFY_SOCKET");
  }

  void StartController(FakeController::Options options) {
    Result<std::unique_ptr<FakeController>> c = FakeController::Start(options);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    controller_ = std::move(*c);
  }

  AgentOptions Options() const {
    AgentOptions o;
    o.controller = controller_->endpoint();
    o.node_name = "node-a";
    o.backend = spark::v1::BACKEND_CPU;
    o.state_dir = dir_.File("state");
    o.shard_binary = shard_binary_;
    o.insecure = true;
    o.boot_id_file = dir_.File("boot_id");
    o.heartbeat_ms = 100;
    o.reconnect_max_ms = 500;
    o.shutdown_grace_ms = 1000;
    o.nccl.socket_ifname = "lo";
    return o;
  }

  void StartAgent(AgentOptions options, std::optional<AgentKeys> keys = std::nullopt) {
    Result<NodeFacts> facts = CollectNodeFacts(options);
    ASSERT_TRUE(facts.ok()) << facts.status().ToString();
    AgentDependencies deps;
    deps.launcher = &launcher_;
    deps.notifier = &notifier_;
    Result<std::unique_ptr<Agent>> agent =
        Agent::Create(options, std::move(*facts), std::move(keys), deps);
    ASSERT_TRUE(agent.ok()) << agent.status().ToString();
    agent_ = std::move(*agent);
    thread_ = std::thread([this] { run_status_ = agent_->Run(); });
  }

  void StopAgent() {
    if (agent_ == nullptr) return;
    agent_->RequestStop();
    thread_.join();
    agent_.reset();
  }

  // Starts the agent and waits for its (acked) registration.
  void StartRegistered() {
    ASSERT_NO_FATAL_FAILURE(StartAgent(Options()));
    ASSERT_TRUE(controller_->WaitFor(IsRegistration, milliseconds(3000)).has_value());
  }

  spark::v1::ShardAssignment Assignment(const std::string& deployment, uint64_t generation,
                                        uint32_t rank = 0, uint32_t world = 2) const {
    spark::v1::ShardAssignment a;
    a.set_deployment(deployment);
    a.set_run_id(70 + generation);
    a.set_generation(generation);
    a.set_rank(rank);
    a.set_world_size(world);
    a.set_model_path(model_);
    a.set_backend(spark::v1::BACKEND_CPU);
    a.mutable_options()->set_tp(world);
    a.set_deadline_ms(60000);
    (*a.mutable_nccl_env())["NCCL_DEBUG"] = "WARN";
    return a;
  }

  void Assign(const spark::v1::ShardAssignment& a) {
    controller_->Send("agent/node-a", testing::AssignmentEnvelope(a));
  }

  std::optional<Received> WaitStatus(const std::string& deployment, uint64_t generation,
                                     spark::v1::ShardPhase phase, milliseconds timeout,
                                     size_t from = 0) {
    return controller_->WaitFor(
        [&](const Received& r) {
          return r.envelope.has_shard_status() &&
                 r.envelope.shard_status().deployment() == deployment &&
                 r.envelope.shard_status().generation() == generation &&
                 r.envelope.shard_status().phase() == phase;
        },
        timeout, from);
  }

  // Assigns and waits for STARTING; returns the shard's pid.
  pid_t StartShard(const spark::v1::ShardAssignment& a) {
    const size_t from = controller_->received_count();
    Assign(a);
    std::optional<Received> starting = WaitStatus(
        a.deployment(), a.generation(), spark::v1::SHARD_PHASE_STARTING, milliseconds(3000), from);
    EXPECT_TRUE(starting.has_value());
    if (!starting) return 0;
    return starting->envelope.shard_status().pid();
  }

  TempDir dir_;
  std::string model_;
  std::string shard_binary_;
  std::unique_ptr<FakeController> controller_;
  RealProcessLauncher launcher_;
  FakeNotifier notifier_;
  std::unique_ptr<Agent> agent_;
  std::thread thread_;
  Status run_status_;
};

TEST_F(AgentTest, RegistrationCarriesNodeFacts) {
  ASSERT_NO_FATAL_FAILURE(StartAgent(Options()));
  std::optional<Received> r = controller_->WaitFor(IsRegistration, milliseconds(3000));
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->routing_id, "agent/node-a");
  const V1& e = r->envelope;
  EXPECT_EQ(e.sender_id(), "agent/node-a");
  EXPECT_EQ(e.generation(), 0u);
  EXPECT_EQ(e.sequence(), 1u);
  EXPECT_NE(e.sender_incarnation(), 0u);
  const spark::v1::NodeRegistration& reg = e.node_registration();
  EXPECT_EQ(reg.node_name(), "node-a");
  EXPECT_EQ(reg.boot_id(), "boot-1");
  EXPECT_EQ(reg.agent_version(), "0.1.0");
  EXPECT_EQ(reg.backend(), spark::v1::BACKEND_CPU);
  EXPECT_TRUE(reg.gpus().empty());
  EXPECT_TRUE(reg.shards().empty());
  EXPECT_TRUE(reg.curve_public_key().empty());
  ASSERT_TRUE(reg.nccl_env().contains("NCCL_NVLS_ENABLE"));
  EXPECT_EQ(reg.nccl_env().at("NCCL_NVLS_ENABLE"), "0");
  EXPECT_EQ(reg.nccl_env().at("NCCL_SOCKET_IFNAME"), "lo");
  std::map<std::string, spark::v1::PreflightResult> checks;
  for (const auto& p : reg.preflight()) checks[p.check()] = p;
  ASSERT_TRUE(checks.contains("gpu_visible"));
  EXPECT_TRUE(checks["gpu_visible"].ok());
  EXPECT_EQ(checks["gpu_visible"].message(), "cpu backend: no GPU needed");
  ASSERT_TRUE(checks.contains("shard_binary"));
  EXPECT_TRUE(checks["shard_binary"].ok());
  ASSERT_TRUE(checks.contains("rdma"));
  EXPECT_TRUE(checks["rdma"].ok());
  ASSERT_TRUE(checks.contains("nccl_socket_ifname"));
  EXPECT_TRUE(checks["nccl_socket_ifname"].ok());
  ASSERT_TRUE(checks.contains("state_dir"));
  EXPECT_TRUE(checks["state_dir"].ok());
}

TEST_F(AgentTest, HeartbeatsAtTheAckedInterval) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const size_t from = controller_->received_count();
  std::this_thread::sleep_for(milliseconds(1050));
  std::vector<Received> beats = controller_->Bodies(V1::kHeartbeat, from);
  // 100 ms interval over ~1 s.
  EXPECT_GE(beats.size(), 8u);
  EXPECT_LE(beats.size(), 12u);
  for (size_t i = 1; i < beats.size(); ++i) {
    const auto gap = std::chrono::duration_cast<milliseconds>(beats[i].at - beats[i - 1].at);
    EXPECT_GE(gap.count(), 50) << "heartbeat " << i;
    EXPECT_LE(gap.count(), 250) << "heartbeat " << i;
    EXPECT_GT(beats[i].envelope.sequence(), beats[i - 1].envelope.sequence());
    EXPECT_GE(beats[i].envelope.heartbeat().monotonic_ms(),
              beats[i - 1].envelope.heartbeat().monotonic_ms() + 50);
  }
  ASSERT_FALSE(beats.empty());
  EXPECT_EQ(beats[0].envelope.heartbeat().node_name(), "node-a");
  EXPECT_EQ(beats[0].envelope.heartbeat().boot_id(), "boot-1");
  // Acked heartbeats never cause a re-registration.
  EXPECT_EQ(controller_->Bodies(V1::kNodeRegistration).size(), 1u);
}

TEST_F(AgentTest, ReadyOnlyAfterRegistrationAckAndWatchdogFromTheLoop) {
  controller_->set_ack_registrations(false);
  notifier_.watchdog_ = std::chrono::microseconds(100000);
  ASSERT_NO_FATAL_FAILURE(StartAgent(Options()));
  ASSERT_TRUE(controller_->WaitFor(IsRegistration, milliseconds(3000)).has_value());
  std::this_thread::sleep_for(milliseconds(500));
  EXPECT_EQ(notifier_.Count("READY=1"), 0);
  EXPECT_GE(notifier_.Count("WATCHDOG=1"), 5);  // every 50 ms
  EXPECT_GE(notifier_.Count("STATUS=registering"), 1);
  EXPECT_TRUE(controller_->Bodies(V1::kHeartbeat).empty());  // not registered: no heartbeats
  const auto acks_enabled = steady_clock::now();
  controller_->set_ack_registrations(true);
  ASSERT_TRUE(
      testing::WaitUntil([&] { return notifier_.Count("READY=1") == 1; }, milliseconds(3000)));
  ASSERT_TRUE(controller_
                  ->WaitFor([](const Received& r) { return r.envelope.has_heartbeat(); },
                            milliseconds(1000))
                  .has_value());
  for (const Received& beat : controller_->Bodies(V1::kHeartbeat)) {
    EXPECT_GE(beat.at, acks_enabled);
  }
  StopAgent();
  EXPECT_EQ(notifier_.Count("STOPPING=1"), 1);
  EXPECT_EQ(notifier_.Count("READY=1"), 1);
}

TEST_F(AgentTest, ReRegistersAfterControllerRestartAndReportsItsShards) {
  spark::v1::ShardStatus ready;
  ready.set_phase(spark::v1::SHARD_PHASE_READY);
  ready.set_data_endpoint("tcp://127.0.0.1:41234");
  ASSERT_TRUE(WriteShardStatusFile(dir_.File("bin/ready.status"), ready).ok());
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("demo", 3, 1));
  ASSERT_GT(pid, 0);
  const pid_t ready_pid = StartShard(Assignment("ready", 2, 0));
  ASSERT_GT(ready_pid, 0);
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        return std::filesystem::exists(ShardPathsFor(dir_.File("state"), "ready-2-0").status);
      },
      milliseconds(3000)));
  const std::string endpoint = controller_->endpoint();
  controller_.reset();  // crash
  std::this_thread::sleep_for(milliseconds(300));
  FakeController::Options options;
  options.endpoint = endpoint;
  ASSERT_NO_FATAL_FAILURE(StartController(options));
  const auto restarted = steady_clock::now();
  std::optional<Received> r = controller_->WaitFor(IsRegistration, milliseconds(5000));
  ASSERT_TRUE(r.has_value());
  // No ack for 3 intervals (300 ms) plus at most one backoff step (500 ms cap) and reconnection.
  EXPECT_LT(std::chrono::duration_cast<milliseconds>(r->at - restarted).count(), 2500);
  const spark::v1::NodeRegistration& reg = r->envelope.node_registration();
  ASSERT_EQ(reg.shards_size(), 2);
  // Sorted by deployment: "demo" then "ready". The shard that wrote its status file is READY
  // with its data endpoint.
  EXPECT_EQ(reg.shards(1).deployment(), "ready");
  EXPECT_EQ(reg.shards(1).generation(), 2u);
  EXPECT_EQ(reg.shards(1).rank(), 0u);
  EXPECT_EQ(reg.shards(1).pid(), ready_pid);
  EXPECT_EQ(reg.shards(1).phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_EQ(reg.shards(1).data_endpoint(), "tcp://127.0.0.1:41234");
  EXPECT_EQ(reg.shards(0).deployment(), "demo");
  EXPECT_EQ(reg.shards(0).generation(), 3u);
  EXPECT_EQ(reg.shards(0).rank(), 1u);
  EXPECT_EQ(reg.shards(0).run_id(), 73u);
  EXPECT_EQ(reg.shards(0).pid(), pid);
  // The fake shard writes no status file: the agent does not claim a phase.
  EXPECT_EQ(reg.shards(0).phase(), spark::v1::SHARD_PHASE_UNSPECIFIED);
  EXPECT_TRUE(testing::ProcessAlive(pid));
  // Heartbeats resume to the new controller.
  const size_t from = controller_->received_count();
  EXPECT_TRUE(controller_
                  ->WaitFor([](const Received& x) { return x.envelope.has_heartbeat(); },
                            milliseconds(1000), from)
                  .has_value());
}

TEST_F(AgentTest, ReRegistersAtOnceWhenARestartedControllerDoesNotKnowIt) {
  ScopedLogCapture logs(LogLevel::kInfo);
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const std::string endpoint = controller_->endpoint();
  controller_.reset();
  FakeController::Options options;
  options.endpoint = endpoint;
  options.reject_unknown_heartbeats = true;
  ASSERT_NO_FATAL_FAILURE(StartController(options));
  std::optional<Received> beat = controller_->WaitFor(
      [](const Received& x) { return x.envelope.has_heartbeat(); }, milliseconds(3000));
  std::optional<Received> reg = controller_->WaitFor(IsRegistration, milliseconds(3000));
  ASSERT_TRUE(beat.has_value());
  ASSERT_TRUE(reg.has_value());
  // The Error answer to the first unknown heartbeat triggers the registration at once.
  EXPECT_LT(beat->at, reg->at);
  EXPECT_LT(std::chrono::duration_cast<milliseconds>(reg->at - beat->at).count(), 250);
  bool by_error = false;
  for (const LogRecord& record : logs.records()) {
    const std::string* reason = record.FindField("reason");
    if (record.message == "re-registering with the controller" && reason != nullptr &&
        reason->starts_with("the controller does not know this node")) {
      by_error = true;
    }
  }
  EXPECT_TRUE(by_error);
}

TEST_F(AgentTest, SpawnsShardWithAssignmentArgumentsEnvironmentAndFiles) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const size_t from = controller_->received_count();
  spark::v1::ShardAssignment a = Assignment("demo", 4, 0);
  const pid_t pid = StartShard(a);
  ASSERT_GT(pid, 0);
  const std::string state = dir_.File("state");
  const ShardPaths paths = ShardPathsFor(state, "demo-4-0");
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return testing::ReadFile(paths.log).find("NOTIFY_SOCKET") != std::string::npos; },
      milliseconds(3000)));
  const std::string log = testing::ReadFile(paths.log);
  EXPECT_NE(log.find("fake-shard args: --assignment " + paths.assignment + " --controller " +
                     controller_->endpoint() + " --node node-a --insecure"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("env NCCL_NVLS_ENABLE=0 NCCL_SOCKET_IFNAME=lo"), std::string::npos) << log;
  EXPECT_NE(log.find("env SPARK_SHARD_STATUS_FILE=" + paths.status), std::string::npos) << log;
  EXPECT_NE(log.find("env SPARK_MOE_TUNING_FILE=" + state + "/moe_tuning.json"), std::string::npos)
      << log;
  EXPECT_NE(log.find("env NOTIFY_SOCKET=unset"), std::string::npos) << log;

  // The assignment file is what the shard needs: the controller's fields, rank 0's bind address,
  // the merged NCCL variables.
  spark::v1::ShardAssignment written;
  ASSERT_TRUE(written.ParseFromString(testing::ReadFile(paths.assignment)));
  EXPECT_EQ(written.deployment(), "demo");
  EXPECT_EQ(written.run_id(), 74u);
  EXPECT_EQ(written.generation(), 4u);
  EXPECT_EQ(written.model_path(), model_);
  EXPECT_EQ(written.data_listen_address(), "0.0.0.0:0");
  EXPECT_EQ(written.nccl_env().at("NCCL_NVLS_ENABLE"), "0");
  EXPECT_EQ(written.nccl_env().at("NCCL_DEBUG"), "WARN");
  EXPECT_EQ(written.nccl_env().at("NCCL_SOCKET_IFNAME"), "lo");

  Result<PidRecord> record = ReadPidFile(paths.pid);
  ASSERT_TRUE(record.ok()) << record.status().ToString();
  EXPECT_EQ(record->pid, pid);
  EXPECT_EQ(record->boot_id, "boot-1");
  EXPECT_EQ(record->start_ticks, ProcessStartTicks(pid).value_or(1));

  // Rank 0: the tokenizer files follow, in the run's generation.
  std::optional<Received> files = controller_->WaitFor(
      [](const Received& r) { return r.envelope.has_tokenizer_files(); }, milliseconds(3000), from);
  ASSERT_TRUE(files.has_value());
  EXPECT_EQ(files->envelope.generation(), 4u);
  const spark::v1::TokenizerFiles& tf = files->envelope.tokenizer_files();
  EXPECT_EQ(tf.deployment(), "demo");
  EXPECT_EQ(tf.run_id(), 74u);
  ASSERT_EQ(tf.files_size(), 2);
  EXPECT_EQ(tf.files(0).name(), "tokenizer.json");
  EXPECT_EQ(tf.files(0).content(), "{\"version\": \"1.0\"}\n");
  EXPECT_EQ(tf.files(0).sha256(), Sha256Hex("{\"version\": \"1.0\"}\n"));
  EXPECT_EQ(tf.files(1).name(), "tokenizer_config.json");

  // The STARTING status carries the envelope generation and the pid.
  std::optional<Received> starting =
      WaitStatus("demo", 4, spark::v1::SHARD_PHASE_STARTING, milliseconds(10), from);
  ASSERT_TRUE(starting.has_value());
  EXPECT_EQ(starting->envelope.generation(), 4u);
  EXPECT_GT(starting->envelope.shard_status().started_unix_ms(), 0);

  // A second assignment for the same shard does not start a second process.
  const size_t before = controller_->received_count();
  Assign(a);
  std::optional<Received> again =
      WaitStatus("demo", 4, spark::v1::SHARD_PHASE_STARTING, milliseconds(2000), before);
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->envelope.shard_status().pid(), pid);
  EXPECT_TRUE(controller_->Bodies(V1::kTokenizerFiles, before).empty());
}

TEST_F(AgentTest, ReportsTheMoeTuningFileAfterRegistrationAndWhenItChanges) {
  engine::MoeTuningRecord record;
  record.device = {"NVIDIA H100 80GB HBM3", 9, 0, 232448};
  record.format = "fp8-per-channel";
  record.gemm = "gate_up";
  record.experts = 128;
  record.n = 2816;
  record.k = 4096;
  record.top_k = 8;
  record.batch = 16;
  record.config = {16, 64, 256, 4, 3, 1};
  record.measured_us = 20;
  record.tuned_unix_ms = 1;
  record.source = "tuner";
  // A file a shard wrote before the agent (re)started is reported right after registering.
  std::filesystem::create_directories(dir_.File("state"));
  const std::string file = dir_.File("state/moe_tuning.json");
  ASSERT_TRUE(engine::UpdateMoeTuningFile(file, {record}).ok());
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  auto is_report = [](const Received& r) { return r.envelope.has_moe_tuning_report(); };
  std::optional<Received> first = controller_->WaitFor(is_report, milliseconds(3000));
  ASSERT_TRUE(first.has_value());
  const spark::v1::MoeTuningReport& report = first->envelope.moe_tuning_report();
  EXPECT_EQ(report.node_name(), "node-a");
  ASSERT_EQ(report.records_size(), 1);
  Result<engine::MoeTuningRecord> got = engine::MoeTuningRecordFromProto(report.records(0));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(*got, record);

  // Unchanged over several heartbeats: nothing more.
  size_t from = controller_->received_count();
  std::this_thread::sleep_for(milliseconds(450));
  EXPECT_TRUE(controller_->Bodies(V1::kMoeTuningReport, from).empty());

  // A shard tuned more buckets: the whole file goes again with the next heartbeat.
  from = controller_->received_count();
  record.batch = 32;
  ASSERT_TRUE(engine::UpdateMoeTuningFile(file, {record}).ok());
  std::optional<Received> second = controller_->WaitFor(is_report, milliseconds(3000), from);
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->envelope.moe_tuning_report().records_size(), 2);
}

TEST_F(AgentTest, Rank1SendsNoTokenizerFiles) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  ASSERT_GT(StartShard(Assignment("demo", 2, 1)), 0);
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(controller_->Bodies(V1::kTokenizerFiles).empty());
}

TEST_F(AgentTest, ShardExitReportedWithExitCodeAndLogTail) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const size_t from = controller_->received_count();
  Assign(Assignment("exit3", 1, 1));
  std::optional<Received> failed =
      WaitStatus("exit3", 1, spark::v1::SHARD_PHASE_FAILED, milliseconds(3000), from);
  ASSERT_TRUE(failed.has_value());
  const spark::v1::ShardStatus& s = failed->envelope.shard_status();
  EXPECT_EQ(failed->envelope.generation(), 1u);
  ASSERT_TRUE(s.has_exit_status());
  EXPECT_EQ(s.exit_status(), 3);
  EXPECT_FALSE(s.has_signal());
  ASSERT_EQ(s.log_tail_size(), 20);
  EXPECT_EQ(s.log_tail(0), "log line 11");
  EXPECT_EQ(s.log_tail(19), "log line 30");
  EXPECT_NE(s.failure_reason().find("exit code 3"), std::string::npos) << s.failure_reason();
  EXPECT_NE(s.failure_reason().find("log line 30"), std::string::npos) << s.failure_reason();
  EXPECT_GT(s.pid(), 0);
  // Only the log stays.
  const ShardPaths paths = ShardPathsFor(dir_.File("state"), "exit3-1-1");
  EXPECT_TRUE(
      testing::WaitUntil([&] { return !std::filesystem::exists(paths.pid); }, milliseconds(1000)));
  EXPECT_FALSE(std::filesystem::exists(paths.assignment));
  EXPECT_TRUE(std::filesystem::exists(paths.log));
  // The heartbeat no longer lists it.
  const size_t now = controller_->received_count();
  std::optional<Received> beat = controller_->WaitFor(
      [](const Received& r) { return r.envelope.has_heartbeat(); }, milliseconds(1000), now);
  ASSERT_TRUE(beat.has_value());
  EXPECT_EQ(beat->envelope.heartbeat().shards_size(), 0);
}

TEST_F(AgentTest, KilledShardReportedWithinOneSecond) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("demo", 5, 1));
  ASSERT_GT(pid, 0);
  // While it runs, heartbeats list it.
  const size_t before = controller_->received_count();
  std::optional<Received> beat = controller_->WaitFor(
      [](const Received& r) {
        return r.envelope.has_heartbeat() && r.envelope.heartbeat().shards_size() == 1;
      },
      milliseconds(1000), before);
  ASSERT_TRUE(beat.has_value());
  EXPECT_EQ(beat->envelope.heartbeat().shards(0).pid(), pid);

  const size_t from = controller_->received_count();
  const auto killed_at = steady_clock::now();
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  std::optional<Received> failed =
      WaitStatus("demo", 5, spark::v1::SHARD_PHASE_FAILED, milliseconds(3000), from);
  ASSERT_TRUE(failed.has_value());
  EXPECT_LE(std::chrono::duration_cast<milliseconds>(failed->at - killed_at).count(), 1000);
  const spark::v1::ShardStatus& s = failed->envelope.shard_status();
  ASSERT_TRUE(s.has_signal());
  EXPECT_EQ(s.signal(), SIGKILL);
  EXPECT_FALSE(s.has_exit_status());
  EXPECT_NE(s.failure_reason().find("SIGKILL"), std::string::npos) << s.failure_reason();
  ASSERT_GE(s.log_tail_size(), 1);
  EXPECT_EQ(s.log_tail(0).rfind("fake-shard args:", 0), 0u);
}

TEST_F(AgentTest, CleanExitIsReportedStopped) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const size_t from = controller_->received_count();
  Assign(Assignment("exit0", 1, 1));
  std::optional<Received> stopped =
      WaitStatus("exit0", 1, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  ASSERT_TRUE(stopped.has_value());
  ASSERT_TRUE(stopped->envelope.shard_status().has_exit_status());
  EXPECT_EQ(stopped->envelope.shard_status().exit_status(), 0);
  EXPECT_TRUE(stopped->envelope.shard_status().failure_reason().empty());
}

TEST_F(AgentTest, StopShardTerminatesGracefully) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("demo", 6, 1));
  ASSERT_GT(pid, 0);
  const std::string log = ShardPathsFor(dir_.File("state"), "demo-6-1").log;
  ASSERT_TRUE(
      testing::WaitUntil([&] { return testing::ReadFile(log).find("ready") != std::string::npos; },
                         milliseconds(3000)));
  const size_t from = controller_->received_count();
  const auto sent = steady_clock::now();
  controller_->Send("agent/node-a", testing::StopEnvelope("demo", 6, 1, 5000));
  std::optional<Received> stopped =
      WaitStatus("demo", 6, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  ASSERT_TRUE(stopped.has_value());
  EXPECT_LT(std::chrono::duration_cast<milliseconds>(stopped->at - sent).count(), 1000);
  const spark::v1::ShardStatus& s = stopped->envelope.shard_status();
  // The script traps SIGTERM and exits 0.
  ASSERT_TRUE(s.has_exit_status());
  EXPECT_EQ(s.exit_status(), 0);
  EXPECT_FALSE(testing::ProcessAlive(pid));
}

TEST_F(AgentTest, StopShardSendsSigkillAfterTheGracePeriod) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("ignoreterm", 1, 1));
  ASSERT_GT(pid, 0);
  const std::string log = ShardPathsFor(dir_.File("state"), "ignoreterm-1-1").log;
  ASSERT_TRUE(
      testing::WaitUntil([&] { return testing::ReadFile(log).find("ready") != std::string::npos; },
                         milliseconds(3000)));
  const size_t from = controller_->received_count();
  const auto sent = steady_clock::now();
  controller_->Send("agent/node-a", testing::StopEnvelope("ignoreterm", 1, 1, 400));
  std::optional<Received> stopped =
      WaitStatus("ignoreterm", 1, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  ASSERT_TRUE(stopped.has_value());
  const auto elapsed = std::chrono::duration_cast<milliseconds>(stopped->at - sent).count();
  EXPECT_GE(elapsed, 400);
  EXPECT_LT(elapsed, 1400);
  ASSERT_TRUE(stopped->envelope.shard_status().has_signal());
  EXPECT_EQ(stopped->envelope.shard_status().signal(), SIGKILL);
  EXPECT_FALSE(testing::ProcessAlive(pid));
}

TEST_F(AgentTest, StopShardOfAnOlderGenerationIsIgnored) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("demo", 5, 1));
  ASSERT_GT(pid, 0);
  const size_t from = controller_->received_count();
  controller_->Send("agent/node-a", testing::StopEnvelope("demo", 4, 1, 0));
  std::this_thread::sleep_for(milliseconds(500));
  for (const Received& r : controller_->Bodies(V1::kShardStatus, from)) {
    ADD_FAILURE() << "unexpected status " << r.envelope.ShortDebugString();
  }
  EXPECT_TRUE(testing::ProcessAlive(pid));
  // An assignment of an older generation is ignored too.
  controller_->Send("agent/node-a", testing::AssignmentEnvelope(Assignment("demo", 3, 1)));
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_TRUE(controller_->Bodies(V1::kShardStatus, from).empty());
  // The current generation's stop works.
  controller_->Send("agent/node-a", testing::StopEnvelope("demo", 5, 1, 0));
  std::optional<Received> stopped =
      WaitStatus("demo", 5, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  ASSERT_TRUE(stopped.has_value());
  EXPECT_EQ(stopped->envelope.shard_status().signal(), SIGKILL);
}

TEST_F(AgentTest, NewerGenerationReplacesTheOldShard) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t old_pid = StartShard(Assignment("demo", 7, 0));
  ASSERT_GT(old_pid, 0);
  const size_t from = controller_->received_count();
  Assign(Assignment("demo", 8, 0));
  std::optional<Received> old_stopped =
      WaitStatus("demo", 7, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  std::optional<Received> new_starting =
      WaitStatus("demo", 8, spark::v1::SHARD_PHASE_STARTING, milliseconds(3000), from);
  ASSERT_TRUE(old_stopped.has_value());
  ASSERT_TRUE(new_starting.has_value());
  EXPECT_LE(old_stopped->at, new_starting->at);  // the old one is gone first
  EXPECT_FALSE(testing::ProcessAlive(old_pid));
  EXPECT_TRUE(testing::ProcessAlive(new_starting->envelope.shard_status().pid()));
}

TEST_F(AgentTest, PreflightFailureForAMissingModelPathSpawnsNothing) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  spark::v1::ShardAssignment a = Assignment("nomodel", 2, 1);
  a.set_model_path(dir_.File("no/such/model"));
  const size_t from = controller_->received_count();
  Assign(a);
  std::optional<Received> failed =
      WaitStatus("nomodel", 2, spark::v1::SHARD_PHASE_FAILED, milliseconds(3000), from);
  ASSERT_TRUE(failed.has_value());
  const spark::v1::ShardStatus& s = failed->envelope.shard_status();
  EXPECT_EQ(s.pid(), 0);
  EXPECT_FALSE(s.has_exit_status());
  const std::string& reason = s.failure_reason();
  EXPECT_NE(reason.find("model_path"), std::string::npos) << reason;
  EXPECT_NE(reason.find(dir_.File("no/such/model")), std::string::npos) << reason;
  EXPECT_NE(reason.find("does not exist on node node-a"), std::string::npos) << reason;
  EXPECT_NE(reason.find("Fix: copy the checkpoint to"), std::string::npos) << reason;
  EXPECT_TRUE(WaitStatus("nomodel", 2, spark::v1::SHARD_PHASE_STARTING, milliseconds(200), from) ==
              std::nullopt);
  EXPECT_FALSE(std::filesystem::exists(ShardPathsFor(dir_.File("state"), "nomodel-2-1").log));
}

TEST_F(AgentTest, StopShardForAShardNotRunningHereIsReportedStopped) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const size_t from = controller_->received_count();
  controller_->Send("agent/node-a", testing::StopEnvelope("ghost", 9, 0, 1000));
  std::optional<Received> stopped =
      WaitStatus("ghost", 9, spark::v1::SHARD_PHASE_STOPPED, milliseconds(3000), from);
  ASSERT_TRUE(stopped.has_value());
  EXPECT_EQ(stopped->envelope.shard_status().pid(), 0);
}

TEST_F(AgentTest, KillsShardsLeftByAnEarlierAgentAtStart) {
  const std::string state = dir_.File("state");
  const std::string shards = ShardsDir(state);
  std::filesystem::create_directories(shards);
  // A shard of an earlier agent: its command line names its assignment file.
  const ShardPaths paths = ShardPathsFor(state, "old-3-0");
  testing::WriteFile(paths.assignment, "");
  SpawnOptions spawn;
  spawn.args = {shard_binary_, "--assignment", paths.assignment};
  spawn.stdout_path = spawn.stderr_path = dir_.File("old.log");
  Result<std::unique_ptr<Process>> old = launcher_.Spawn(spawn);
  ASSERT_TRUE(old.ok()) << old.status().ToString();
  const pid_t old_pid = (*old)->pid();
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return !ProcessCmdline(old_pid)->empty() && ProcessCmdline(old_pid)->size() >= 3; },
      milliseconds(2000)));
  ASSERT_TRUE(
      WritePidFile(paths.pid, PidRecord{old_pid, *ProcessStartTicks(old_pid), "boot-1"}).ok());
  // A process that is not a shard, recorded under another stem: left alone.
  SpawnOptions other_spawn;
  other_spawn.args = {"sleep", "30"};
  Result<std::unique_ptr<Process>> other = launcher_.Spawn(other_spawn);
  ASSERT_TRUE(other.ok());
  const pid_t other_pid = (*other)->pid();
  ASSERT_TRUE(WritePidFile(ShardPathsFor(state, "other-1-0").pid,
                           PidRecord{other_pid, *ProcessStartTicks(other_pid), "boot-1"})
                  .ok());

  ASSERT_NO_FATAL_FAILURE(StartAgent(Options()));
  // Create() waited for the kill: the old shard is dead (our test's zombie until reaped).
  Result<std::optional<ExitInfo>> waited = (*old)->WaitFor(milliseconds(2000));
  ASSERT_TRUE(waited.ok());
  ASSERT_TRUE(waited->has_value());
  EXPECT_EQ((*waited)->signal, SIGKILL);
  EXPECT_TRUE(testing::ProcessAlive(other_pid));
  EXPECT_FALSE(std::filesystem::exists(paths.pid));
  EXPECT_FALSE(std::filesystem::exists(paths.assignment));
  EXPECT_FALSE(std::filesystem::exists(ShardPathsFor(state, "other-1-0").pid));
  // The new agent does not report the killed shard.
  std::optional<Received> reg = controller_->WaitFor(IsRegistration, milliseconds(3000));
  ASSERT_TRUE(reg.has_value());
  EXPECT_EQ(reg->envelope.node_registration().shards_size(), 0);
  (*other)->Kill(SIGKILL).IgnoreError();
}

TEST_F(AgentTest, ShutdownStopsShardsAndReportsThem) {
  ASSERT_NO_FATAL_FAILURE(StartRegistered());
  const pid_t pid = StartShard(Assignment("demo", 3, 1));
  ASSERT_GT(pid, 0);
  const size_t from = controller_->received_count();
  StopAgent();
  EXPECT_TRUE(run_status_.ok()) << run_status_.ToString();
  EXPECT_FALSE(testing::ProcessAlive(pid));
  std::optional<Received> stopped =
      WaitStatus("demo", 3, spark::v1::SHARD_PHASE_STOPPED, milliseconds(2000), from);
  EXPECT_TRUE(stopped.has_value());
  EXPECT_FALSE(std::filesystem::exists(ShardPathsFor(dir_.File("state"), "demo-3-1").pid));
}

TEST_F(AgentTest, CurveAgentWithAnUntrustedKeyNeverGetsThrough) {
  Result<CurveKeyPair> server = GenerateCurveKeyPair();
  Result<CurveKeyPair> trusted = GenerateCurveKeyPair();
  Result<CurveKeyPair> untrusted = GenerateCurveKeyPair();
  ASSERT_TRUE(server.ok() && trusted.ok() && untrusted.ok());
  controller_.reset();
  FakeController::Options options;
  options.curve = true;
  options.keys = *server;
  options.trusted = {trusted->public_key};
  ASSERT_NO_FATAL_FAILURE(StartController(options));

  AgentOptions o = Options();
  o.insecure = false;
  ASSERT_NO_FATAL_FAILURE(StartAgent(o, AgentKeys{*untrusted, server->public_key}));
  std::this_thread::sleep_for(milliseconds(1500));
  EXPECT_EQ(controller_->received_count(), 0u);
  EXPECT_GE(controller_->zap_rejected(), 1);
  StopAgent();

  ASSERT_NO_FATAL_FAILURE(StartAgent(o, AgentKeys{*trusted, server->public_key}));
  std::optional<Received> reg = controller_->WaitFor(IsRegistration, milliseconds(3000));
  ASSERT_TRUE(reg.has_value());
  EXPECT_EQ(reg->peer_key, trusted->public_key);
  EXPECT_EQ(reg->envelope.node_registration().curve_public_key(), trusted->public_key);
  // The shard is told to use the key directory, not --insecure.
  const pid_t pid = StartShard(Assignment("demo", 1, 1));
  ASSERT_GT(pid, 0);
  const std::string log = ShardPathsFor(o.state_dir, "demo-1-1").log;
  ASSERT_TRUE(testing::WaitUntil(
      [&] { return testing::ReadFile(log).find("fake-shard args") != std::string::npos; },
      milliseconds(3000)));
  EXPECT_NE(testing::ReadFile(log).find("--node node-a --keys " + ResolveKeysDir(o)),
            std::string::npos);
}

}  // namespace
}  // namespace spark::agent
