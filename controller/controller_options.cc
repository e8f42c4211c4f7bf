#include "controller/controller_options.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>

namespace spark::controller {

using std::chrono::milliseconds;

const ConfigSchema& ControllerConfigSchema() {
  static const ConfigSchema* schema = [] {
    auto* s = new ConfigSchema();
    s->String("http_listen").Default("0.0.0.0:8080").Help("REST API address HOST:PORT");
    s->String("agent_listen").Default("tcp://0.0.0.0:7440").Help("agent plane ZMQ endpoint");
    s->String("db").Default("/var/lib/spark/controller.db").Help("SQLite database file");
    s->Bool("insecure").Default(false).Help("no CURVE (the whole cluster must be insecure)");
    s->String("keys").Default("/etc/spark/keys").Help("controller.key and trusted/*.pub");
    s->String("api_token").Default("").Help("one bearer token for every API; empty: none");
    s->String("api_keys_file").Default("").Help("inference API keys, one per line; empty: open");
    s->String("admin_key_file").Default("").Help("admin (lifecycle API) keys; empty: open");
    s->Int("openai.max_body_bytes").Range(1024, 1LL << 30).Default(8 * 1024 * 1024);
    s->Int("openai.max_messages").Range(1, 1000000).Default(2048);
    s->Int("openai.max_tokens_limit")
        .Range(1, 10000000)
        .Default(32768)
        .Help("ceiling of max_tokens");
    s->Int("openai.default_max_tokens")
        .Range(1, 10000000)
        .Default(1024)
        .Help("chat max_tokens when the request gives none");
    s->Int("openai.max_n").Range(1, 128).Default(16);
    s->Int("openai.model_wait_ms")
        .Range(0, 3600000)
        .Default(0)
        .Help("how long a request waits for a model that is not ready; 0: 503 at once");
    s->Int("openai.worker_threads").Range(1, 64).Default(2);
    s->Int("heartbeat_ms").Range(10, 60000).Default(1000).Help("agent heartbeat interval");
    s->Int("missed_heartbeats").Range(1, 100).Default(3).Help("silent intervals before dead");
    s->Int("rendezvous_timeout_ms").Range(100, 3600000).Default(120000);
    s->Int("load_timeout_ms").Range(1000, 86400000).Default(1800000);
    s->Int("first_generation_timeout_ms").Range(100, 3600000).Default(120000);
    s->Int("spawn_timeout_ms").Range(100, 3600000).Default(30000);
    s->Int("stop_grace_ms").Range(0, 600000).Default(5000);
    s->Int("adopt_timeout_ms").Range(0, 3600000).Default(0).Help("0: 10 heartbeat intervals");
    s->Int("backoff_initial_ms").Range(0, 3600000).Default(1000);
    s->Int("backoff_max_ms").Range(0, 3600000).Default(30000);
    s->Int("restart_budget").Range(0, 100000).Default(5);
    s->Int("restart_window_s").Range(1, 86400 * 7).Default(600);
    s->String("shard_controller_address").Default("").Help("controller endpoint for shards");
    s->String("port_file").Default("").Help("write the bound ports there as JSON");
    s->Enum("log.level", {"debug", "info", "warn", "error"}).Default("info");
    s->Enum("log.sink", {"stderr", "journald", "auto"}).Default("auto");
    return s;
  }();
  return *schema;
}

Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text) {
  const size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size()) {
    return InvalidArgument("\"" + text + "\" is not HOST:PORT (e.g. 0.0.0.0:8080)");
  }
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  unsigned port = 0;
  const std::string port_text = text.substr(colon + 1);
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port > 65535 ||
      host.empty()) {
    return InvalidArgument("\"" + text + "\" is not HOST:PORT with a port from 0 to 65535");
  }
  return std::make_pair(host, static_cast<uint16_t>(port));
}

