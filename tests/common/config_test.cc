#include "common/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace spark {
namespace {

ConfigSchema AgentSchema() {
  ConfigSchema s;
  s.Int("heartbeat_ms").Range(100, 60000).Default(1000).Help("heartbeat period");
  s.String("controller.endpoint").Required().Help("controller ZMQ endpoint");
  s.String("controller.http_listen").Default("0.0.0.0:8080");
  s.Enum("log.sink", {"stderr", "journald", "auto"}).Default("auto");
  s.Bool("preflight").Default(true);
  s.Double("memory_fraction").Range(0.1, 1.0).Default(0.9);
  s.StringList("allowed_keys").Default(std::vector<std::string>{});
  s.String("node_name");  // optional, no default
  return s;
}

TEST(ConfigTest, ParsesTablesDottedKeysAndDefaults) {
  const std::string toml = R"(
heartbeat_ms = 500
allowed_keys = ["a", "b"]
log.sink = "journald"
memory_fraction = 1

[controller]
endpoint = "tcp://10.0.0.1:7100"
)";
  Result<Config> config = AgentSchema().Parse(toml, "agent.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetInt("heartbeat_ms"), 500);
  EXPECT_EQ(config->GetString("controller.endpoint"), "tcp://10.0.0.1:7100");
  EXPECT_EQ(config->GetString("controller.http_listen"), "0.0.0.0:8080");
  EXPECT_EQ(config->GetString("log.sink"), "journald");
  EXPECT_TRUE(config->GetBool("preflight"));
  EXPECT_DOUBLE_EQ(config->GetDouble("memory_fraction"), 1.0);
  EXPECT_EQ(config->GetStringList("allowed_keys"), (std::vector<std::string>{"a", "b"}));
  EXPECT_FALSE(config->Has("node_name"));
  EXPECT_TRUE(config->IsSet("heartbeat_ms"));
  EXPECT_FALSE(config->IsSet("preflight"));
  EXPECT_TRUE(config->Has("preflight"));
  EXPECT_EQ(config->Where("heartbeat_ms"), "agent.toml:2");
  EXPECT_EQ(config->Where("controller.endpoint"), "agent.toml:8");
  EXPECT_EQ(config->Where("preflight"), "agent.toml (default)");
  EXPECT_EQ(config->Error("controller.endpoint", "must use the tcp:// transport").message(),
            "agent.toml:8: key 'controller.endpoint' must use the tcp:// transport");
}

TEST(ConfigTest, WrongTypeNamesFileLineKeyAndValue) {
  const std::string toml = "controller.endpoint = \"x\"\n\n\n\n\n\nheartbeat_ms = \"fast\"\n";
  Result<Config> config = AgentSchema().Parse(toml, "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message(),
            "agent.toml:7: key 'heartbeat_ms' must be an integer between 100 and 60000, got "
            "\"fast\"");
}

TEST(ConfigTest, OutOfRangeAndEveryTypeMismatchReportedTogether) {
  const std::string toml = R"(heartbeat_ms = 50
memory_fraction = "lots"
preflight = "yes"
log.sink = "syslog"
allowed_keys = ["a", 5]
[controller]
endpoint = 7
)";
  Result<Config> config = AgentSchema().Parse(toml, "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "agent.toml:1: key 'heartbeat_ms' must be an integer between 100 and 60000, got 50\n"
            "agent.toml:2: key 'memory_fraction' must be a number between 0.1 and 1, got \"lots\"\n"
            "agent.toml:3: key 'preflight' must be true or false, got \"yes\"\n"
            "agent.toml:4: key 'log.sink' must be one of \"stderr\", \"journald\", \"auto\", got "
            "\"syslog\"\n"
            "agent.toml:5: key 'allowed_keys' must be a list of strings; element 1 is 5\n"
            "agent.toml:7: key 'controller.endpoint' must be a string, got 7");
}

TEST(ConfigTest, UnknownKeysAreErrorsWithSuggestions) {
  const std::string toml = R"(controller.endpoint = "x"
heartbeat_msec = 100
[contrller]
http_listen = "a"
[unrelated]
x = 1
)";
  Result<Config> config = AgentSchema().Parse(toml, "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "agent.toml:2: unknown key 'heartbeat_msec' (did you mean 'heartbeat_ms'?)\n"
            "agent.toml:3: unknown key 'contrller' (did you mean 'controller'?)\n"
            "agent.toml:5: unknown key 'unrelated'");
}

