#include "agent/shard_supervisor.h"

#include <signal.h>

#include <filesystem>
#include <system_error>
#include <utility>

#include "agent/log_tail.h"
#include "agent/shard_status_file.h"
#include "common/log.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::agent {
namespace {

// The host part of "HOST:PORT" or "tcp://HOST:PORT" when it names a concrete address.
std::string ConcreteHost(std::string endpoint) {
  if (endpoint.starts_with("tcp://")) endpoint = endpoint.substr(6);
  const size_t colon = endpoint.rfind(':');
  if (colon == std::string::npos) return "";
  std::string host = endpoint.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host.empty() || host == "0.0.0.0" || host == "*" || host == "::") return "";
  return host;
}

}  // namespace

std::string ShardKey::ToString() const {
  return deployment + "/" + std::to_string(generation) + "/" + std::to_string(rank);
}

ShardKey KeyOf(const spark::v1::ShardAssignment& assignment) {
  return ShardKey{assignment.deployment(), assignment.generation(), assignment.rank()};
}

spark::v1::ShardAssignment EffectiveAssignment(const SupervisorOptions& options,
                                               const spark::v1::ShardAssignment& assignment) {
  spark::v1::ShardAssignment a = assignment;
  if (a.rank() == 0) {
    if (!options.data_listen.empty()) {
      a.set_data_listen_address(options.data_listen);
    } else if (a.data_listen_address().empty()) {
      a.set_data_listen_address("0.0.0.0:0");
    }
  }
  std::map<std::string, std::string> env = options.nccl_env;
  for (const auto& [key, value] : assignment.nccl_env()) env[key] = value;
  env["NCCL_NVLS_ENABLE"] = "0";
  a.mutable_nccl_env()->clear();
  for (const auto& [key, value] : env) (*a.mutable_nccl_env())[key] = value;
  return a;
}

SpawnOptions ShardSpawnOptions(const SupervisorOptions& options,
                               const spark::v1::ShardAssignment& effective,
                               const ShardPaths& paths) {
  SpawnOptions spawn;
  spawn.args = {options.shard_binary,        "--assignment", paths.assignment, "--controller",
                options.controller_endpoint, "--node",       options.node_name};
  if (options.insecure) {
    spawn.args.push_back("--insecure");
  } else {
    spawn.args.push_back("--keys");
    spawn.args.push_back(options.keys_dir);
  }
  std::string advertise = options.advertise_host;
  if (advertise.empty()) advertise = ConcreteHost(effective.data_listen_address());
  if (!advertise.empty()) {
    spawn.args.push_back("--advertise-host");
    spawn.args.push_back(advertise);
  }
  for (const auto& [key, value] : effective.nccl_env()) spawn.env[key] = value;
  spawn.env[kShardStatusFileEnv] = paths.status;
  spawn.env[engine::kMoeTuningFileEnv] =
      (std::filesystem::path(options.state_dir) / engine::kMoeTuningFileName).string();
  // The shard is not the service systemd supervises: it must not answer for the agent.
  spawn.unset_env = {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                     "LISTEN_FDS",    "LISTEN_PID",    "LISTEN_FDNAMES"};
  spawn.stdout_path = paths.log;
  spawn.stderr_path = paths.log;
  spawn.new_process_group = true;
  spawn.kill_on_parent_death = true;
  return spawn;
}

ShardSupervisor::ShardSupervisor(SupervisorOptions options, ProcessLauncher* launcher,
                                 Poller* poller, Clock* clock, StatusCallback on_status)
    : options_(std::move(options)),
      launcher_(launcher),
      poller_(poller),
      clock_(clock),
      on_status_(std::move(on_status)) {}

ShardSupervisor::~ShardSupervisor() {
  for (auto& [key, shard] : shards_) {
    poller_->Remove(shard.poll_id);
    std::error_code ec;
    std::filesystem::remove(shard.paths.pid, ec);
    std::filesystem::remove(shard.paths.assignment, ec);
    std::filesystem::remove(shard.paths.status, ec);
    // The Process destructor SIGKILLs the group and reaps the child.
  }
}

int64_t ShardSupervisor::WallMs() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock_->WallNow().time_since_epoch())
      .count();
}

spark::v1::ShardStatus ShardSupervisor::BaseStatus(const Shard& shard) const {
  spark::v1::ShardStatus s;
  s.set_deployment(shard.assignment.deployment());
  s.set_run_id(shard.assignment.run_id());
  s.set_generation(shard.assignment.generation());
  s.set_rank(shard.assignment.rank());
  if (shard.process != nullptr) s.set_pid(shard.process->pid());
  s.set_started_unix_ms(shard.started_unix_ms);
  s.set_reported_unix_ms(WallMs());
  return s;
}

