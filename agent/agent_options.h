// AgentOptions: everything spark-agent is configured with, from a TOML file (`--config FILE`,
// checked against AgentConfigSchema()) and command-line flags, which override the file.
//
//   spark-agent --config /etc/spark/agent.toml
//   spark-agent --controller tcp://10.0.0.1:7440 --node-name n1 --backend cpu --insecure
//   spark-agent keygen --keys /etc/spark/keys
//
// ParseAgentCommandLine never exits the process and never throws: --help and --version come back
// as AgentCommand::kHelp with the text to print, errors as InvalidArgument naming the flag or the
// config key and what is expected.
//
// Thread safety: pure functions; AgentOptions is a plain value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

// NCCL network selection; empty / negative values are detected (see nccl_env.h).
struct NcclSettings {
  std::string socket_ifname;  // NCCL_SOCKET_IFNAME, "enp1s0f0np0" or "^lo,docker"
  std::string ib_hca;         // NCCL_IB_HCA, "mlx5_0:1,mlx5_1:1"
  int64_t ib_gid_index = -1;  // NCCL_IB_GID_INDEX; -1: from the RoCE v2 GID table
};

struct AgentOptions {
  std::string controller = "tcp://127.0.0.1:7440";  // controller's agent-plane ROUTER
  std::string node_name;                            // empty: the host name
  spark::v1::Backend backend = spark::v1::BACKEND_CPU;
  std::string state_dir = "/var/lib/spark-agent";  // shards/ (assignments, pids) and logs/
  std::string shard_binary;  // empty: DefaultShardBinary() (next to spark-agent)
  // Rank 0's data-plane bind address "HOST:PORT" (port 0: any); empty: the controller's choice
  // in the assignment, else "0.0.0.0:0".
  std::string data_listen;
  // Address of this node that peers use (Gloo, data plane); empty: the data_listen host when it
  // names one, else the shard's own choice.
  std::string advertise_host;
  bool insecure = false;  // no CURVE anywhere (the whole cluster must run insecure)
  // Key directory: agent.key, agent.pub, controller.pub. Empty: <state_dir>/keys when it holds
  // agent.key, else /etc/spark/keys.
  std::string keys_dir;
  std::string boot_id_file = "/proc/sys/kernel/random/boot_id";
  int64_t heartbeat_ms = 1000;        // until the controller's RegistrationAck says otherwise
  int64_t reconnect_max_ms = 5000;    // cap of the re-registration backoff
  int64_t shutdown_grace_ms = 10000;  // SIGTERM to SIGKILL for shards when the agent stops
  NcclSettings nccl;
  LogLevel log_level = LogLevel::kInfo;
  LogSinkKind log_sink = LogSinkKind::kAuto;
};

// The keys directory the agent uses: options.keys_dir, or the default described above.
std::string ResolveKeysDir(const AgentOptions& options);

// The config file schema (every key with its default and help).
ConfigSchema AgentConfigSchema();

// Applies a validated config file to `options`.
Status ApplyAgentConfig(const Config& config, AgentOptions* options);

struct AgentCommand {
  enum Kind { kRun, kKeygen, kHelp };
  Kind kind = kRun;
  AgentOptions options;       // kRun
  std::string keygen_dir;     // kKeygen: where agent.key / agent.pub go
  bool keygen_force = false;  // kKeygen: overwrite an existing key pair
  std::string help_text;      // kHelp: --help / --version output
};

// Parses argv (argv[0] is the program). Reads the --config file when one is named.
Result<AgentCommand> ParseAgentCommandLine(const std::vector<std::string>& args);

// "cpu" / "cuda" <-> Backend.
Result<spark::v1::Backend> ParseBackend(std::string_view name);
std::string_view BackendName(spark::v1::Backend backend);

}  // namespace spark::agent
