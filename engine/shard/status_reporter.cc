#include "engine/shard/status_reporter.h"

#include <utility>

#include "agent/shard_status_file.h"
#include "common/log.h"

namespace spark::shard {
namespace {

int64_t UnixMs(Clock::WallTimePoint t) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
}

}  // namespace

Status StatusReporter::SendLocked(spark::v1::ShardStatus status, bool write_file) {
  const int64_t now_ms = UnixMs(clock_.WallNow());
  if (status.phase() != phase_) {
    phase_ = status.phase();
    phase_since_unix_ms_ = now_ms;
  }
  status.set_deployment(identity_.deployment);
  status.set_run_id(identity_.run_id);
  status.set_generation(identity_.generation);
  status.set_rank(identity_.rank);
  status.set_pid(identity_.pid);
  status.set_started_unix_ms(identity_.started_unix_ms);
  status.set_phase_since_unix_ms(phase_since_unix_ms_);
  status.set_reported_unix_ms(now_ms);
  if (write_file && !status_file_.empty()) {
    if (Status written = agent::WriteShardStatusFile(status_file_, status); !written.ok()) {
      SPARK_LOG(WARN).With("status", written).With("path", status_file_)
          << "cannot write the shard status file";
    }
  }
  spark::v1::Envelope envelope;
  *envelope.mutable_shard_status() = std::move(status);
  Status sent = link_->Send(std::move(envelope));
  if (!sent.ok()) {
    SPARK_LOG(WARN).With("status", sent) << "cannot send a shard status";
  }
  return sent;
}

Status StatusReporter::Report(spark::v1::ShardPhase phase) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_) return Status::Ok();
  SPARK_LOG(INFO).With("phase", spark::v1::ShardPhase_Name(phase)) << "shard phase";
  spark::v1::ShardStatus status;
  status.set_phase(phase);
  return SendLocked(std::move(status));
}

Status StatusReporter::ReportProgress(uint64_t bytes_done, uint64_t bytes_total, double fraction) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_) return Status::Ok();
  spark::v1::ShardStatus status;
  status.set_phase(spark::v1::SHARD_PHASE_LOADING);
  status.mutable_progress()->set_bytes_done(bytes_done);
  status.mutable_progress()->set_bytes_total(bytes_total);
  status.mutable_progress()->set_fraction(fraction);
  return SendLocked(std::move(status));
}

Status StatusReporter::ReportReady(const std::string& data_endpoint) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_) return Status::Ok();
  SPARK_LOG(INFO).With("data_endpoint", data_endpoint) << "shard ready";
  spark::v1::ShardStatus status;
  status.set_phase(spark::v1::SHARD_PHASE_READY);
  status.set_data_endpoint(data_endpoint);
  return SendLocked(std::move(status));
}

Status StatusReporter::ReportSpeculativeStats(const spark::v1::SpeculativeStats& stats) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_ || phase_ != spark::v1::SHARD_PHASE_READY) return Status::Ok();
  spark::v1::ShardStatus status;
  status.set_phase(spark::v1::SHARD_PHASE_READY);
  *status.mutable_speculative() = stats;
  return SendLocked(std::move(status), /*write_file=*/false);
}

bool StatusReporter::ReportFailed(const std::string& reason, int exit_code) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_) return false;
  terminal_ = true;
  SPARK_LOG(ERROR).With("exit_code", exit_code) << "shard failed: " << reason;
  spark::v1::ShardStatus status;
  status.set_phase(spark::v1::SHARD_PHASE_FAILED);
  status.set_failure_reason(reason);
  status.set_exit_status(exit_code);
  SendLocked(std::move(status)).IgnoreError();
  return true;
}

bool StatusReporter::ReportStopped(const std::string& reason, int exit_code) {
  std::lock_guard<std::mutex> lock(mu_);
  if (terminal_) return false;
  terminal_ = true;
  SPARK_LOG(INFO).With("exit_code", exit_code) << "shard stopped: " << reason;
  spark::v1::ShardStatus status;
  status.set_phase(spark::v1::SHARD_PHASE_STOPPED);
  status.set_exit_status(exit_code);
  SendLocked(std::move(status)).IgnoreError();
  return true;
}

spark::v1::ShardPhase StatusReporter::phase() const {
  std::lock_guard<std::mutex> lock(mu_);
  return phase_;
}

bool StatusReporter::terminal() const {
  std::lock_guard<std::mutex> lock(mu_);
  return terminal_;
}

}  // namespace spark::shard