void ShardSupervisor::Start(const spark::v1::ShardAssignment& assignment) {
  const ShardKey key = KeyOf(assignment);
  if (auto it = shards_.find(key); it != shards_.end()) {
    spark::v1::ShardStatus s = BaseStatus(it->second);
    Result<spark::v1::ShardStatus> own = ReadShardStatusFile(it->second.paths.status);
    s.set_phase(own.ok() ? own->phase() : spark::v1::SHARD_PHASE_STARTING);
    if (own.ok()) s.set_data_endpoint(own->data_endpoint());
    s.set_phase_since_unix_ms(s.reported_unix_ms());
    on_status_(s);
    return;
  }

  const spark::v1::ShardAssignment effective = EffectiveAssignment(options_, assignment);
  const std::string stem = ShardStem(key.deployment, key.generation, key.rank);
  Shard shard;
  shard.assignment = effective;
  shard.paths = ShardPathsFor(options_.state_dir, stem);

  auto fail = [&](const std::string& reason) {
    spark::v1::ShardStatus s = BaseStatus(shard);
    s.set_phase(spark::v1::SHARD_PHASE_FAILED);
    s.set_failure_reason(reason);
    s.set_phase_since_unix_ms(s.reported_unix_ms());
    SPARK_LOG(ERROR).With("shard", key.ToString()) << reason;
    on_status_(s);
  };

  std::string bytes;
  if (!effective.SerializeToString(&bytes)) {
    fail("cannot serialize the assignment (agent bug)");
    return;
  }
  if (Status st = WriteFileAtomically(shard.paths.assignment, bytes); !st.ok()) {
    fail("cannot write the assignment file: " + st.message() + ". Fix: make " + options_.state_dir +
         " writable for spark-agent and check the disk is not full");
    return;
  }
  std::error_code ec;
  std::filesystem::remove(shard.paths.status, ec);

  const SpawnOptions spawn = ShardSpawnOptions(options_, effective, shard.paths);
  Result<std::unique_ptr<Process>> process = launcher_->Spawn(spawn);
  if (!process.ok()) {
    std::filesystem::remove(shard.paths.assignment, ec);
    fail("cannot start spark-shard: " + process.status().message() +
         ". Fix: check --shard-binary (" + options_.shard_binary + ") and that " +
         LogsDir(options_.state_dir) + " is writable");
    return;
  }
  shard.process = std::move(*process);
  shard.started_unix_ms = WallMs();
  const pid_t pid = shard.process->pid();

  PidRecord record;
  record.pid = pid;
  record.start_ticks = ProcessStartTicks(pid).value_or(0);
  record.boot_id = options_.boot_id;
  if (Status st = WritePidFile(shard.paths.pid, record); !st.ok()) {
    SPARK_LOG(WARN).With("shard", key.ToString()).With("error", st)
        << "cannot write the pid file; a restarted agent will not find this shard";
  }

  shard.poll_id = poller_->AddFd(shard.process->pidfd(), [this, key] { OnExit(key); });
  SPARK_LOG(INFO).With("shard", key.ToString()).With("pid", pid).With("log", shard.paths.log)
      << "started spark-shard";
  auto [it, inserted] = shards_.emplace(key, std::move(shard));
  spark::v1::ShardStatus s = BaseStatus(it->second);
  s.set_phase(spark::v1::SHARD_PHASE_STARTING);
  s.set_phase_since_unix_ms(s.started_unix_ms());
  on_status_(s);
}

bool ShardSupervisor::Stop(const ShardKey& key, std::chrono::milliseconds grace,
                           const std::string& reason) {
  auto it = shards_.find(key);
  if (it == shards_.end()) return false;
  Shard& shard = it->second;
  if (!shard.stop_requested) {
    shard.stop_requested = true;
    shard.stop_reason = reason;
  }
  const int signal = grace.count() <= 0 ? SIGKILL : SIGTERM;
  if (Status st = shard.process->Kill(signal); !st.ok()) {
    SPARK_LOG(WARN).With("shard", key.ToString()).With("error", st) << "cannot signal the shard";
  }
  const Clock::TimePoint kill_at = clock_->Now() + grace;
  if (signal == SIGTERM && (!shard.kill_at || kill_at < *shard.kill_at)) shard.kill_at = kill_at;
  if (signal == SIGKILL) shard.kill_at.reset();
  SPARK_LOG(INFO)
          .With("shard", key.ToString())
          .With("grace_ms", grace.count())
          .With("reason", reason)
      << "stopping shard";
  return true;
}

void ShardSupervisor::StopAll(std::chrono::milliseconds grace, const std::string& reason) {
  std::vector<ShardKey> keys = Running();
  for (const ShardKey& key : keys) Stop(key, grace, reason);
}

