// Controller: the control plane's brain (docs/control-plane.md). One owner thread runs a poll loop
// over the agent-plane ROUTER, the data-plane DEALERs of ready runs and a command queue fed by
// other threads (REST handlers), and drives:
//   - the node registry: registrations, heartbeats, dead after `missed_heartbeats` intervals,
//     reboots (new boot id) and agent restarts;
//   - the reconciler: for each deployment, desired vs actual. Placement (tp eligible nodes,
//     previous placement first, pinned nodes honoured), a new run (generation = previous + 1)
//     with a ShardAssignment per rank, the rendezvous broker, member phases from ShardStatus,
//     READY of every rank -> data plane connected -> one real generation -> ready;
//   - failures: a shard exit or FAILED report, a dead or rebooted node, a missed deadline
//     (spawn, load, first generation) end the run with a reason, stop the other members, fail the
//     run's in-flight requests and schedule a new run with exponential backoff within a restart
//     budget (then `failed`);
//   - fencing: run messages whose generation is not the deployment's current one are dropped;
//     shards an agent reports that belong to no current run are stopped;
//   - adoption: after a controller restart, a run the store records as open is adopted when every
//     member's agent re-registers reporting its shard READY with the run's generation; otherwise
//     it is ended ("controller restart: group incomplete") and a new run starts.
// Every state transition goes to the store (deployments, runs, run_members, nodes, events).
//
// Public methods are thread-safe: they post work to the owner thread; their callbacks run on the
// owner thread and must not block. Time comes from the injected Clock (tests use ManualClock; the
// loop also wakes at least every `max_poll_wait` of real time to look at the clock).
//
// Ownership: the Store and Clock are borrowed and must outlive the controller. Stop() (or the
// destructor) ends the thread; running shards are left alone so a restarted controller adopts
// them.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/fd.h"
#include "common/status.h"
#include "common/zmq.h"
#include "controller/agent_plane.h"
#include "controller/data_plane.h"
#include "controller/deployment_options.h"
#include "controller/node_registry.h"
#include "controller/placement.h"
#include "controller/rendezvous_broker.h"
#include "controller/restart_policy.h"
#include "controller/store/store.h"
#include "controller/views.h"
#include "spark.pb.h"

namespace spark::controller {

struct ControllerOptions {
  std::string agent_listen = "tcp://0.0.0.0:7440";
  bool insecure = false;
  std::string keys_dir = "/etc/spark/keys";
  std::chrono::milliseconds heartbeat_interval{1000};
  int missed_heartbeats = 3;
  // Deadlines of a run (a deployment's options may override the first three).
  std::chrono::milliseconds rendezvous_timeout{120000};        // a rank waiting for its peers
  std::chrono::milliseconds load_timeout{1800000};             // spawn to every rank READY
  std::chrono::milliseconds first_generation_timeout{120000};  // READY to the first generation
  std::chrono::milliseconds spawn_timeout{30000};  // assignment sent to the agent's STARTING
  std::chrono::milliseconds stop_grace{5000};      // StopShard: SIGTERM, then SIGKILL
  // How long a restarted controller waits for agents to report the shards of open runs;
  // 0: 10 heartbeat intervals.
  std::chrono::milliseconds adopt_timeout{0};
  RestartPolicyOptions restart;
  // RendezvousEndpoint.controller_address sent to shards; "" = the agent's own controller address.
  std::string shard_controller_address;
  // The first generation of every run (token ids valid in any vocabulary).
  std::vector<int32_t> probe_prompt = {1, 2, 3, 4};
  uint32_t probe_max_tokens = 2;
  // Longest real-time sleep of the loop between looks at the clock.
  std::chrono::milliseconds max_poll_wait{50};
};

struct DeployRequest {
  std::string name;
  std::string model_path;
  int tp = 1;
  std::string backend;             // "cpu", "cuda" or "" (any)
  std::vector<std::string> nodes;  // pinned nodes, rank order; empty = any
  nlohmann::json options = nlohmann::json::object();
};

// Deployment and node names: 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit.
Status ValidateName(const std::string& what, const std::string& name);

class Controller {
 public:
  Controller(ControllerOptions options, store::Store& store, Clock& clock);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  // Loads deployments, nodes and open runs from the store, binds the agent plane and starts the
  // owner thread.
  Status Start();
  // Ends the owner thread; pending requests fail with Unavailable. Idempotent.
  void Stop();

  // The agent-plane endpoint with the port resolved (after Start).
  std::string agent_endpoint() const;

  template <typename T>
  using Callback = std::function<void(T)>;

