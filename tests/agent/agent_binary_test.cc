// The spark-agent executable: refusing to start without keys, keygen, CURVE registration,
// sd_notify, SIGTERM shutdown, and a kill -9 that takes the shards along.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "agent/shard_files.h"
#include "common/fd.h"
#include "common/process.h"
#include "tests/agent/fake_controller.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

using std::chrono::milliseconds;
using testing::FakeController;
using testing::Received;

constexpr char kAgentBinary[] = SPARK_AGENT_BINARY;

bool IsRegistration(const Received& r) { return r.envelope.has_node_registration(); }

class AgentBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    testing::WriteFile(dir_.File("boot_id"), "boot-1\n");
    model_ = testing::MakeModelDir(dir_.File("model"));
    shard_ = testing::WriteScript(dir_.File("bin/fake-shard"), testing::kFakeShardScript);
  }

  std::unique_ptr<Process> Spawn(std::vector<std::string> args,
                                 std::map<std::string, std::string> env = {}) {
    SpawnOptions o;
    o.args = {kAgentBinary};
    o.args.insert(o.args.end(), args.begin(), args.end());
    o.env = std::move(env);
    o.unset_env = {"NOTIFY_SOCKET", "WATCHDOG_USEC"};
    o.stdout_path = o.stderr_path = dir_.File("agent.out");
    Result<std::unique_ptr<Process>> p = launcher_.Spawn(o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(*p) : nullptr;
  }

  std::vector<std::string> RunArgs(const FakeController& c, const std::string& boot_file) {
    return {"--controller",   c.endpoint(),       "--node-name",         "bin-node",
            "--state-dir",    dir_.File("state"), "--shard-binary",      shard_,
            "--boot-id-file", boot_file,          "--heartbeat-ms",      "100",
            "--log-sink",     "stderr",           "--shutdown-grace-ms", "2000"};
  }

  static int ExitCode(Process& p) {
    Result<std::optional<ExitInfo>> info = p.WaitFor(milliseconds(10000));
    if (!info.ok() || !info->has_value()) return -1000;
    return (*info)->signal != 0 ? -(*info)->signal : (*info)->exit_code;
  }

  testing::TempDir dir_;
  std::string model_;
  std::string shard_;
  RealProcessLauncher launcher_;
};

TEST_F(AgentBinaryTest, RefusesToStartWithoutKeysAndSaysHowToCreateThem) {
  std::unique_ptr<Process> agent =
      Spawn({"--state-dir", dir_.File("state"), "--keys", dir_.File("keys"), "--boot-id-file",
             dir_.File("boot_id")});
  ASSERT_NE(agent, nullptr);
  EXPECT_EQ(ExitCode(*agent), 78);
  const std::string out = testing::ReadFile(dir_.File("agent.out"));
  EXPECT_NE(out.find("refusing to start"), std::string::npos) << out;
  EXPECT_NE(out.find(dir_.File("keys/agent.key")), std::string::npos) << out;
  EXPECT_NE(out.find("spark-agent keygen --keys " + dir_.File("keys")), std::string::npos) << out;
  EXPECT_NE(out.find("--insecure"), std::string::npos) << out;
}

TEST_F(AgentBinaryTest, BadFlagIsAUsageError) {
  std::unique_ptr<Process> agent = Spawn({"--backend", "tpu"});
  ASSERT_NE(agent, nullptr);
  EXPECT_EQ(ExitCode(*agent), 2);
}

TEST_F(AgentBinaryTest, KeygenThenRegistersOverCurve) {
  std::unique_ptr<Process> keygen = Spawn({"keygen", "--keys", dir_.File("keys")});
  ASSERT_NE(keygen, nullptr);
  ASSERT_EQ(ExitCode(*keygen), 0) << testing::ReadFile(dir_.File("agent.out"));
  Result<std::string> agent_pub = ReadCurvePublicKeyFile(dir_.File("keys/agent.pub"));
  ASSERT_TRUE(agent_pub.ok());
  Result<CurveKeyPair> server = GenerateCurveKeyPair();
  ASSERT_TRUE(server.ok());
  ASSERT_TRUE(WriteCurvePublicKeyFile(dir_.File("keys/controller.pub"), server->public_key).ok());
  FakeController::Options options;
  options.curve = true;
  options.keys = *server;
  options.trusted = {*agent_pub};
  Result<std::unique_ptr<FakeController>> controller = FakeController::Start(options);
  ASSERT_TRUE(controller.ok());
  std::vector<std::string> args = RunArgs(**controller, dir_.File("boot_id"));
  args.push_back("--keys");
  args.push_back(dir_.File("keys"));
  std::unique_ptr<Process> agent = Spawn(args);
  ASSERT_NE(agent, nullptr);
  std::optional<Received> reg = (*controller)->WaitFor(IsRegistration, milliseconds(5000));
  ASSERT_TRUE(reg.has_value()) << testing::ReadFile(dir_.File("agent.out"));
  EXPECT_EQ(reg->peer_key, *agent_pub);
  EXPECT_EQ(reg->envelope.node_registration().curve_public_key(), *agent_pub);
  EXPECT_EQ(reg->routing_id, "agent/bin-node");
  ASSERT_EQ(agent->Kill(SIGTERM), Status::Ok());
  EXPECT_EQ(ExitCode(*agent), 0);
}

