// The packaged default configs (systemd/agent.toml, systemd/controller.toml) parse with the
// daemons' own command-line and config parsers exactly as the units run them, and every
// directory they write lies in what the units let the daemons write.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "agent/agent_options.h"
#include "controller/controller_options.h"

namespace spark {
namespace {

using ::testing::HasSubstr;

const std::string kSource = SPARK_SOURCE_DIR;

// Key -> values of a unit file's [Service] and [Unit] sections (repeated keys keep every value).
std::multimap<std::string, std::string> ReadUnit(const std::string& path) {
  std::multimap<std::string, std::string> unit;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#' || line[0] == '[') continue;
    const size_t eq = line.find('=');
    if (eq != std::string::npos) unit.emplace(line.substr(0, eq), line.substr(eq + 1));
  }
  return unit;
}

std::string One(const std::multimap<std::string, std::string>& unit, const std::string& key) {
  auto range = unit.equal_range(key);
  EXPECT_EQ(std::distance(range.first, range.second), 1) << key;
  return range.first == range.second ? "" : range.first->second;
}

// ExecStart split on blanks, with the packaged config path replaced by the source tree's.
std::vector<std::string> ExecStart(const std::multimap<std::string, std::string>& unit,
                                   const std::string& config) {
  std::istringstream words(One(unit, "ExecStart"));
  std::vector<std::string> args;
  std::string word;
  while (words >> word)
    args.push_back(word == "/etc/spark/" + config ? kSource + "/systemd/" + config : word);
  return args;
}

bool Under(const std::string& path, const std::string& dir) {
  return path == dir || path.starts_with(dir + "/");
}

TEST(DefaultConfigTest, AgentConfigParsesAsTheUnitRunsIt) {
  const auto unit = ReadUnit(kSource + "/systemd/spark-agent.service");
  std::vector<std::string> args = ExecStart(unit, "agent.toml");
  ASSERT_EQ(args.size(), 3u);
  EXPECT_EQ(args[0], "/usr/bin/spark-agent");
  Result<agent::AgentCommand> command = agent::ParseAgentCommandLine(args);
  ASSERT_TRUE(command.ok()) << command.status().ToString();
  ASSERT_EQ(command->kind, agent::AgentCommand::kRun);
  const agent::AgentOptions& o = command->options;
  EXPECT_EQ(o.controller, "tcp://127.0.0.1:7440");
  EXPECT_EQ(o.keys_dir, "/etc/spark/keys");
  EXPECT_EQ(agent::ResolveKeysDir(o), "/etc/spark/keys");
  EXPECT_EQ(o.boot_id_file, "/proc/sys/kernel/random/boot_id");
  EXPECT_FALSE(o.insecure);
  // The state directory is writable under ProtectSystem=strict.
  EXPECT_EQ(One(unit, "ProtectSystem"), "strict");
  EXPECT_TRUE(Under(o.state_dir, One(unit, "ReadWritePaths"))) << o.state_dir;
  EXPECT_TRUE(Under(o.state_dir, "/var/lib/" + One(unit, "StateDirectory"))) << o.state_dir;
}

TEST(DefaultConfigTest, ControllerConfigParsesAsTheUnitRunsIt) {
  const auto unit = ReadUnit(kSource + "/systemd/spark-controller.service");
  std::vector<std::string> args = ExecStart(unit, "controller.toml");
  ASSERT_EQ(args.size(), 3u);
  EXPECT_EQ(args[0], "/usr/bin/spark-controller");
  Result<controller::DaemonCommand> command = controller::ParseControllerCommandLine(args);
  ASSERT_TRUE(command.ok()) << command.status().ToString();
  ASSERT_EQ(command->kind, controller::DaemonCommand::kRun);
  const controller::DaemonOptions& o = command->options;
  EXPECT_EQ(o.http_listen, "0.0.0.0:8080");
  EXPECT_EQ(o.controller.agent_listen, "tcp://0.0.0.0:7440");
  EXPECT_EQ(o.controller.keys_dir, "/etc/spark/keys");
  EXPECT_FALSE(o.controller.insecure);
  EXPECT_EQ(o.controller.restart.budget, 5);
  EXPECT_TRUE(Under(o.db_path, One(unit, "ReadWritePaths"))) << o.db_path;
  EXPECT_TRUE(Under(o.db_path, "/var/lib/" + One(unit, "StateDirectory"))) << o.db_path;
}

TEST(DefaultConfigTest, AMistakeInTheConfigNamesTheLineAndKey) {
  const std::string path = ::testing::TempDir() + "/agent-typo.toml";
  std::ifstream in(kSource + "/systemd/agent.toml");
  std::stringstream text;
  text << in.rdbuf() << "heartbeat_msec = 5\n";
  std::ofstream(path) << text.str();
  Result<agent::AgentCommand> command =
      agent::ParseAgentCommandLine({"spark-agent", "--config", path});
  ASSERT_FALSE(command.ok());
  // Appended after the file's last table, the key belongs to [log].
  EXPECT_THAT(command.status().message(), HasSubstr("agent-typo.toml:"));
  EXPECT_THAT(command.status().message(), HasSubstr("unknown key 'log.heartbeat_msec'"));
}

// The units' contract with the daemons: notify from the main process, a watchdog well above the
// daemons' ping periods (the agent pings every WatchdogSec/3, the controller every 0.5 s while
// its reconciler answered within 5 s), restarts without the start-limit lockout, shards killed
// with the agent.
TEST(DefaultConfigTest, UnitsMatchTheDaemonsNotifyAndWatchdogBehaviour) {
  for (const std::string name : {"spark-agent", "spark-controller"}) {
    SCOPED_TRACE(name);
    const auto unit = ReadUnit(kSource + "/systemd/" + name + ".service");
    EXPECT_EQ(One(unit, "Type"), "notify");
    EXPECT_EQ(One(unit, "NotifyAccess"), "main");
    EXPECT_EQ(One(unit, "WatchdogSec"), "30s");
    EXPECT_EQ(One(unit, "Restart"), "always");
    EXPECT_EQ(One(unit, "StartLimitIntervalSec"), "0");
    EXPECT_EQ(One(unit, "RestartSec"), "5s");
    EXPECT_EQ(One(unit, "User"), "spark");
    EXPECT_EQ(One(unit, "NoNewPrivileges"), "yes");
    EXPECT_THAT(One(unit, "After"), HasSubstr("network-online.target"));
    EXPECT_THAT(One(unit, "Wants"), HasSubstr("network-online.target"));
    EXPECT_EQ(One(unit, "StandardError"), "journal");
  }
  const auto agent = ReadUnit(kSource + "/systemd/spark-agent.service");
  EXPECT_EQ(One(agent, "KillMode"), "control-group");
  EXPECT_EQ(One(agent, "LimitMEMLOCK"), "infinity");
  // GPU and RDMA devices stay reachable: no device policy on the agent.
  EXPECT_EQ(agent.count("PrivateDevices"), 0u);
  EXPECT_EQ(agent.count("DevicePolicy"), 0u);
  EXPECT_EQ(agent.count("DeviceAllow"), 0u);
  EXPECT_EQ(agent.count("MemoryDenyWriteExecute"), 0u);  // CUDA JIT
  // The controller's tokenizer JIT-compiles its regular expressions (PCRE2).
  const auto controller = ReadUnit(kSource + "/systemd/spark-controller.service");
  EXPECT_EQ(controller.count("MemoryDenyWriteExecute"), 0u);
}

}  // namespace
}  // namespace spark