  // Stores a new deployment (the callback runs after the commit). InvalidArgument for a bad
  // request, AlreadyExists when the name is taken.
  void Deploy(DeployRequest request, Callback<Result<DeploymentView>> done);
  // Desired stopped + deleted; the shards are stopped. NotFound when unknown.
  void Undeploy(std::string name, Callback<Result<DeploymentView>> done);
  // Ends the current run (if any) and starts a new one; resets the restart budget (also revives
  // a failed deployment).
  void Restart(std::string name, Callback<Result<DeploymentView>> done);
  void GetDeployment(std::string name, Callback<Result<DeploymentView>> done);
  void ListDeployments(Callback<std::vector<DeploymentView>> done);
  void ListNodes(Callback<std::vector<NodeView>> done);
  void Readiness(Callback<ReadinessView> done);
  // What the inference endpoints need of a model: whether it serves now, its generation and the
  // tokenizer files of its current run. NotFound when unknown.
  void GetServingModel(std::string name, Callback<Result<ServingModelView>> done);

  // Sends `request` to the model's rank 0 (request_id assigned when empty). `on_chunk` gets every
  // chunk; its last call is a final chunk or an error: NotFound (no such model), Unavailable (not
  // ready: retry later), or the failure that ended the run.
  void Generate(std::string model, spark::v1::GenerateRequest request, ChunkHandler on_chunk);
  void Cancel(std::string request_id, std::string reason);

  // Runs `fn` on the owner thread.
  void Post(std::function<void()> fn);
  // Runs `fn` on the owner thread and waits (real time, bounded) for its result.
  template <typename T>
  Result<T> Call(std::function<T()> fn,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto promise = std::make_shared<std::promise<T>>();
    std::future<T> future = promise->get_future();
    Post([promise, fn = std::move(fn)] { promise->set_value(fn()); });
    if (future.wait_for(timeout) != std::future_status::ready) {
      return DeadlineExceeded("the controller loop did not answer within " +
                              std::to_string(timeout.count()) + " ms");
    }
    return future.get();
  }

  // True when the owner loop went round within `max_age` of real time (liveness).
  bool Responsive(std::chrono::milliseconds max_age) const;

  struct Stats {
    uint64_t fenced_messages = 0;   // run messages of a generation that is not current
    uint64_t dropped_messages = 0;  // undecodable / unknown peer / unauthorised
    uint64_t runs_started = 0;
    uint64_t stale_shards_stopped = 0;
    uint64_t moe_tunings_received = 0;  // MoE tuning records accepted from agents
    uint64_t moe_tunings_rejected = 0;  // invalid, or for a GPU the node does not have
  };
  // Owner thread only (use Call from other threads).
  const Stats& stats() const { return stats_; }

 private:
  enum class RunStage { kAdopting, kStarting, kProbing, kReady };

  struct Member {
    int rank = 0;
    std::string node;
    store::MemberPhase phase = store::MemberPhase::kAssigned;
    int64_t pid = 0;
    bool agent_confirmed = false;  // the agent reported the spawn (or re-registered with it)
    std::string data_endpoint;
    double progress = 0;
    std::optional<int> exit_status;
    std::optional<int> signal;
    std::string failure_reason;
  };

  struct Run {
    int64_t id = 0;
    uint64_t generation = 0;
    RunStage stage = RunStage::kStarting;
    std::vector<Member> members;
    int64_t started_unix_ms = 0;
    Clock::TimePoint started{};
    Clock::TimePoint spawn_deadline{};
    Clock::TimePoint load_deadline{};
    Clock::TimePoint probe_deadline{};
    Clock::TimePoint adopt_deadline{};
    std::unique_ptr<DataPlaneClient> data;
    int data_poll_id = 0;
    std::string probe_request_id;
    // Sent by the rank-0 agent once the shard started; null until then.
    std::shared_ptr<const std::vector<spark::v1::TokenizerFile>> tokenizer_files;
  };

  struct Deployment {
    store::DeploymentRecord record;
    DeploymentOptions options;
    std::optional<Run> run;
    std::vector<std::string> last_placement;
    RestartPolicy restart_policy;
    Clock::TimePoint next_attempt{};
    bool recovering = false;         // the last run failed; cleared when a run becomes ready
    bool waiting_for_nodes = false;  // placement failed; retried when a node registers
    std::string waiting_reason;
    // Speculative decoding counters: the sum over ended runs, and rank 0's latest report of the
    // run of `speculative_generation`.
    spark::v1::SpeculativeStats speculative_ended;
    spark::v1::SpeculativeStats speculative_run;
    uint64_t speculative_generation = 0;
    bool speculative_reported = false;  // rank 0 of some run reported counters
  };

  // A shard of an ended run that was told to stop and has not been seen gone yet.
  struct Draining {
    std::string deployment;
    uint64_t generation = 0;
    uint32_t rank = 0;
    std::string node;
    Clock::TimePoint deadline{};
  };

  // --- loop (controller.cc)
  void Loop();
  void RunCommands();
  void OnTimers(Clock::TimePoint now);
  std::chrono::milliseconds PollTimeout(Clock::TimePoint now) const;
  void Fire(std::function<Status(store::WriteTxn&)> body, std::string what);
  void PollWrites();
  void RecordEvent(const std::string& kind, const std::string& deployment, const std::string& node,
                   int64_t run_id, int64_t generation, const std::string& message,
                   nlohmann::json data = nlohmann::json::object());
  Status LoadState();
  // Rank 0's data endpoint recorded in the run's run_ready event ("" when not found).
  std::string RecordedDataEndpoint(const store::RunRecord& run);

