// Cluster: a real spark cluster for tests, made of processes on this machine: one
// spark-controller (insecure, SQLite in a temporary directory) and N spark-agents with the CPU
// backend that spawn real spark-shard processes on a `spark-model tiny` checkpoint.
//
// Network: as root (when `ip netns` works) every agent runs in its own network namespace joined
// to the controller's namespace by a veth pair on a bridge, so that a partition is a link going
// down; otherwise every process uses 127.0.0.1 (partitions are then unavailable).
//
// The harness owns every process it starts and cleans up on destruction: agents get SIGTERM
// (they stop their shards), then everything left (agents, shards found through /proc, the
// controller) gets SIGKILL, and the namespaces, bridge and directory are removed.
//
// Thread safety: used by one test thread.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/process.h"
#include "common/status.h"
#include "controller/http/client.h"
#include "controller/store/store.h"

namespace spark::cluster {

struct ClusterOptions {
  int agents = 2;
  bool allow_netns = true;  // use namespaces when running as root and they work
  // Extra spark-controller flags (e.g. "--restart-budget", "1").
  std::vector<std::string> controller_flags;
  // Agent index -> shard binary to use instead of spark-shard.
  std::map<int, std::string> shard_binary_override;
  // CURVE everywhere: keys made with `spark-controller keygen` / `spark-agent keygen`, agents'
  // public keys trusted by the controller. Otherwise every process runs with --insecure.
  bool secure = false;
  // Start the daemons as the packaged systemd units do: the command line (ExecStart) and
  // environment (Environment=) of systemd/spark-{controller,agent}.service, with the unit's
  // config path pointing at the packaged default config (systemd/*.toml) in which only what this
  // cluster must differ in is rewritten (addresses, directories, keys, node name, CPU backend).
  bool packaged_units = false;
};

// The ExecStart= command line of a unit file, split on blanks (no quoting is used in ours).
Result<std::vector<std::string>> UnitExecStart(const std::string& unit_path);
// The Environment= assignments of a unit file.
std::map<std::string, std::string> UnitEnvironment(const std::string& unit_path);
// `text` (TOML) with each "KEY" of `values` ("table.key" for keys inside [table]) set to the
// given TOML value: an existing uncommented assignment is replaced in place, a missing top-level
// key is added before the first table, a missing table key at the end of its table.
std::string RewriteToml(const std::string& text, const std::map<std::string, std::string>& values);
// A TOML basic string literal.
std::string TomlString(const std::string& value);

// Paths of the binaries under test (the build tree); empty when missing.
struct Binaries {
  std::string controller;
  std::string agent;
  std::string shard;
  std::string model_tool;
  // Missing binaries, for a skip message; empty when all exist.
  std::string missing;
};
Binaries FindBinaries();

class Cluster {
 public:
  explicit Cluster(ClusterOptions options);
  ~Cluster();
  Cluster(const Cluster&) = delete;
  Cluster& operator=(const Cluster&) = delete;

  // Creates the model, the network, the controller and the agents, and waits until every agent
  // is registered.
  Status Start();

  bool netns() const { return netns_; }
  const std::string& root() const { return root_; }
  const std::string& model_dir() const { return model_dir_; }
  std::string node(int index) const { return "n" + std::to_string(index); }
  int agents() const { return static_cast<int>(agents_.size()); }

  // --- processes
  Status StartController();
  // SIGKILL, reaped.
  void KillController();
  Status StartAgent(int index, bool new_boot_id = false);
  // SIGKILL to the agent and, when `with_shards`, to every shard it started.
  void KillAgent(int index, bool with_shards = true);
  bool AgentRunning(int index);
  bool ControllerRunning();
  // Live shard processes (cmdline holds --assignment and the agent's state directory); all
  // agents when `agent` is empty.
  std::vector<pid_t> ShardPids(std::optional<int> agent = std::nullopt) const;
  // Cuts (down=true) or restores the agent's link to the bridge. Needs netns().
  Status SetPartitioned(int index, bool partitioned);

  // --- REST
  Result<http::ClientResponse> Get(const std::string& target);
  Result<http::ClientResponse> Post(const std::string& target, const nlohmann::json& body);
  Result<http::ClientResponse> Delete(const std::string& target);
  // GET /api/v1/models/NAME as JSON; null when it failed or returned an error status.
  nlohmann::json Model(const std::string& name);
  // The node's entry of GET /api/v1/nodes; null when absent.
  nlohmann::json Node(const std::string& name);
  // POST /api/v1/models; returns the status code (0 on transport failure).
  int Deploy(const std::string& name, int tp, nlohmann::json options = nlohmann::json::object(),
             std::vector<std::string> nodes = {});
  // Polls GET /api/v1/models/NAME until `predicate` holds; returns the last body (null on
  // timeout).
  nlohmann::json WaitModel(const std::string& name,
                           const std::function<bool(const nlohmann::json&)>& predicate,
                           std::chrono::milliseconds timeout);
  // Waits for state "ready" (and serving).
  nlohmann::json WaitReady(const std::string& name, std::chrono::milliseconds timeout);
  // POST /v1/completions (greedy); the generated token ids, or an error.
  Result<std::vector<int>> Complete(const std::string& model, const std::vector<int>& prompt,
                                    int max_tokens);

  // --- database (a second, non-locking connection to the controller's SQLite file)
  store::Store& db();
  std::string db_path() const { return root_ + "/controller.db"; }

  std::string controller_log() const { return root_ + "/controller.log"; }
  std::string agent_log(int index) const;
  // Last lines of every log, for failure messages.
  std::string LogTails(int lines = 30) const;

 private:
  struct Agent {
    std::string ns;         // network namespace ("" on loopback)
    std::string host_veth;  // bridge side of the veth pair
    std::string address;    // the agent's IP
    std::string state_dir;
    std::string boot_id_file;
    std::unique_ptr<Process> process;
  };

  Status SetUpKeys();
  // The command line and environment of a packaged unit, with its config replaced by the
  // packaged default rewritten with `config_values` into `config_path`.
  Status UnitCommand(const std::string& unit, const std::string& config,
                     const std::map<std::string, std::string>& config_values,
                     const std::string& config_path, const std::string& binary,
                     SpawnOptions* options);
  std::string keys_dir(int agent) const;  // -1: the controller's
  Status SetUpNetwork();
  void TearDownNetwork();
  Status Run(const std::vector<std::string>& args);
  http::HttpClient& Client();

  ClusterOptions options_;
  Binaries binaries_;
  RealProcessLauncher launcher_;
  bool netns_ = false;
  std::string id_;
  std::string root_;
  std::string model_dir_;
  std::string bridge_;
  std::string controller_address_;  // 10.x.y.1 or 127.0.0.1
  std::string agent_endpoint_;      // tcp://ADDRESS:PORT once known
  uint16_t http_port_ = 0;
  std::unique_ptr<Process> controller_;
  std::vector<Agent> agents_;
  std::optional<http::HttpClient> client_;
  std::unique_ptr<store::Store> db_;
  bool network_up_ = false;
};

// Waits (real time) until `predicate` holds, polling every `poll`; false on timeout.
bool WaitUntil(const std::function<bool()>& predicate, std::chrono::milliseconds timeout,
               std::chrono::milliseconds poll = std::chrono::milliseconds(50));

int64_t NowMs();

}  // namespace spark::cluster
