// Records of the controller's store: the typed rows of the nodes, deployments, runs,
// run_members, events and kernel_tunings tables, their state enums, and the patches that update
// them. Callers of the store (controller/store/store.h) work with these structs, never with SQL.
//
// Times are unix milliseconds (wall clock), stamped by the store from its injected Clock; 0 means
// "not yet" (a run's ready_at_ms before it became ready, its ended_at_ms before it ended).
// JSON-valued fields are strings holding a JSON document ("{}" when empty); the store checks they
// are valid JSON before writing them.
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace spark::store {

// --- enums and their stable names (the names are what the database and the REST API hold) ---

enum class NodeState { kAlive, kDead };
// "alive", "dead".
std::string_view NodeStateName(NodeState state);
Result<NodeState> ParseNodeState(std::string_view name);

// What the user asked for: the controller converges the deployment towards it.
enum class Desired { kRunning, kStopped };
// "running", "stopped".
std::string_view DesiredName(Desired desired);
Result<Desired> ParseDesired(std::string_view name);

// The observed state of a deployment, as GET /api/v1/models/{name} reports it.
enum class DeploymentState {
  kPending,     // stored, no run yet (or waiting for nodes)
  kLoading,     // a run is starting: shards spawned, rendezvous, loading weights
  kReady,       // the current run served a real generation
  kRecovering,  // the last run ended with a failure; a new run is scheduled or starting
  kFailed,      // restart budget spent or unrecoverable error (see last_error)
  kStopping,    // undeploy requested, shards being stopped
  kStopped,     // no shard runs
};
// "pending", "loading", "ready", "recovering", "failed", "stopping", "stopped".
std::string_view DeploymentStateName(DeploymentState state);
Result<DeploymentState> ParseDeploymentState(std::string_view name);

enum class RunState { kStarting, kReady, kEnded };
// "starting", "ready", "ended".
std::string_view RunStateName(RunState state);
Result<RunState> ParseRunState(std::string_view name);

// The phase of one rank of a run (mirrors proto ShardPhase, plus kAssigned: chosen by placement,
// no ShardStatus received yet).
enum class MemberPhase {
  kAssigned,
  kStarting,
  kRendezvous,
  kLoading,
  kReady,
  kFailed,
  kStopped,
};
// "assigned", "starting", "rendezvous", "loading", "ready", "failed", "stopped".
std::string_view MemberPhaseName(MemberPhase phase);
Result<MemberPhase> ParseMemberPhase(std::string_view name);

// --- nodes ---

struct NodeRecord {
  std::string name{};             // unique; the agent's --node-name
  std::string boot_id{};          // /proc/sys/kernel/random/boot_id at registration
  std::string agent_version{};    // spark-agent version string
  std::string backend{};          // "cpu" or "cuda"
  std::string facts_json = "{}";  // GPUs, RDMA devices, preflight results (controller's format)
  NodeState state = NodeState::kAlive;
  int64_t registered_at_ms = 0;  // last registration
  int64_t last_seen_at_ms = 0;   // last registration or heartbeat written to the store

  friend bool operator==(const NodeRecord&, const NodeRecord&) = default;
};

// --- deployments ---

// What POST /api/v1/models stores.
struct DeploymentSpec {
  std::string name{};                       // unique among deployments that are not deleted
  std::string model_path{};                 // checkpoint directory on the nodes
  int tp = 1;                               // tensor-parallel size (number of shards), >= 1
  std::string backend{};                    // "cpu", "cuda", or "" (any)
  std::vector<std::string> pinned_nodes{};  // nodes to place on (rank order), empty = any
  std::string options_json = "{}";          // engine options (controller's format)
};

struct DeploymentRecord {
  int64_t id = 0;
  std::string name{};
  std::string model_path{};
  int tp = 1;
  std::string backend{};
  std::vector<std::string> pinned_nodes{};
  std::string options_json = "{}";
  Desired desired = Desired::kRunning;
  DeploymentState state = DeploymentState::kPending;
  int64_t generation = 0;    // generation of the newest run (0: none yet); grows by one per run
  int restarts = 0;          // restarts after failures (the controller resets it as it sees fit)
  std::string last_error{};  // why the last run ended or the deployment failed ("" when none)
  bool deleted = false;      // undeployed: hidden from ListDeployments unless asked for
  int64_t created_at_ms = 0;
  int64_t updated_at_ms = 0;

  friend bool operator==(const DeploymentRecord&, const DeploymentRecord&) = default;
};

// Fields to change in UpdateDeployment; unset fields keep their value. updated_at_ms is stamped.
struct DeploymentPatch {
  std::optional<Desired> desired{};
  std::optional<DeploymentState> state{};
  std::optional<int> restarts{};
  std::optional<std::string> last_error{};
  std::optional<bool> deleted{};
  std::optional<std::vector<std::string>> pinned_nodes{};
  std::optional<std::string> options_json{};
};

// --- runs and their members ---

// One attempt at running a deployment: one generation.
struct RunRecord {
  int64_t id = 0;
  int64_t deployment_id = 0;
  std::string deployment{};  // the deployment's name
  int64_t generation = 0;
  RunState state = RunState::kStarting;
  int64_t started_at_ms = 0;
  int64_t ready_at_ms = 0;               // 0 until ready
  int64_t ended_at_ms = 0;               // 0 until ended
  std::string end_reason{};              // "" until ended
  std::vector<std::string> placement{};  // node name per rank: placement[rank]

  friend bool operator==(const RunRecord&, const RunRecord&) = default;
};

struct RunMemberRecord {
  int64_t run_id = 0;
  int rank = 0;
  std::string node_name{};
  int64_t pid = 0;  // shard process id on its node (0: not spawned yet)
  MemberPhase phase = MemberPhase::kAssigned;
  std::optional<int> exit_status{};  // exit code when the shard exited normally
  std::optional<int> signal{};       // terminating signal when it was killed
  std::string failure_reason{};      // "" unless failed
  int64_t updated_at_ms = 0;

  friend bool operator==(const RunMemberRecord&, const RunMemberRecord&) = default;
};

// Fields to change in UpdateRunMember; unset fields keep their value. updated_at_ms is stamped.
struct RunMemberPatch {
  std::optional<int64_t> pid{};
  std::optional<MemberPhase> phase{};
  std::optional<int> exit_status{};
  std::optional<int> signal{};
  std::optional<std::string> failure_reason{};
};

// A run with its members in rank order.
struct RunDetail {
  RunRecord run{};
  std::vector<RunMemberRecord> members{};

  friend bool operator==(const RunDetail&, const RunDetail&) = default;
};

// --- events ---

// An entry of the event log (GET /api/v1/events). On AppendEvent, id and ts_ms are assigned by
// the store (the values passed in are ignored).
struct EventRecord {
  int64_t id = 0;  // strictly increasing, never reused
  int64_t ts_ms = 0;
  std::string kind{};        // short machine-readable kind: "node_dead", "run_ended", ...
  std::string deployment{};  // "" when not about a deployment
  std::string node{};        // "" when not about a node
  int64_t run_id = 0;        // 0 when not about a run
  int64_t generation = 0;    // 0 when not about a run
  std::string message{};     // one human-readable line
  std::string data_json = "{}";

  friend bool operator==(const EventRecord&, const EventRecord&) = default;
};

// --- kernel tunings ---

// A measured kernel configuration, shared by every node of one device class.
struct KernelTuning {
  std::string device_class{};  // e.g. "NVIDIA H100 80GB HBM3/sm90"
  std::string key{};           // problem key: kernel, shapes, dtype, batch bucket
  std::string config_json = "{}";
  double measured_us = 0;  // time of the chosen configuration, microseconds
  int64_t updated_at_ms = 0;

  friend bool operator==(const KernelTuning&, const KernelTuning&) = default;
};

}  // namespace spark::store
