#include "agent/agent_options.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#ifndef SPARK_VERSION
#define SPARK_VERSION "0.0.0"
#endif

namespace spark::agent {
namespace {

spark::v1::Backend DefaultBackend() {
#if defined(SPARK_HAVE_CUDA) && SPARK_HAVE_CUDA
  return spark::v1::BACKEND_CUDA;
#else
  return spark::v1::BACKEND_CPU;
#endif
}

}  // namespace

Result<spark::v1::Backend> ParseBackend(std::string_view name) {
  if (name == "cpu") return spark::v1::BACKEND_CPU;
  if (name == "cuda") return spark::v1::BACKEND_CUDA;
  return InvalidArgument("unknown backend \"" + std::string(name) + "\"; use cpu or cuda");
}

std::string_view BackendName(spark::v1::Backend backend) {
  switch (backend) {
    case spark::v1::BACKEND_CPU:
      return "cpu";
    case spark::v1::BACKEND_CUDA:
      return "cuda";
    default:
      return "unspecified";
  }
}

std::string ResolveKeysDir(const AgentOptions& options) {
  if (!options.keys_dir.empty()) return options.keys_dir;
  const std::filesystem::path state_keys = std::filesystem::path(options.state_dir) / "keys";
  std::error_code ec;
  if (std::filesystem::exists(state_keys / "agent.key", ec)) return state_keys.string();
  return "/etc/spark/keys";
}

ConfigSchema AgentConfigSchema() {
  const AgentOptions d;
  ConfigSchema s;
  s.String("controller").Default(d.controller).Help("controller's agent plane, tcp://HOST:PORT");
  s.String("node_name").Default("").Help("node name; empty: the host name");
  s.Enum("backend", {"cpu", "cuda"})
      .Default(std::string(BackendName(DefaultBackend())))
      .Help("backend the node's shards run");
  s.String("state_dir").Default(d.state_dir).Help("assignments, pid files and shard logs");
  s.String("shard_binary").Default("").Help("spark-shard path; empty: next to spark-agent");
  s.String("data_listen").Default("").Help("rank 0 data-plane bind address HOST:PORT (0: any)");
  s.String("advertise_host").Default("").Help("this node's address as peers reach it");
  s.Bool("insecure").Default(false).Help("no CURVE encryption (the whole cluster must agree)");
  s.String("keys").Default("").Help(
      "key directory (agent.key, agent.pub, controller.pub); empty: <state_dir>/keys or "
      "/etc/spark/keys");
  s.String("boot_id_file").Default(d.boot_id_file).Help("file holding the boot id");
  s.Int("heartbeat_ms").Range(10, 60000).Default(d.heartbeat_ms).Help("heartbeat period");
  s.Int("reconnect_max_ms")
      .Range(100, 600000)
      .Default(d.reconnect_max_ms)
      .Help("longest wait between registration attempts");
  s.Int("shutdown_grace_ms")
      .Range(0, 600000)
      .Default(d.shutdown_grace_ms)
      .Help("SIGTERM to SIGKILL for shards when the agent stops");
  s.String("nccl.socket_ifname").Default("").Help("NCCL_SOCKET_IFNAME; empty: detected");
  s.String("nccl.ib_hca").Default("").Help("NCCL_IB_HCA; empty: the active RDMA ports");
  s.Int("nccl.ib_gid_index").Range(-1, 255).Default(-1).Help("NCCL_IB_GID_INDEX; -1: detected");
  s.Enum("log.level", {"debug", "info", "warn", "error"}).Default("info").Help("minimum level");
  s.Enum("log.sink", {"stderr", "journald", "auto"}).Default("auto").Help("where logs go");
  return s;
}

Status ApplyAgentConfig(const Config& config, AgentOptions* options) {
  options->controller = config.GetString("controller");
  options->node_name = config.GetString("node_name");
  SPARK_ASSIGN_OR_RETURN(options->backend, ParseBackend(config.GetString("backend")));
  options->state_dir = config.GetString("state_dir");
  options->shard_binary = config.GetString("shard_binary");
  options->data_listen = config.GetString("data_listen");
  options->advertise_host = config.GetString("advertise_host");
  options->insecure = config.GetBool("insecure");
  options->keys_dir = config.GetString("keys");
  options->boot_id_file = config.GetString("boot_id_file");
  options->heartbeat_ms = config.GetInt("heartbeat_ms");
  options->reconnect_max_ms = config.GetInt("reconnect_max_ms");
  options->shutdown_grace_ms = config.GetInt("shutdown_grace_ms");
  options->nccl.socket_ifname = config.GetString("nccl.socket_ifname");
  options->nccl.ib_hca = config.GetString("nccl.ib_hca");
  options->nccl.ib_gid_index = config.GetInt("nccl.ib_gid_index");
  SPARK_ASSIGN_OR_RETURN(options->log_level, ParseLogLevel(config.GetString("log.level")));
  SPARK_ASSIGN_OR_RETURN(options->log_sink, ParseLogSinkKind(config.GetString("log.sink")));
  if (!options->controller.starts_with("tcp://") && !options->controller.starts_with("ipc://")) {
    return config.Error("controller", "must be a ZMQ endpoint like tcp://10.0.0.1:7440");
  }
  return Status::Ok();
}

Result<AgentCommand> ParseAgentCommandLine(const std::vector<std::string>& args) {
  CLI::App app(
      "spark-agent: registers this node with spark-controller, runs the node preflight "
      "and supervises the spark-shard processes the controller assigns.",
      "spark-agent");
  app.set_version_flag("--version", std::string("spark-agent ") + SPARK_VERSION);

  std::string config_path, controller, node_name, backend, state_dir, shard_binary, data_listen,
      advertise_host, keys, boot_id_file, log_level, log_sink, socket_ifname, ib_hca;
  int64_t heartbeat_ms = 0, reconnect_max_ms = 0, shutdown_grace_ms = 0, ib_gid_index = 0;
  bool insecure = false;
  app.add_option("--config", config_path, "TOML config file (flags override it)");
  app.add_option("--controller", controller, "controller endpoint, tcp://HOST:PORT");
  app.add_option("--node-name", node_name, "node name (default: the host name)");
  app.add_option("--backend", backend, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--state-dir", state_dir, "state directory (default /var/lib/spark-agent)");
  app.add_option("--shard-binary", shard_binary, "spark-shard (default: next to spark-agent)");
  app.add_option("--data-listen", data_listen, "rank 0 data-plane bind address HOST:PORT");
  app.add_option("--advertise-host", advertise_host, "this node's address as peers see it");
  app.add_flag("--insecure", insecure, "no CURVE keys (the whole cluster must be insecure)");
  app.add_option("--keys", keys, "key directory: agent.key, agent.pub, controller.pub");
  app.add_option("--boot-id-file", boot_id_file, "boot id file (tests simulate reboots)");
  app.add_option("--heartbeat-ms", heartbeat_ms, "heartbeat period before the first ack");
  app.add_option("--reconnect-max-ms", reconnect_max_ms, "cap of the re-registration backoff");
  app.add_option("--shutdown-grace-ms", shutdown_grace_ms, "shard grace when the agent stops");
  app.add_option("--nccl-socket-ifname", socket_ifname, "NCCL_SOCKET_IFNAME");
  app.add_option("--nccl-ib-hca", ib_hca, "NCCL_IB_HCA");
  app.add_option("--nccl-ib-gid-index", ib_gid_index, "NCCL_IB_GID_INDEX");
  app.add_option("--log-level", log_level, "debug, info, warn or error");
  app.add_option("--log-sink", log_sink, "stderr, journald or auto");

  std::string keygen_dir;
  bool keygen_force = false;
  CLI::App* keygen = app.add_subcommand(
      "keygen", "write a new CURVE key pair (agent.key, agent.pub) into a key directory");
  keygen->add_option("--keys", keygen_dir, "key directory")->required();
  keygen->add_flag("--force", keygen_force, "replace an existing key pair");

  std::vector<std::string> reversed(args.size() > 1 ? args.begin() + 1 : args.end(), args.end());
  std::reverse(reversed.begin(), reversed.end());
  AgentCommand command;
  try {
    app.parse(reversed);
  } catch (const CLI::CallForHelp&) {
    command.kind = AgentCommand::kHelp;
    command.help_text = app.help() + "\nConfig file keys:\n" + AgentConfigSchema().Describe();
    return command;
  } catch (const CLI::CallForVersion&) {
    command.kind = AgentCommand::kHelp;
    command.help_text = std::string("spark-agent ") + SPARK_VERSION + "\n";
    return command;
  } catch (const CLI::ParseError& e) {
    return InvalidArgument(std::string(e.what()) + " (see spark-agent --help)");
  }

  if (keygen->parsed()) {
    command.kind = AgentCommand::kKeygen;
    command.keygen_dir = keygen_dir;
    command.keygen_force = keygen_force;
    return command;
  }

  AgentOptions& o = command.options;
  o.backend = DefaultBackend();
  if (!config_path.empty()) {
    SPARK_ASSIGN_OR_RETURN(Config config, AgentConfigSchema().LoadFile(config_path));
    SPARK_RETURN_IF_ERROR(ApplyAgentConfig(config, &o));
  }
  auto given = [&app](const char* flag) { return app.count(flag) > 0; };
  if (given("--controller")) o.controller = controller;
  if (given("--node-name")) o.node_name = node_name;
  if (given("--backend")) {
    SPARK_ASSIGN_OR_RETURN(o.backend, ParseBackend(backend));
  }
  if (given("--state-dir")) o.state_dir = state_dir;
  if (given("--shard-binary")) o.shard_binary = shard_binary;
  if (given("--data-listen")) o.data_listen = data_listen;
  if (given("--advertise-host")) o.advertise_host = advertise_host;
  if (given("--insecure")) o.insecure = insecure;
  if (given("--keys")) o.keys_dir = keys;
  if (given("--boot-id-file")) o.boot_id_file = boot_id_file;
  if (given("--heartbeat-ms")) o.heartbeat_ms = heartbeat_ms;
  if (given("--reconnect-max-ms")) o.reconnect_max_ms = reconnect_max_ms;
  if (given("--shutdown-grace-ms")) o.shutdown_grace_ms = shutdown_grace_ms;
  if (given("--nccl-socket-ifname")) o.nccl.socket_ifname = socket_ifname;
  if (given("--nccl-ib-hca")) o.nccl.ib_hca = ib_hca;
  if (given("--nccl-ib-gid-index")) o.nccl.ib_gid_index = ib_gid_index;
  if (given("--log-level")) {
    SPARK_ASSIGN_OR_RETURN(o.log_level, ParseLogLevel(log_level));
  }
  if (given("--log-sink")) {
    SPARK_ASSIGN_OR_RETURN(o.log_sink, ParseLogSinkKind(log_sink));
  }

  if (!o.controller.starts_with("tcp://") && !o.controller.starts_with("ipc://")) {
    return InvalidArgument("--controller \"" + o.controller +
                           "\" is not a ZMQ endpoint; use tcp://HOST:PORT (the controller's "
                           "--agent-listen address)");
  }
  if (o.heartbeat_ms < 10 || o.heartbeat_ms > 60000) {
    return InvalidArgument("--heartbeat-ms must be between 10 and 60000");
  }
  if (o.reconnect_max_ms < 100) return InvalidArgument("--reconnect-max-ms must be >= 100");
  if (o.shutdown_grace_ms < 0) return InvalidArgument("--shutdown-grace-ms must be >= 0");
  if (o.nccl.ib_gid_index < -1 || o.nccl.ib_gid_index > 255) {
    return InvalidArgument("--nccl-ib-gid-index must be -1 (detect) or 0..255");
  }
  if (o.state_dir.empty()) return InvalidArgument("--state-dir must not be empty");
  if (!o.data_listen.empty() && o.data_listen.rfind(':') == std::string::npos) {
    return InvalidArgument("--data-listen \"" + o.data_listen +
                           "\" needs a port: HOST:PORT, e.g. 0.0.0.0:7450 (port 0: any)");
  }
  return command;
}

}  // namespace spark::agent
