#include "agent/agent_options.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "agent/gpu.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

Result<AgentCommand> Parse(std::vector<std::string> args) {
  args.insert(args.begin(), "spark-agent");
  return ParseAgentCommandLine(args);
}

TEST(AgentOptionsTest, DefaultsWithoutConfig) {
  Result<AgentCommand> c = Parse({});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->kind, AgentCommand::kRun);
  const AgentOptions& o = c->options;
  EXPECT_EQ(o.controller, "tcp://127.0.0.1:7440");
  EXPECT_EQ(o.state_dir, "/var/lib/spark-agent");
  EXPECT_EQ(o.heartbeat_ms, 1000);
  EXPECT_FALSE(o.insecure);
  EXPECT_EQ(o.boot_id_file, "/proc/sys/kernel/random/boot_id");
  EXPECT_EQ(o.nccl.ib_gid_index, -1);
  EXPECT_EQ(o.backend, BuiltWithCuda() ? spark::v1::BACKEND_CUDA : spark::v1::BACKEND_CPU);
}

TEST(AgentOptionsTest, FlagsOverrideTheConfigFile) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("agent.toml"), R"(controller = "tcp://10.0.0.1:7440"
node_name = "from-file"
backend = "cpu"
state_dir = "/srv/spark"
heartbeat_ms = 500
insecure = true
[nccl]
socket_ifname = "enp1s0"
ib_gid_index = 3
[log]
level = "debug"
)");
  Result<AgentCommand> c = Parse({"--config", dir.File("agent.toml"), "--node-name", "from-flag",
                                  "--heartbeat-ms", "250", "--data-listen", "10.0.0.5:7450"});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  const AgentOptions& o = c->options;
  EXPECT_EQ(o.controller, "tcp://10.0.0.1:7440");
  EXPECT_EQ(o.node_name, "from-flag");
  EXPECT_EQ(o.state_dir, "/srv/spark");
  EXPECT_EQ(o.heartbeat_ms, 250);
  EXPECT_TRUE(o.insecure);
  EXPECT_EQ(o.nccl.socket_ifname, "enp1s0");
  EXPECT_EQ(o.nccl.ib_gid_index, 3);
  EXPECT_EQ(o.log_level, LogLevel::kDebug);
  EXPECT_EQ(o.data_listen, "10.0.0.5:7450");
}

TEST(AgentOptionsTest, ConfigErrorsNameTheFileLineAndKey) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("agent.toml"), "heartbeat_ms = \"fast\"\nheartbeat_msec = 3\n");
  Result<AgentCommand> c = Parse({"--config", dir.File("agent.toml")});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("agent.toml:1"), std::string::npos) << c.status().message();
  EXPECT_NE(c.status().message().find("heartbeat_msec"), std::string::npos);
}

TEST(AgentOptionsTest, MissingConfigFileIsNotFound) {
  Result<AgentCommand> c = Parse({"--config", "/nonexistent/agent.toml"});
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kNotFound);
  EXPECT_NE(c.status().message().find("/nonexistent/agent.toml"), std::string::npos);
}

TEST(AgentOptionsTest, BadFlagsAreInvalidArguments) {
  for (const std::vector<std::string>& args :
       std::vector<std::vector<std::string>>{{"--backend", "tpu"},
                                             {"--controller", "10.0.0.1:7440"},
                                             {"--heartbeat-ms", "1"},
                                             {"--data-listen", "0.0.0.0"},
                                             {"--no-such-flag"}}) {
    Result<AgentCommand> c = Parse(args);
    ASSERT_FALSE(c.ok()) << args[0];
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument) << args[0];
  }
  Result<AgentCommand> c = Parse({"--controller", "10.0.0.1:7440"});
  EXPECT_NE(c.status().message().find("tcp://HOST:PORT"), std::string::npos);
}

TEST(AgentOptionsTest, KeygenAndHelp) {
  Result<AgentCommand> keygen = Parse({"keygen", "--keys", "/tmp/k", "--force"});
  ASSERT_TRUE(keygen.ok()) << keygen.status().ToString();
  EXPECT_EQ(keygen->kind, AgentCommand::kKeygen);
  EXPECT_EQ(keygen->keygen_dir, "/tmp/k");
  EXPECT_TRUE(keygen->keygen_force);
  EXPECT_FALSE(Parse({"keygen"}).ok());  // --keys is required

  Result<AgentCommand> help = Parse({"--help"});
  ASSERT_TRUE(help.ok());
  EXPECT_EQ(help->kind, AgentCommand::kHelp);
  EXPECT_NE(help->help_text.find("--controller"), std::string::npos);
  EXPECT_NE(help->help_text.find("heartbeat_ms"), std::string::npos);  // config keys
  Result<AgentCommand> version = Parse({"--version"});
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(version->help_text, "spark-agent 0.1.0\n");
}

TEST(AgentOptionsTest, KeysDirDefaultsToTheStateDirWhenItHoldsAKey) {
  testing::TempDir dir;
  AgentOptions o;
  o.state_dir = dir.path().string();
  EXPECT_EQ(ResolveKeysDir(o), "/etc/spark/keys");
  testing::WriteFile(dir.File("keys/agent.key"), "x");
  EXPECT_EQ(ResolveKeysDir(o), dir.File("keys"));
  o.keys_dir = "/k";
  EXPECT_EQ(ResolveKeysDir(o), "/k");
}

}  // namespace
}  // namespace spark::agent
