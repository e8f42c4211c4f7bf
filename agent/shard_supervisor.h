// ShardSupervisor: starts spark-shard processes for assignments, notices their exit at once
// (pidfd in the agent's Poller), stops them on request (SIGTERM, SIGKILL after a grace period),
// and reports every phase it is responsible for (STARTING with the pid, FAILED/STOPPED with the
// exit code or signal and the last log lines) through a callback.
//
// Start(assignment) writes <state-dir>/shards/<stem>.pb (the assignment as the shard gets it:
// rank 0's data_listen_address filled in, NCCL variables merged), spawns
//   <shard-binary> --assignment <pb> --controller <endpoint> --node <name>
//                  (--keys <dir> | --insecure) [--advertise-host <host>]
// with stdout+stderr appended to <state-dir>/logs/<stem>.log, the environment plus the NCCL
// variables (NCCL_NVLS_ENABLE=0 always) and SPARK_SHARD_STATUS_FILE (shard_status_file.h), in a
// new process group that dies with the agent (PR_SET_PDEATHSIG), and records <stem>.pid.
// An exit is STOPPED when the supervisor asked the shard to stop or it exited with code 0, FAILED
// otherwise; the files of the shard except its log are removed.
//
// Thread safety: not thread-safe. Every method, the Poller and the callback run on the agent's
// owner thread. No method blocks: stopping sends signals and escalates in Tick().
// Ownership: the supervisor owns the Process handles; destroying it kills the shards still running
// (SIGKILL to their groups) and reaps them. The launcher, poller and clock must outlive it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <compare>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent/shard_files.h"
#include "common/clock.h"
#include "common/process.h"
#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::agent {

struct ShardKey {
  std::string deployment;
  uint64_t generation = 0;
  uint32_t rank = 0;

  friend auto operator<=>(const ShardKey&, const ShardKey&) = default;
  std::string ToString() const;
};

ShardKey KeyOf(const spark::v1::ShardAssignment& assignment);

struct SupervisorOptions {
  std::string state_dir;
  std::string shard_binary;
  std::string controller_endpoint;
  std::string node_name;
  std::string keys_dir;  // passed as --keys unless insecure
  bool insecure = false;
  std::string boot_id;         // recorded in pid files
  std::string data_listen;     // rank 0 bind address; "" = the assignment's, else 0.0.0.0:0
  std::string advertise_host;  // "" = the data_listen host when it names one
  std::map<std::string, std::string> nccl_env;  // the node's NCCL variables
  size_t log_tail_lines = 20;
};

// The assignment as written for the shard (data_listen_address, merged nccl_env).
spark::v1::ShardAssignment EffectiveAssignment(const SupervisorOptions& options,
                                               const spark::v1::ShardAssignment& assignment);
// The spawn request for a shard (arguments, environment, log files).
SpawnOptions ShardSpawnOptions(const SupervisorOptions& options,
                               const spark::v1::ShardAssignment& effective,
                               const ShardPaths& paths);

class ShardSupervisor {
 public:
  using StatusCallback = std::function<void(const spark::v1::ShardStatus&)>;

  ShardSupervisor(SupervisorOptions options, ProcessLauncher* launcher, Poller* poller,
                  Clock* clock, StatusCallback on_status);
  ~ShardSupervisor();
  ShardSupervisor(const ShardSupervisor&) = delete;
  ShardSupervisor& operator=(const ShardSupervisor&) = delete;

  // Spawns the shard and reports STARTING, or FAILED when it cannot be started. A shard with the
  // same key that is already running is left alone (its current status is reported again).
  void Start(const spark::v1::ShardAssignment& assignment);
  // SIGTERM now and SIGKILL when `grace` has passed (0: SIGKILL now). False when not running.
  bool Stop(const ShardKey& key, std::chrono::milliseconds grace, const std::string& reason);
  void StopAll(std::chrono::milliseconds grace, const std::string& reason);
  // Escalates to SIGKILL where the grace period is over.
  void Tick(Clock::TimePoint now);
  // The earliest SIGKILL escalation still due; nullopt when none.
  std::optional<Clock::TimePoint> NextDeadline() const;

  bool IsRunning(const ShardKey& key) const;
  std::vector<ShardKey> Running() const;
  std::optional<pid_t> PidOf(const ShardKey& key) const;
  size_t size() const { return shards_.size(); }
  // One summary per running shard; phase and data endpoint from the shard's status file
  // (SHARD_PHASE_UNSPECIFIED while the shard has not written one).
  std::vector<spark::v1::ShardSummary> Summaries() const;

 private:
  struct Shard {
    spark::v1::ShardAssignment assignment;  // effective
    ShardPaths paths;
    std::unique_ptr<Process> process;
    int poll_id = 0;
    int64_t started_unix_ms = 0;
    bool stop_requested = false;
    std::string stop_reason;
    std::optional<Clock::TimePoint> kill_at;
  };

  void OnExit(const ShardKey& key);
  spark::v1::ShardStatus BaseStatus(const Shard& shard) const;
  int64_t WallMs() const;

  SupervisorOptions options_;
  ProcessLauncher* launcher_;
  Poller* poller_;
  Clock* clock_;
  StatusCallback on_status_;
  std::map<ShardKey, Shard> shards_;
};

}  // namespace spark::agent
