// MoeTuningReporter: watches the node's MoE tuning cache file (<state-dir>/moe_tuning.json, which
// the CUDA shards write after tuning, engine/runtime/moe_tuning_cache.h) and builds the
// MoeTuningReport the agent sends to the controller: once after every (re)registration and
// whenever the file changes (size, modification time or inode). A file that does not parse is
// logged once per change and not reported.
//
// Thread safety: not thread-safe; the agent's owner thread only. Ownership: a value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "spark.pb.h"

namespace spark::agent {

class MoeTuningReporter {
 public:
  explicit MoeTuningReporter(std::string path) : path_(std::move(path)) {}

  // The report to send now, or nullopt when the file is unchanged since the last report (or
  // missing, empty or broken).
  std::optional<spark::v1::MoeTuningReport> Poll(const std::string& node_name);
  // Forgets what was reported: the next Poll reports the file again (after a registration).
  void Reset() { last_.reset(); }

  const std::string& path() const { return path_; }

 private:
  struct Stamp {
    int64_t size = 0;
    int64_t mtime_ns = 0;
    uint64_t inode = 0;
    friend bool operator==(const Stamp&, const Stamp&) = default;
  };
  std::string path_;
  std::optional<Stamp> last_;  // file state of the last report or of the last broken file
};

}  // namespace spark::agent
