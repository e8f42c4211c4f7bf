// The shard status file: where a spark-shard leaves its latest ShardStatus for its agent.
//
// The agent starts every shard with SPARK_SHARD_STATUS_FILE=<state-dir>/shards/<stem>.status. A
// shard that sees the variable replaces the file (WriteShardStatusFile: temporary file + rename,
// so a reader never sees half a message) whenever it changes phase; the agent reads it for the
// ShardSummary of heartbeats and re-registrations (phase, rank 0's data endpoint) and for the
// failure reason it reports when the shard exits. The file holds one serialized
// spark.v1.ShardStatus. A missing file means the shard has not reported yet.
//
// Thread safety: pure functions over the file system. Library spark_agent_status_file depends
// only on spark_proto, so spark-shard can link it.
#pragma once

#include <string>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

inline constexpr char kShardStatusFileEnv[] = "SPARK_SHARD_STATUS_FILE";

Status WriteShardStatusFile(const std::string& path, const spark::v1::ShardStatus& status);
// NotFound when the file does not exist, DataLoss when it does not parse.
Result<spark::v1::ShardStatus> ReadShardStatusFile(const std::string& path);

}  // namespace spark::agent
