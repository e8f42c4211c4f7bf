// Kills the shards an earlier spark-agent left behind (fail-stop: a restarted agent never adopts
// a shard; the controller starts a new run).
//
// For every <shards-dir>/*.pid: the recorded process is killed (SIGKILL, to its process group
// when it leads one) only when it is provably that shard: same boot id, same start time in
// /proc/<pid>/stat, and a command line that names the shard's assignment file (<stem>.pb) or a
// program called spark-shard. A pid from another boot, a reused pid or a dead process is left
// alone. Then the stem's files (.pid, .pb, .status) are removed, as are leftovers without a pid
// file. Waits (bounded by `wait`) until each killed process is gone.
//
// Thread safety: call once at start, before the event loop; touches only `shards_dir`.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"

namespace spark::agent {

struct StaleShardReport {
  std::vector<int> killed_pids;          // processes killed
  std::vector<std::string> removed;      // files removed
  std::vector<std::string> still_alive;  // "<pid> (<stem>)" that did not die within `wait`
};

Result<StaleShardReport> KillStaleShards(const std::string& shards_dir, const std::string& boot_id,
                                         std::chrono::milliseconds wait,
                                         const std::string& proc_dir = "/proc");

}  // namespace spark::agent