TEST(ConfigTest, UnknownKeyInsideKnownTable) {
  Result<Config> config =
      AgentSchema().Parse("[controller]\nendpoint = \"x\"\nendpont = \"y\"\n", "a.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "a.toml:3: unknown key 'controller.endpont' (did you mean 'controller.endpoint'?)");
}

TEST(ConfigTest, MissingRequiredKey) {
  Result<Config> config = AgentSchema().Parse("heartbeat_ms = 200\n", "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "agent.toml: missing required key 'controller.endpoint' (controller ZMQ endpoint); "
            "add it to the file");
}

TEST(ConfigTest, TableWhereValueExpected) {
  Result<Config> config =
      AgentSchema().Parse("controller.endpoint = \"x\"\n[heartbeat_ms]\nv = 1\n", "a.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message(),
            "a.toml:2: key 'heartbeat_ms' must be an integer between 100 and 60000, got a table");
}

TEST(ConfigTest, SyntaxErrorGivesLineAndColumn) {
  Result<Config> config =
      AgentSchema().Parse("controller.endpoint = \"x\"\nheartbeat_ms = = 3\n", "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(config.status().message().rfind("agent.toml:2:", 0), 0u) << config.status().message();
  EXPECT_NE(config.status().message().find("TOML syntax error"), std::string::npos);
}

TEST(ConfigTest, DuplicateKeyIsASyntaxError) {
  Result<Config> config = AgentSchema().Parse(
      "controller.endpoint = \"x\"\nheartbeat_ms = 200\nheartbeat_ms = 300\n", "agent.toml");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().message().rfind("agent.toml:3:", 0), 0u) << config.status().message();
}

TEST(ConfigTest, LoadFileAndMissingFile) {
  const std::filesystem::path dir = ::testing::TempDir();
  const std::filesystem::path path = dir / ("config_test_" + std::to_string(::getpid()) + ".toml");
  {
    std::ofstream out(path);
    out << "[controller]\nendpoint = \"tcp://h:1\"\n";
  }
  Result<Config> config = AgentSchema().LoadFile(path);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetString("controller.endpoint"), "tcp://h:1");
  EXPECT_EQ(config->Where("controller.endpoint"), path.string() + ":2");
  std::filesystem::remove(path);

  Result<Config> missing = AgentSchema().LoadFile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find(path.string()), std::string::npos);
  EXPECT_NE(missing.status().message().find("No such file"), std::string::npos);
}

TEST(ConfigTest, EmptyDocumentGivesDefaults) {
  ConfigSchema s;
  s.Int("a").Default(3);
  s.Double("b").Default(2);
  s.String("c");
  Result<Config> config = s.Parse("", "<none>");
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->GetInt("a"), 3);
  EXPECT_DOUBLE_EQ(config->GetDouble("b"), 2.0);
  EXPECT_FALSE(config->Has("c"));
}

TEST(ConfigTest, DescribeIsValidTomlOfTheDefaults) {
  const ConfigSchema schema = AgentSchema();
  const std::string text = schema.Describe();
  EXPECT_NE(text.find("# heartbeat_ms (integer, 100..60000): heartbeat period\nheartbeat_ms = "
                      "1000\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("# controller.endpoint (string, required): controller ZMQ endpoint\n"
                      "# controller.endpoint =\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("log.sink = \"auto\"\n"), std::string::npos);
  EXPECT_NE(text.find("memory_fraction = 0.90000000000000002\n"), std::string::npos) << text;
  // The described defaults parse back (with the required key added).
  Result<Config> config =
      schema.Parse(text + "controller.endpoint = \"tcp://x:1\"\n", "described.toml");
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->GetInt("heartbeat_ms"), 1000);
  EXPECT_DOUBLE_EQ(config->GetDouble("memory_fraction"), 0.9);
}

TEST(ConfigDeathTest, ProgrammingErrorsAbort) {
  ConfigSchema s;
  s.Int("a");
  EXPECT_DEATH(s.Int("a"), "declared twice");
  EXPECT_DEATH(s.Int("b").Default("text"), "string default");
  EXPECT_DEATH(s.Int("a.b"), "cannot both be values");
  Result<Config> config = s.Parse("a = 1", "x");
  ASSERT_TRUE(config.ok());
  EXPECT_DEATH((void)config->GetString("a"), "has type integer, not string");
  EXPECT_DEATH((void)config->GetInt("undeclared"), "not declared");
}

}  // namespace
}  // namespace spark