void ShardSupervisor::Tick(Clock::TimePoint now) {
  for (auto& [key, shard] : shards_) {
    if (!shard.kill_at || now < *shard.kill_at) continue;
    shard.kill_at.reset();
    SPARK_LOG(WARN).With("shard", key.ToString()) << "grace period over; sending SIGKILL";
    if (Status st = shard.process->Kill(SIGKILL); !st.ok()) {
      SPARK_LOG(WARN).With("shard", key.ToString()).With("error", st) << "SIGKILL failed";
    }
  }
}

std::optional<Clock::TimePoint> ShardSupervisor::NextDeadline() const {
  std::optional<Clock::TimePoint> next;
  for (const auto& [key, shard] : shards_) {
    if (shard.kill_at && (!next || *shard.kill_at < *next)) next = shard.kill_at;
  }
  return next;
}

void ShardSupervisor::OnExit(const ShardKey& key) {
  auto it = shards_.find(key);
  if (it == shards_.end()) return;
  Shard& shard = it->second;
  // The pidfd is readable: the shard has exited but is not reaped, so its process group id cannot
  // be reused yet. Fail-stop: whatever it left running in its group dies with it.
  shard.process->Kill(SIGKILL).IgnoreError();
  Result<std::optional<ExitInfo>> waited = shard.process->TryWait();
  if (!waited.ok()) {
    SPARK_LOG(ERROR).With("shard", key.ToString()).With("error", waited.status())
        << "cannot reap the shard";
    return;
  }
  if (!waited->has_value()) return;  // not exited yet (spurious wake-up)
  const ExitInfo info = **waited;
  poller_->Remove(shard.poll_id);

  spark::v1::ShardStatus s = BaseStatus(shard);
  const bool stopped = shard.stop_requested || info.success();
  s.set_phase(stopped ? spark::v1::SHARD_PHASE_STOPPED : spark::v1::SHARD_PHASE_FAILED);
  if (info.exited()) {
    s.set_exit_status(info.exit_code);
  } else {
    s.set_signal(info.signal);
  }
  s.set_phase_since_unix_ms(s.reported_unix_ms());
  for (std::string& line : ReadLogTail(shard.paths.log, options_.log_tail_lines)) {
    s.add_log_tail(std::move(line));
  }
  if (!stopped) {
    Result<spark::v1::ShardStatus> own = ReadShardStatusFile(shard.paths.status);
    std::string reason;
    if (own.ok() && !own->failure_reason().empty()) {
      reason = own->failure_reason() + " (spark-shard " + info.ToString() + ")";
    } else {
      reason = "spark-shard rank " + std::to_string(key.rank) + " of " + key.deployment +
               " generation " + std::to_string(key.generation) + " on node " + options_.node_name +
               " " + info.ToString();
      if (!s.log_tail().empty()) reason += "; last log line: " + s.log_tail(s.log_tail_size() - 1);
      reason += "; full log: " + shard.paths.log;
    }
    s.set_failure_reason(reason);
  }
  Log(stopped ? LogLevel::kInfo : LogLevel::kWarn, "shard exited",
      {{"shard", key.ToString()},
       {"exit", info.ToString()},
       {"phase", spark::v1::ShardPhase_Name(s.phase())}});

  std::error_code ec;
  std::filesystem::remove(shard.paths.pid, ec);
  std::filesystem::remove(shard.paths.assignment, ec);
  std::filesystem::remove(shard.paths.status, ec);
  shards_.erase(it);
  on_status_(s);
}

bool ShardSupervisor::IsRunning(const ShardKey& key) const { return shards_.count(key) > 0; }

std::vector<ShardKey> ShardSupervisor::Running() const {
  std::vector<ShardKey> keys;
  for (const auto& [key, shard] : shards_) keys.push_back(key);
  return keys;
}

std::optional<pid_t> ShardSupervisor::PidOf(const ShardKey& key) const {
  auto it = shards_.find(key);
  if (it == shards_.end()) return std::nullopt;
  return it->second.process->pid();
}

std::vector<spark::v1::ShardSummary> ShardSupervisor::Summaries() const {
  std::vector<spark::v1::ShardSummary> out;
  for (const auto& [key, shard] : shards_) {
    spark::v1::ShardSummary summary;
    summary.set_deployment(key.deployment);
    summary.set_run_id(shard.assignment.run_id());
    summary.set_generation(key.generation);
    summary.set_rank(key.rank);
    summary.set_pid(shard.process->pid());
    Result<spark::v1::ShardStatus> own = ReadShardStatusFile(shard.paths.status);
    if (own.ok() && own->phase() != spark::v1::SHARD_PHASE_UNSPECIFIED) {
      summary.set_phase(own->phase());
      summary.set_data_endpoint(own->data_endpoint());
    } else {
      // The shard has not reported through its status file: the agent does not know its phase.
      summary.set_phase(spark::v1::SHARD_PHASE_UNSPECIFIED);
    }
    out.push_back(std::move(summary));
  }
  return out;
}

}  // namespace spark::agent
