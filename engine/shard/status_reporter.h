// StatusReporter: sends the shard's ShardStatus reports (docs/control-plane.md flows 2-6) to the
// controller: STARTING, RENDEZVOUS, LOADING with progress, READY (rank 0 with its data endpoint),
// and one terminal report, FAILED (reason and fix) or STOPPED, with the exit code the process is
// about to exit with. Every report carries the run identity, pid, start time, time of entering
// the phase and time of the report; the envelope carries the run generation (the link's stamper).
//
// The first terminal report wins: afterwards every report is ignored (a watchdog or signal
// thread and the engine thread may race to report the end).
//
// When `status_file` is not empty (the agent's SPARK_SHARD_STATUS_FILE), every phase report is also
// written there (agent/shard_status_file.h) before it is sent, so the agent knows the phase and
// rank 0's data endpoint even when the controller is unreachable; a write failure is logged and
// does not stop the report.
//
// Thread safety: all methods may be called from any thread. Ownership: borrows link and clock.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "common/clock.h"
#include "common/status.h"
#include "engine/shard/controller_link.h"
#include "spark.pb.h"

namespace spark::shard {

struct ShardIdentity {
  std::string deployment;
  uint64_t run_id = 0;
  uint64_t generation = 0;
  uint32_t rank = 0;
  pid_t pid = 0;
  int64_t started_unix_ms = 0;
};

class StatusReporter {
 public:
  StatusReporter(ControllerLink* link, ShardIdentity identity, Clock& clock,
                 std::string status_file = {})
      : link_(link),
        identity_(std::move(identity)),
        clock_(clock),
        status_file_(std::move(status_file)) {}

  // A non-terminal phase change (STARTING, RENDEZVOUS, LOADING).
  Status Report(spark::v1::ShardPhase phase);
  // LOADING with progress; `fraction` in [0, 1].
  Status ReportProgress(uint64_t bytes_done, uint64_t bytes_total, double fraction);
  // READY; `data_endpoint` is empty on ranks other than 0.
  Status ReportReady(const std::string& data_endpoint);
  // Rank 0 while READY with speculative decoding on: READY again, carrying the run's counters
  // (cumulative). Not written to the status file (it holds the phase and data endpoint, which
  // this report does not repeat). Ignored unless the phase is READY.
  Status ReportSpeculativeStats(const spark::v1::SpeculativeStats& stats);
  // Terminal reports, with the exit code the process is about to exit with; false (nothing
  // sent) when a terminal report was already made. FAILED carries `reason` as failure_reason;
  // a STOPPED reason is only logged.
  bool ReportFailed(const std::string& reason, int exit_code);
  bool ReportStopped(const std::string& reason, int exit_code);

  spark::v1::ShardPhase phase() const;
  bool terminal() const;
  const ShardIdentity& identity() const { return identity_; }

 private:
  // Fills the identity and times; sets phase_/phase_since_ under mu_. `write_file`: also write
  // the status file (when one is configured).
  Status SendLocked(spark::v1::ShardStatus status, bool write_file = true);

  ControllerLink* link_;
  const ShardIdentity identity_;
  Clock& clock_;
  const std::string status_file_;
  mutable std::mutex mu_;
  spark::v1::ShardPhase phase_ = spark::v1::SHARD_PHASE_UNSPECIFIED;  // guarded by mu_
  int64_t phase_since_unix_ms_ = 0;                                   // guarded by mu_
  bool terminal_ = false;                                             // guarded by mu_
};

}  // namespace spark::shard