namespace {

void Apply(const Config& c, DaemonOptions& o) {
  ControllerOptions& k = o.controller;
  o.http_listen = c.GetString("http_listen");
  k.agent_listen = c.GetString("agent_listen");
  o.db_path = c.GetString("db");
  k.insecure = c.GetBool("insecure");
  k.keys_dir = c.GetString("keys");
  o.api_token = c.GetString("api_token");
  o.api_keys_file = c.GetString("api_keys_file");
  o.admin_key_file = c.GetString("admin_key_file");
  o.openai.limits.max_body_bytes = static_cast<size_t>(c.GetInt("openai.max_body_bytes"));
  o.openai.limits.max_messages = static_cast<size_t>(c.GetInt("openai.max_messages"));
  o.openai.limits.max_tokens = static_cast<uint32_t>(c.GetInt("openai.max_tokens_limit"));
  o.openai.limits.default_max_tokens = static_cast<uint32_t>(c.GetInt("openai.default_max_tokens"));
  o.openai.limits.max_n = static_cast<uint32_t>(c.GetInt("openai.max_n"));
  o.openai.model_wait = milliseconds(c.GetInt("openai.model_wait_ms"));
  o.openai.worker_threads = static_cast<int>(c.GetInt("openai.worker_threads"));
  k.heartbeat_interval = milliseconds(c.GetInt("heartbeat_ms"));
  k.missed_heartbeats = static_cast<int>(c.GetInt("missed_heartbeats"));
  k.rendezvous_timeout = milliseconds(c.GetInt("rendezvous_timeout_ms"));
  k.load_timeout = milliseconds(c.GetInt("load_timeout_ms"));
  k.first_generation_timeout = milliseconds(c.GetInt("first_generation_timeout_ms"));
  k.spawn_timeout = milliseconds(c.GetInt("spawn_timeout_ms"));
  k.stop_grace = milliseconds(c.GetInt("stop_grace_ms"));
  k.adopt_timeout = milliseconds(c.GetInt("adopt_timeout_ms"));
  k.restart.initial_backoff = milliseconds(c.GetInt("backoff_initial_ms"));
  k.restart.max_backoff = milliseconds(c.GetInt("backoff_max_ms"));
  k.restart.budget = static_cast<int>(c.GetInt("restart_budget"));
  k.restart.window = milliseconds(c.GetInt("restart_window_s") * 1000);
  k.shard_controller_address = c.GetString("shard_controller_address");
  o.port_file = c.GetString("port_file");
}

}  // namespace

