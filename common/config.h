// Config files: TOML parsed with toml++ and checked against a schema that each daemon declares.
//
//   ConfigSchema schema;
//   schema.Int("heartbeat_ms").Range(100, 60000).Default(1000).Help("heartbeat period");
//   schema.String("controller.endpoint").Required();
//   schema.Enum("log.sink", {"stderr", "journald", "auto"}).Default("auto");
//   schema.StringList("allowed_keys").Default(std::vector<std::string>{});
//   SPARK_ASSIGN_OR_RETURN(Config config, schema.LoadFile("/etc/spark/agent.toml"));
//   int64_t heartbeat_ms = config.GetInt("heartbeat_ms");
//
// Keys are dotted paths: "controller.endpoint" is `endpoint` inside the `[controller]` table (or
// written as the dotted key `controller.endpoint = ...`). Every problem in a file is reported at
// once, one per line, each naming the file, the line and the key, and saying what is expected:
//   agent.toml:7: key 'heartbeat_ms' must be an integer between 100 and 60000, got "fast"
//   agent.toml:9: unknown key 'heartbeat_msec' (did you mean 'heartbeat_ms'?)
//   agent.toml:3:14: TOML syntax error: <toml++ description>
// Errors are InvalidArgument (NotFound when the file does not exist).
//
// Field kinds: String, Int (int64, optional inclusive Range), Double (accepts TOML integers,
// optional Range), Bool, StringList (array of strings), Enum (a string from a fixed set). A field
// is required, has a default, or is optional without a default (then Config::Has says whether the
// file set it).
//
// Thread safety: a ConfigSchema is built once, then Parse/LoadFile are const and may run
// concurrently. A Config is an immutable value, safe to share between threads.
// Misuse by the program (declaring a key twice, a default of the wrong type, Get of an
// undeclared key or with the wrong type) is a broken invariant and aborts through SPARK_CHECK.
#pragma once

#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/status.h"

namespace spark {

enum class ConfigType { kString, kInt, kDouble, kBool, kStringList, kEnum };

using ConfigValue = std::variant<std::string, int64_t, double, bool, std::vector<std::string>>;

// One declared key. Builder methods return *this for chaining.
class ConfigField {
 public:
  ConfigField(std::string key, ConfigType type) : key_(std::move(key)), type_(type) {}

  ConfigField& Required();
  ConfigField& Default(std::string value);
  ConfigField& Default(const char* value) { return Default(std::string(value)); }
  ConfigField& Default(int64_t value);
  ConfigField& Default(int value) { return Default(static_cast<int64_t>(value)); }
  ConfigField& Default(double value);
  ConfigField& Default(bool value);
  ConfigField& Default(std::vector<std::string> value);
  // Inclusive bounds for Int fields.
  ConfigField& Range(int64_t min, int64_t max);
  ConfigField& Range(int min, int max) {
    return Range(static_cast<int64_t>(min), static_cast<int64_t>(max));
  }
  // Inclusive bounds for Double fields.
  ConfigField& Range(double min, double max);
  ConfigField& Help(std::string text);

  const std::string& key() const { return key_; }
  ConfigType type() const { return type_; }
  bool required() const { return required_; }
  const std::optional<ConfigValue>& default_value() const { return default_; }
  const std::vector<std::string>& allowed() const { return allowed_; }
  const std::optional<std::pair<int64_t, int64_t>>& int_range() const { return int_range_; }
  const std::optional<std::pair<double, double>>& double_range() const { return double_range_; }
  const std::string& help() const { return help_; }

 private:
  friend class ConfigSchema;
  std::string key_;
  ConfigType type_;
  bool required_ = false;
  std::optional<ConfigValue> default_;
  std::optional<std::pair<int64_t, int64_t>> int_range_;
  std::optional<std::pair<double, double>> double_range_;
  std::vector<std::string> allowed_;  // kEnum
  std::string help_;
};

class Config;

class ConfigSchema {
 public:
  ConfigField& String(std::string key);
  ConfigField& Int(std::string key);
  ConfigField& Double(std::string key);
  ConfigField& Bool(std::string key);
  ConfigField& StringList(std::string key);
  ConfigField& Enum(std::string key, std::vector<std::string> allowed);

  // Parses TOML text; `source_name` (usually the file path) prefixes every error.
  Result<Config> Parse(std::string_view toml_text, std::string_view source_name) const;
  // Reads and parses a file. A missing file is NotFound, naming the path.
  Result<Config> LoadFile(const std::filesystem::path& path) const;

  // Every declared key with its type, default and help, as commented TOML lines; for --help output
  // and default config files.
  std::string Describe() const;

  const ConfigField* Find(std::string_view key) const;

 private:
  ConfigField& Add(std::string key, ConfigType type);
  std::deque<ConfigField> fields_;  // deque: references handed out stay valid
};

// The validated values of one file plus the schema defaults.
class Config {
 public:
  Config() = default;

  // True when the key was set in the file or has a default.
  bool Has(std::string_view key) const;
  // True when the key was set in the file (not defaulted).
  bool IsSet(std::string_view key) const;

  // Typed access; the key must be declared with that type and Has(key) must be true.
  // GetString also serves Enum fields.
  const std::string& GetString(std::string_view key) const;
  int64_t GetInt(std::string_view key) const;
  double GetDouble(std::string_view key) const;
  bool GetBool(std::string_view key) const;
  const std::vector<std::string>& GetStringList(std::string_view key) const;

  // Where the key was set: "agent.toml:7", or "agent.toml (default)" when defaulted.
  std::string Where(std::string_view key) const;
  // InvalidArgument "<Where(key)>: key '<key>' <problem>", for checks the schema cannot express
  // (e.g. "must name an existing directory").
  Status Error(std::string_view key, std::string_view problem) const;

  const std::string& source_name() const { return source_name_; }

 private:
  friend class ConfigSchema;
  struct Entry {
    ConfigType type;
    ConfigValue value;
    int line = 0;  // 0: default
  };
  const Entry& Get(std::string_view key, ConfigType type) const;

  std::string source_name_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace spark
