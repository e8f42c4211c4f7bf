#include "agent/stale_shards.h"

#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <system_error>
#include <thread>

#include "agent/shard_files.h"
#include "common/log.h"
#include "common/os_error.h"

namespace spark::agent {
namespace {

namespace fs = std::filesystem;

bool IsOurShard(const PidRecord& record, const std::string& boot_id, const std::string& pb_path,
                const std::string& proc_dir) {
  if (!record.boot_id.empty() && record.boot_id != boot_id) return false;
  Result<uint64_t> start = ProcessStartTicks(record.pid, proc_dir);
  if (!start.ok()) return false;
  if (record.start_ticks != 0 && *start != record.start_ticks) return false;
  Result<char> state = ProcessState(record.pid, proc_dir);
  if (state.ok() && *state == 'Z') return false;
  Result<std::vector<std::string>> cmdline = ProcessCmdline(record.pid, proc_dir);
  if (!cmdline.ok()) return false;
  for (const std::string& arg : *cmdline) {
    if (arg == pb_path || fs::path(arg).filename() == "spark-shard") return true;
  }
  return false;
}

bool Gone(pid_t pid, const std::string& proc_dir) {
  Result<char> state = ProcessState(pid, proc_dir);
  return !state.ok() || *state == 'Z' || *state == 'X';
}

}  // namespace

Result<StaleShardReport> KillStaleShards(const std::string& shards_dir, const std::string& boot_id,
                                         std::chrono::milliseconds wait,
                                         const std::string& proc_dir) {
  StaleShardReport report;
  std::error_code ec;
  if (!fs::exists(shards_dir, ec)) return report;
  std::set<std::string> stems;
  for (const auto& entry : fs::directory_iterator(shards_dir, ec)) {
    const std::string ext = entry.path().extension().string();
    if (ext == ".pid" || ext == ".pb" || ext == ".status") {
      stems.insert(entry.path().stem().string());
    }
  }
  if (ec) return OsError(ec.value(), "listing " + shards_dir);

  std::vector<std::pair<pid_t, std::string>> killed;
  for (const std::string& stem : stems) {
    const std::string base = (fs::path(shards_dir) / stem).string();
    Result<PidRecord> record = ReadPidFile(base + ".pid");
    if (record.ok() && IsOurShard(*record, boot_id, base + ".pb", proc_dir)) {
      const pid_t pid = record->pid;
      const bool leader = ::getpgid(pid) == pid;
      const int rc = leader ? ::kill(-pid, SIGKILL) : ::kill(pid, SIGKILL);
      if (rc == 0) {
        SPARK_LOG(WARN).With("pid", pid).With("shard", stem)
            << "killed a shard left by an earlier spark-agent";
        killed.emplace_back(pid, stem);
        report.killed_pids.push_back(pid);
      } else {
        SPARK_LOG(WARN).With("pid", pid).With("shard", stem)
            << "could not kill a leftover shard: " << OsError(errno, "kill").message();
      }
    }
  }

  const auto deadline = std::chrono::steady_clock::now() + wait;
  for (const auto& [pid, stem] : killed) {
    while (!Gone(pid, proc_dir) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!Gone(pid, proc_dir)) report.still_alive.push_back(std::to_string(pid) + " (" + stem + ")");
  }

  for (const std::string& stem : stems) {
    for (const char* ext : {".pid", ".pb", ".status"}) {
      const fs::path path = fs::path(shards_dir) / (stem + ext);
      if (fs::remove(path, ec)) report.removed.push_back(path.string());
    }
  }
  return report;
}

}  // namespace spark::agent