Result<DaemonCommand> ParseControllerCommandLine(const std::vector<std::string>& args) {
  CLI::App app(
      "spark-controller: keeps the deployed models running on the nodes' spark-agents "
      "(placement, rendezvous, failure recovery) and serves the REST API.",
      "spark-controller");
  std::string config_path, http_listen, agent_listen, db, keys, api_token, shard_address, port_file,
      log_level, log_sink, api_keys_file, admin_key_file;
  int64_t max_tokens_limit = 0, model_wait_ms = 0, max_body_bytes = 0;
  int64_t heartbeat_ms = 0, missed = 0, rendezvous_ms = 0, load_ms = 0, first_ms = 0, spawn_ms = 0,
          grace_ms = 0, adopt_ms = 0, backoff_ms = 0, backoff_max_ms = 0, budget = 0, window_s = 0;
  bool insecure = false;
  app.add_option("--config", config_path, "TOML config file (flags override it)");
  app.add_option("--http-listen", http_listen, "REST API address HOST:PORT (port 0: any)");
  app.add_option("--agent-listen", agent_listen, "agent plane endpoint tcp://HOST:PORT");
  app.add_option("--db", db, "SQLite database file");
  app.add_flag("--insecure", insecure, "no CURVE keys (the whole cluster must be insecure)");
  app.add_option("--keys", keys, "key directory: controller.key, trusted/*.pub");
  app.add_option("--api-token", api_token, "one bearer token for every API (legacy)");
  app.add_option("--api-keys-file", api_keys_file,
                 "inference API keys (/v1/*, /metrics), one per line, # comments");
  app.add_option("--admin-key-file", admin_key_file, "admin keys of the lifecycle API (/api/v1/*)");
  app.add_option("--max-tokens-limit", max_tokens_limit, "ceiling of a request's max_tokens");
  app.add_option("--model-wait-ms", model_wait_ms,
                 "how long a request waits for a model that is not ready (0: 503 at once)");
  app.add_option("--max-body-bytes", max_body_bytes, "largest inference request body");
  app.add_option("--heartbeat-ms", heartbeat_ms, "agent heartbeat interval");
  app.add_option("--missed-heartbeats", missed, "silent intervals before a node is dead");
  app.add_option("--rendezvous-timeout-ms", rendezvous_ms, "how long ranks wait for peers");
  app.add_option("--load-timeout-ms", load_ms, "spawn to every rank READY");
  app.add_option("--first-generation-timeout-ms", first_ms, "READY to the first generation");
  app.add_option("--spawn-timeout-ms", spawn_ms, "assignment to the agent's STARTING");
  app.add_option("--stop-grace-ms", grace_ms, "StopShard: SIGTERM, then SIGKILL after this");
  app.add_option("--adopt-timeout-ms", adopt_ms, "wait for agents after a restart (0: 10 beats)");
  app.add_option("--backoff-initial-ms", backoff_ms, "first restart backoff");
  app.add_option("--backoff-max-ms", backoff_max_ms, "restart backoff cap");
  app.add_option("--restart-budget", budget, "restarts allowed within the window");
  app.add_option("--restart-window-s", window_s, "restart budget window");
  app.add_option("--shard-controller-address", shard_address, "controller endpoint for shards");
  app.add_option("--port-file", port_file, "write the bound ports there as JSON");
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.add_option("--log-sink", log_sink, "stderr, journald or auto");

  std::string keygen_dir;
  bool keygen_force = false;
  CLI::App* keygen = app.add_subcommand(
      "keygen", "write the controller's CURVE key pair (controller.key, controller.pub)");
  keygen->add_option("--keys", keygen_dir, "key directory")->required();
  keygen->add_flag("--force", keygen_force, "replace an existing key pair");

  std::vector<std::string> reversed(args.size() > 1 ? args.begin() + 1 : args.end(), args.end());
  std::reverse(reversed.begin(), reversed.end());
  DaemonCommand command;
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    command.kind = DaemonCommand::kHelp;
    command.help_text = app.help() + "\nConfig file keys:\n" + ControllerConfigSchema().Describe();
    return command;
  } catch (const CLI::ParseError& e) {
    return InvalidArgument(std::string(e.what()) + " (see spark-controller --help)");
  }
  if (keygen->parsed()) {
    command.kind = DaemonCommand::kKeygen;
    command.keygen_dir = keygen_dir;
    command.keygen_force = keygen_force;
    return command;
  }

  DaemonOptions& o = command.options;
  SPARK_ASSIGN_OR_RETURN(Config defaults, ControllerConfigSchema().Parse("", "defaults"));
  Apply(defaults, o);
  if (!config_path.empty()) {
    SPARK_ASSIGN_OR_RETURN(Config config, ControllerConfigSchema().LoadFile(config_path));
    Apply(config, o);
    SPARK_ASSIGN_OR_RETURN(o.log_level, ParseLogLevel(config.GetString("log.level")));
    SPARK_ASSIGN_OR_RETURN(o.log_sink, ParseLogSinkKind(config.GetString("log.sink")));
  }
  auto given = [&app](const char* flag) { return app.count(flag) > 0; };
  ControllerOptions& k = o.controller;
  if (given("--http-listen")) o.http_listen = http_listen;
  if (given("--agent-listen")) k.agent_listen = agent_listen;
  if (given("--db")) o.db_path = db;
  if (given("--insecure")) k.insecure = insecure;
  if (given("--keys")) k.keys_dir = keys;
  if (given("--api-token")) o.api_token = api_token;
  if (given("--api-keys-file")) o.api_keys_file = api_keys_file;
  if (given("--admin-key-file")) o.admin_key_file = admin_key_file;
  if (given("--max-tokens-limit")) {
    if (max_tokens_limit < 1) return InvalidArgument("--max-tokens-limit must be >= 1");
    o.openai.limits.max_tokens = static_cast<uint32_t>(max_tokens_limit);
  }
  if (given("--model-wait-ms")) {
    if (model_wait_ms < 0) return InvalidArgument("--model-wait-ms must be >= 0");
    o.openai.model_wait = milliseconds(model_wait_ms);
  }
  if (given("--max-body-bytes")) {
    if (max_body_bytes < 1024) return InvalidArgument("--max-body-bytes must be >= 1024");
    o.openai.limits.max_body_bytes = static_cast<size_t>(max_body_bytes);
  }
  if (given("--heartbeat-ms")) k.heartbeat_interval = milliseconds(heartbeat_ms);
  if (given("--missed-heartbeats")) k.missed_heartbeats = static_cast<int>(missed);
  if (given("--rendezvous-timeout-ms")) k.rendezvous_timeout = milliseconds(rendezvous_ms);
  if (given("--load-timeout-ms")) k.load_timeout = milliseconds(load_ms);
  if (given("--first-generation-timeout-ms")) k.first_generation_timeout = milliseconds(first_ms);
  if (given("--spawn-timeout-ms")) k.spawn_timeout = milliseconds(spawn_ms);
  if (given("--stop-grace-ms")) k.stop_grace = milliseconds(grace_ms);
  if (given("--adopt-timeout-ms")) k.adopt_timeout = milliseconds(adopt_ms);
  if (given("--backoff-initial-ms")) k.restart.initial_backoff = milliseconds(backoff_ms);
  if (given("--backoff-max-ms")) k.restart.max_backoff = milliseconds(backoff_max_ms);
  if (given("--restart-budget")) k.restart.budget = static_cast<int>(budget);
  if (given("--restart-window-s")) k.restart.window = milliseconds(window_s * 1000);
  if (given("--shard-controller-address")) k.shard_controller_address = shard_address;
  if (given("--port-file")) o.port_file = port_file;
  if (given("--log-level")) {
    SPARK_ASSIGN_OR_RETURN(o.log_level, ParseLogLevel(log_level));
  }
  if (given("--log-sink")) {
    SPARK_ASSIGN_OR_RETURN(o.log_sink, ParseLogSinkKind(log_sink));
  }

  SPARK_RETURN_IF_ERROR(ParseHostPort(o.http_listen).status());
  if (!k.agent_listen.starts_with("tcp://") && !k.agent_listen.starts_with("ipc://")) {
    return InvalidArgument("--agent-listen \"" + k.agent_listen +
                           "\" is not a ZMQ endpoint; use tcp://HOST:PORT, e.g. "
                           "tcp://0.0.0.0:7440");
  }
  if (k.heartbeat_interval.count() < 10 || k.heartbeat_interval.count() > 60000) {
    return InvalidArgument("--heartbeat-ms must be between 10 and 60000");
  }
  if (k.missed_heartbeats < 1) return InvalidArgument("--missed-heartbeats must be >= 1");
  if (k.restart.budget < 0) return InvalidArgument("--restart-budget must be >= 0");
  if (o.db_path.empty()) return InvalidArgument("--db must name the SQLite database file");
  if (o.openai.limits.default_max_tokens > o.openai.limits.max_tokens) {
    o.openai.limits.default_max_tokens = o.openai.limits.max_tokens;
  }
  return command;
}

}  // namespace spark::controller