TEST_F(AgentBinaryTest, ReadyNotificationAndSigtermStopsTheShards) {
  Result<std::unique_ptr<FakeController>> controller = FakeController::Start({});
  ASSERT_TRUE(controller.ok());
  const std::string notify_path = dir_.File("notify");
  UniqueFd notify(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, notify_path.c_str(), sizeof(addr.sun_path) - 1);
  ASSERT_EQ(::bind(notify.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);

  std::vector<std::string> args = RunArgs(**controller, dir_.File("boot_id"));
  args.push_back("--insecure");
  std::unique_ptr<Process> agent = Spawn(args, {{"NOTIFY_SOCKET", notify_path}});
  ASSERT_NE(agent, nullptr);
  ASSERT_TRUE((*controller)->WaitFor(IsRegistration, milliseconds(5000)).has_value())
      << testing::ReadFile(dir_.File("agent.out"));
  std::string notifications;
  ASSERT_TRUE(testing::WaitUntil(
      [&] {
        char buffer[512];
        const ssize_t n = ::recv(notify.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
        if (n > 0) notifications += std::string(buffer, static_cast<size_t>(n)) + "|";
        return notifications.find("READY=1") != std::string::npos;
      },
      milliseconds(5000)))
      << notifications;
  EXPECT_NE(notifications.find("STATUS=registered with"), std::string::npos) << notifications;

  spark::v1::ShardAssignment a;
  a.set_deployment("demo");
  a.set_generation(1);
  a.set_rank(1);
  a.set_world_size(2);
  a.set_model_path(model_);
  a.set_backend(spark::v1::BACKEND_CPU);
  (*controller)->Send("agent/bin-node", testing::AssignmentEnvelope(a));
  std::optional<Received> starting =
      (*controller)
          ->WaitFor(
              [](const Received& r) {
                return r.envelope.has_shard_status() &&
                       r.envelope.shard_status().phase() == spark::v1::SHARD_PHASE_STARTING;
              },
              milliseconds(5000));
  ASSERT_TRUE(starting.has_value()) << testing::ReadFile(dir_.File("agent.out"));
  const pid_t shard = starting->envelope.shard_status().pid();
  ASSERT_TRUE(testing::ProcessAlive(shard));

  ASSERT_EQ(agent->Kill(SIGTERM), Status::Ok());
  EXPECT_EQ(ExitCode(*agent), 0) << testing::ReadFile(dir_.File("agent.out"));
  EXPECT_FALSE(testing::ProcessAlive(shard));
  EXPECT_TRUE((*controller)
                  ->WaitFor(
                      [](const Received& r) {
                        return r.envelope.has_shard_status() &&
                               r.envelope.shard_status().phase() == spark::v1::SHARD_PHASE_STOPPED;
                      },
                      milliseconds(2000))
                  .has_value());
  char buffer[512];
  while (true) {
    const ssize_t n = ::recv(notify.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n <= 0) break;
    notifications += std::string(buffer, static_cast<size_t>(n)) + "|";
  }
  EXPECT_NE(notifications.find("STOPPING=1"), std::string::npos) << notifications;
}

TEST_F(AgentBinaryTest, KilledAgentTakesItsShardsAlongAndARebootedNodeReRegisters) {
  Result<std::unique_ptr<FakeController>> controller = FakeController::Start({});
  ASSERT_TRUE(controller.ok());
  std::vector<std::string> args = RunArgs(**controller, dir_.File("boot_id"));
  args.push_back("--insecure");
  std::unique_ptr<Process> agent = Spawn(args);
  ASSERT_NE(agent, nullptr);
  ASSERT_TRUE((*controller)->WaitFor(IsRegistration, milliseconds(5000)).has_value());
  spark::v1::ShardAssignment a;
  a.set_deployment("demo");
  a.set_generation(1);
  a.set_rank(1);
  a.set_world_size(2);
  a.set_model_path(model_);
  (*controller)->Send("agent/bin-node", testing::AssignmentEnvelope(a));
  std::optional<Received> starting =
      (*controller)
          ->WaitFor([](const Received& r) { return r.envelope.has_shard_status(); },
                    milliseconds(5000));
  ASSERT_TRUE(starting.has_value());
  const pid_t shard = starting->envelope.shard_status().pid();
  ASSERT_GT(shard, 0);

  ASSERT_EQ(agent->Kill(SIGKILL), Status::Ok());
  EXPECT_EQ(ExitCode(*agent), -SIGKILL);
  EXPECT_TRUE(
      testing::WaitUntil([&] { return !testing::ProcessAlive(shard); }, milliseconds(1000)));
  // The fake shard is a shell script whose `sleep` child outlives it; a real spark-shard is one
  // process. Clean up the script's group.
  ::kill(-shard, SIGKILL);

  // The node "rebooted": a new boot id.
  testing::WriteFile(dir_.File("boot_id2"), "boot-2\n");
  const size_t from = (*controller)->received_count();
  std::unique_ptr<Process> again = Spawn(RunArgs(**controller, dir_.File("boot_id2")));
  ASSERT_NE(again, nullptr);
  // (no --insecure and no keys: refused) -> start it properly.
  EXPECT_EQ(ExitCode(*again), 78);
  std::vector<std::string> args2 = RunArgs(**controller, dir_.File("boot_id2"));
  args2.push_back("--insecure");
  again = Spawn(args2);
  std::optional<Received> reg = (*controller)->WaitFor(IsRegistration, milliseconds(5000), from);
  ASSERT_TRUE(reg.has_value());
  EXPECT_EQ(reg->envelope.node_registration().boot_id(), "boot-2");
  EXPECT_EQ(reg->envelope.node_registration().shards_size(), 0);
  EXPECT_NE(reg->envelope.sender_incarnation(), starting->envelope.sender_incarnation());
  EXPECT_TRUE(std::filesystem::is_empty(ShardsDir(dir_.File("state"))));
  ASSERT_EQ(again->Kill(SIGTERM), Status::Ok());
  EXPECT_EQ(ExitCode(*again), 0);
}

}  // namespace
}  // namespace spark::agent
