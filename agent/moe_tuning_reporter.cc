#include "agent/moe_tuning_reporter.h"

#include <sys/stat.h>

#include "common/log.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::agent {

std::optional<spark::v1::MoeTuningReport> MoeTuningReporter::Poll(const std::string& node_name) {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0) return std::nullopt;
  const Stamp stamp{static_cast<int64_t>(st.st_size),
                    static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec,
                    static_cast<uint64_t>(st.st_ino)};
  if (last_.has_value() && *last_ == stamp) return std::nullopt;
  last_ = stamp;
  Result<engine::MoeTuningCache> cache = engine::MoeTuningCache::Load(path_);
  if (!cache.ok()) {
    SPARK_LOG(WARN).With("error", cache.status())
        << "cannot report the MoE tuning file to the controller";
    return std::nullopt;
  }
  if (cache->empty()) return std::nullopt;
  spark::v1::MoeTuningReport report;
  report.set_node_name(node_name);
  for (const engine::MoeTuningRecord& r : cache->records()) {
    *report.add_records() = engine::MoeTuningRecordToProto(r);
  }
  return report;
}

}  // namespace spark::agent
