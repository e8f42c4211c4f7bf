// The files of one shard under the agent's state directory, and the /proc facts that tell
// whether a recorded pid is still that shard.
//
//   <state-dir>/shards/<stem>.pb      the ShardAssignment the shard was started with
//   <state-dir>/shards/<stem>.pid     PidRecord: pid, start time (clock ticks after boot), boot id
//   <state-dir>/shards/<stem>.status  the shard's latest ShardStatus (shard_status_file.h)
//   <state-dir>/logs/<stem>.log       the shard's stdout and stderr
// where <stem> is "<deployment>-<generation>-<rank>" with every character outside
// [A-Za-z0-9._-] of the deployment name replaced by '_'.
//
// Thread safety: pure functions over the file system.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace spark::agent {

std::string ShardStem(std::string_view deployment, uint64_t generation, uint32_t rank);

struct ShardPaths {
  std::string assignment;
  std::string pid;
  std::string status;
  std::string log;
};
ShardPaths ShardPathsFor(const std::string& state_dir, const std::string& stem);

// <state-dir>/shards and <state-dir>/logs.
std::string ShardsDir(const std::string& state_dir);
std::string LogsDir(const std::string& state_dir);

struct PidRecord {
  pid_t pid = 0;
  uint64_t start_ticks = 0;  // /proc/<pid>/stat field 22; 0 when unknown
  std::string boot_id;       // boot the pid belongs to; "" when unknown
};

// "pid=<pid>\nstart_ticks=<n>\nboot_id=<id>\n", written atomically.
Status WritePidFile(const std::string& path, const PidRecord& record);
// Also accepts a file holding only a pid number.
Result<PidRecord> ReadPidFile(const std::string& path);

// Field 22 (starttime) of /proc/<pid>/stat. NotFound when the process does not exist.
Result<uint64_t> ProcessStartTicks(pid_t pid, const std::string& proc_dir = "/proc");
// Field 3 (state) of /proc/<pid>/stat: 'R', 'S', 'Z', ...
Result<char> ProcessState(pid_t pid, const std::string& proc_dir = "/proc");
// The NUL-separated arguments of /proc/<pid>/cmdline.
Result<std::vector<std::string>> ProcessCmdline(pid_t pid, const std::string& proc_dir = "/proc");

// Writes `content` to a temporary file next to `path`, then renames it over `path`.
Status WriteFileAtomically(const std::string& path, std::string_view content, int mode = 0644);

}  // namespace spark::agent
