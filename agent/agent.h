// Agent: the spark-agent event loop. Registers the node with the controller, heartbeats, runs the
// preflight, and starts/stops/reports shards as the controller assigns them
// (docs/control-plane.md is the contract).
//
// Agent plane: one DEALER (routing id "agent/<node>", CURVE client with the agent's key pair and
// the controller's public key unless insecure) connected to the controller's ROUTER. Flow:
//   - NodeRegistration at start; RegistrationAck sets the heartbeat interval and, the first time,
//     READY=1 to the service manager. No ack: a new attempt on a fresh connection after
//     min(3 intervals * 2^(attempt-1), reconnect_max_ms).
//   - Heartbeat every interval, with the running shards. No ack for 3 intervals: the controller is
//     gone; re-register on a fresh connection. An ack from a new controller incarnation, or an
//     Error NOT_FOUND/FAILED_PRECONDITION (the controller does not know this node): re-register at
//     once. Registrations list the shards still running (ShardSummary).
//   - ShardAssignment: fenced (an assignment or StopShard for a generation older than the newest
//     seen for its deployment is ignored); shards of older generations of the deployment are
//     killed and the new one starts once they are gone; preflight, then spawn (failure:
//     ShardStatus FAILED with the fix, no spawn); rank 0 also sends TokenizerFiles.
//   - StopShard: SIGTERM, SIGKILL after grace_period_ms; a shard not running here is reported
//     STOPPED at once.
// At creation, shards left by an earlier agent (state-dir pid files) are killed. Shutdown
// (RequestStop or a shutdown fd, e.g. a signalfd for SIGTERM/SIGINT): STOPPING=1, every shard is
// stopped with shutdown_grace_ms, their STOPPED reports are sent, Run returns OK.
// WATCHDOG=1 is sent from the loop at half the service manager's watchdog interval.
//
// Thread safety: Create and AddShutdownFd before Run; Run on one thread (the owner: every socket,
// process handle and timer is used there only, and nothing it calls blocks on the network or on a
// child); RequestStop from any thread.
// Ownership: the launcher, clock and notifier must outlive the Agent.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "agent/agent_options.h"
#include "agent/keys.h"
#include "agent/moe_tuning_reporter.h"
#include "agent/node_facts.h"
#include "agent/notifier.h"
#include "agent/preflight.h"
#include "agent/shard_supervisor.h"
#include "common/clock.h"
#include "common/fd.h"
#include "common/process.h"
#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::agent {

struct AgentDependencies {
  ProcessLauncher* launcher = nullptr;  // required
  Clock* clock = nullptr;               // nullptr: RealClock
  Notifier* notifier = nullptr;         // nullptr: no service-manager notifications
};

// spark-shard next to the running executable (/proc/self/exe); in a build tree, where that does
// not exist, <build>/engine/shard/spark-shard.
std::string DefaultShardBinary();

class Agent {
 public:
  // Creates the state directories, kills shards left by an earlier agent and prepares the
  // sockets. `keys` is required unless options.insecure.
  static Result<std::unique_ptr<Agent>> Create(AgentOptions options, NodeFacts facts,
                                               std::optional<AgentKeys> keys,
                                               AgentDependencies dependencies);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Runs the loop until shutdown is complete. Errors only for a broken environment (the poller or
  // the socket cannot be created).
  Status Run();
  // Begins the shutdown; safe from any thread and from signal-free contexts.
  void RequestStop();
  // A descriptor whose readability begins the shutdown (not read by the agent). Before Run.
  void AddShutdownFd(int fd);

  const std::string& routing_id() const { return routing_id_; }

 private:
  Agent(AgentOptions options, NodeFacts facts, std::optional<AgentKeys> keys,
        AgentDependencies dependencies, EventFd stop_event);

  // Connection and registration.
  Status OpenSocket();
  void SendRegistration();
  void SendHeartbeat();
  void ReRegister(const std::string& reason, bool fresh_connection);
  std::chrono::milliseconds RegistrationWait(int attempt) const;

  // Messages.
  void OnSocketReadable();
  void HandleEnvelope(const spark::v1::Envelope& envelope);
  void HandleRegistrationAck(const spark::v1::Envelope& envelope);
  void HandleHeartbeatAck(const spark::v1::Envelope& envelope);
  void HandleAssignment(const spark::v1::Envelope& envelope);
  void HandleStop(const spark::v1::Envelope& envelope);
  void HandleError(const spark::v1::Envelope& envelope);
  void Send(spark::v1::Envelope envelope);
  spark::v1::Envelope NewEnvelope(uint64_t generation);
  void SendShardStatus(const spark::v1::ShardStatus& status);
  // Sends the MoE tuning cache file's records when it changed (or after a registration).
  void ReportMoeTunings();

  // Shards.
  bool IsStale(const std::string& deployment, uint64_t generation);
  void StartPending();
  void StartNow(const spark::v1::ShardAssignment& assignment);
  void SendTokenizerFiles(const spark::v1::ShardAssignment& assignment);

  void Tick(Clock::TimePoint now);
  std::chrono::milliseconds PollTimeout(Clock::TimePoint now) const;
  void BeginShutdown(const std::string& why);
  void SetStatus(const std::string& status);

  AgentOptions options_;
  NodeFacts facts_;
  std::optional<AgentKeys> keys_;
  ProcessLauncher* launcher_;
  Clock* clock_;
  Notifier* notifier_;
  std::string routing_id_;
  PreflightContext preflight_;

  ZmqContext context_;
  Poller poller_;
  std::optional<ZmqSocket> socket_;
  int socket_poll_id_ = 0;
  EventFd stop_event_;
  std::vector<int> shutdown_poll_ids_;
  std::unique_ptr<ShardSupervisor> supervisor_;
  MoeTuningReporter moe_tunings_;

  // Wire identity.
  uint64_t incarnation_ = 0;
  uint64_t next_sequence_ = 1;

  // Registration state.
  bool registered_ = false;
  bool ever_registered_ = false;
  int registration_attempt_ = 0;
  Clock::TimePoint registration_deadline_{};
  std::optional<uint64_t> controller_incarnation_;
  std::chrono::milliseconds heartbeat_interval_{1000};
  Clock::TimePoint last_ack_{};
  Clock::TimePoint next_heartbeat_{};

  // Fencing and deferred starts.
  std::map<std::string, uint64_t> newest_generation_;
  std::map<ShardKey, spark::v1::ShardAssignment> pending_;

  // Service manager.
  std::chrono::microseconds watchdog_interval_{0};
  Clock::TimePoint next_watchdog_{};
  std::string last_status_;
  std::string last_preflight_failures_;  // logged once per change

  // Shutdown.
  bool stopping_ = false;
  Clock::TimePoint shutdown_deadline_{};
};

}  // namespace spark::agent