  // --- agent plane (controller_agents.cc)
  void OnAgentPlaneReadable();
  void HandleInbound(AgentPlane::Inbound& inbound);
  void HandleRegistration(const AgentPlane::Inbound& inbound);
  void HandleHeartbeat(const AgentPlane::Inbound& inbound);
  void HandleShardStatus(const AgentPlane::Inbound& inbound);
  void HandleRendezvousPublish(const AgentPlane::Inbound& inbound);
  void HandleRendezvousLookup(const AgentPlane::Inbound& inbound);
  void HandleTokenizerFiles(const AgentPlane::Inbound& inbound);

  // --- MoE tuning records (controller_tuning.cc)
  void HandleMoeTuningReport(const AgentPlane::Inbound& inbound);
  // The stored records of the device class of `node`'s GPU `gpu_index` under the engine
  // options' shared-memory cap (empty when the node reported no such GPU).
  std::vector<spark::v1::MoeTuningRecord> MoeTuningsFor(
      const NodeEntry& node, uint32_t gpu_index, const spark::v1::EngineOptions& engine) const;
  // Rank 0's speculative decoding counters of run `generation` (cumulative within the run).
  void RecordSpeculativeStats(Deployment& d, uint64_t generation,
                              const spark::v1::SpeculativeStats& stats);
  void SendError(const std::string& routing_id, StatusCode code, const std::string& message,
                 uint64_t in_reply_to);
  void SendRendezvousReplies(const std::vector<RendezvousBroker::Reply>& replies);
  void OnNodeDead(const std::string& node, const std::string& reason);
  // Compares what a node reports with the runs: confirms members, fails runs whose member is
  // gone, stops shards that belong to no current run.
  void ReconcileNodeShards(const std::string& node, bool full_report);
  void StopStaleShard(const std::string& node, const spark::v1::ShardSummary& shard);
  bool IsDraining(const std::string& deployment, uint64_t generation, uint32_t rank,
                  const std::string& node) const;
  // The member a run message is about, when the sender may speak for it; nullptr otherwise.
  Member* AuthorizedMember(const AgentPlane::Inbound& inbound, const std::string& deployment,
                           uint64_t generation, uint32_t rank, Deployment** deployment_out);

  // --- runs (controller_runs.cc)
  void Reconcile(Deployment& d, Clock::TimePoint now);
  void StartRun(Deployment& d, Clock::TimePoint now);
  void EndRun(Deployment& d, const std::string& reason, bool failure);
  void FailRun(Deployment& d, const std::string& reason) { EndRun(d, reason, true); }
  void CheckRunDeadlines(Deployment& d, Clock::TimePoint now);
  void CheckAllReady(Deployment& d);
  void StartProbe(Deployment& d);
  void OnProbeDone(const std::string& name, uint64_t generation,
                   const Result<spark::v1::TokenChunk>& chunk);
  void SetState(Deployment& d, store::DeploymentState state, std::optional<std::string> error);
  void UpdateMember(const Deployment& d, const Member& m, store::RunMemberPatch patch);
  spark::v1::ShardAssignment MakeAssignment(const Deployment& d, const Run& run,
                                            const Member& m) const;
  std::vector<PlacementCandidate> Candidates(const Deployment& d) const;
  void RemoveDataPlane(Run& run);
  DeploymentView View(const Deployment& d) const;
  NodeView NodeViewOf(const NodeEntry& node) const;
  Deployment* FindDeployment(const std::string& name);

  ControllerOptions options_;
  store::Store& store_;
  Clock& clock_;
  ZmqContext context_;
  EnvelopeSequencer sequencer_;
  std::unique_ptr<AgentPlane> agent_plane_;
  Poller poller_;
  std::optional<EventFd> wake_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  bool started_ = false;
  std::atomic<int64_t> last_tick_real_ms_{0};

  std::mutex commands_mu_;
  std::deque<std::function<void()>> commands_;

  NodeRegistry nodes_;
  RendezvousBroker broker_;
  std::map<std::string, Deployment> deployments_;
  std::vector<Draining> draining_;
  std::map<std::string, Clock::TimePoint> stale_stop_sent_;  // shard key -> last StopShard
  std::map<std::string, int> heartbeats_since_touch_;
  std::vector<std::unique_ptr<DataPlaneClient>> graveyard_;  // destroyed at the next loop turn
  std::deque<std::pair<std::future<Status>, std::string>> writes_;
  Clock::TimePoint next_key_reload_{};
  // Nodes known from the store that have not registered by then are recorded as dead.
  std::optional<Clock::TimePoint> missing_nodes_check_;
  std::vector<std::string> stored_alive_nodes_;
  uint64_t next_request_id_ = 1;
  Stats stats_;
};

}  // namespace spark::controller
