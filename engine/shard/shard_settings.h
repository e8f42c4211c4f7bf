// Shard settings: reading and checking the ShardAssignment a shard is started with, and turning
// its EngineOptions into the engine's settings.
//
// EngineOptions.extra keys the shard understands (integers unless said otherwise):
//   threads           kernel threads of the CPU backend (0 = all hardware threads)
//   max_batch_tokens  tokens one forward batch may carry (scheduler budget, default 2048)
//   step_timeout_ms   watchdog deadline of one engine step or collective (default 30000)
//   keepalive_ms      idle keepalive period of rank 0 (default min(1000, step_timeout_ms / 4))
//   kv_block_tokens   tokens per KV cache block (default 16)
//   sampler           "gpu" or "cpu": where rank 0 samples on the CUDA backend (default gpu;
//                     the CPU backend always samples on the CPU)
// Any other extra key is an error naming the accepted keys (a typo must not pass silently).
//
// KV cache size of the CPU backend (per rank): kv_cache_bytes when > 0; otherwise
// kv_cache_fraction of MemAvailable, capped at what max_batch sequences of max_seq_len tokens
// can use (never more memory than the cache can ever fill); with neither set, 256 MiB.
//
// Thread safety: pure functions. Ownership: values.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

#include "common/status.h"
#include "engine/model/config.h"
#include "spark.pb.h"

namespace spark::shard {

// Reads a serialized ShardAssignment (binary protobuf, as the agent writes it). NotFound /
// DataLoss with the path and the fix.
Result<spark::v1::ShardAssignment> ReadAssignmentFile(const std::filesystem::path& path);

// InvalidArgument naming the field: empty deployment, world_size 0, rank >= world_size,
// options.tp other than 0 or world_size, a routing id over 255 bytes, speculative decoding
// (not supported by this shard yet).
Status ValidateAssignment(const spark::v1::ShardAssignment& assignment);

// "shard/<deployment>/<generation>/<rank>": the routing and sender id of a shard.
std::string ShardSenderId(const spark::v1::ShardAssignment& assignment);

struct EngineSettings {
  int threads = 0;
  int64_t max_batch_tokens = 2048;
  int max_running = 64;
  int64_t max_model_len = 0;  // 0 = the model's max_position_embeddings
  int kv_block_tokens = 16;
  bool gpu_sampling = true;  // CUDA backend only
  std::chrono::milliseconds step_timeout{30000};
  std::chrono::milliseconds keepalive{1000};
};

// Parses EngineOptions into settings (no model needed). InvalidArgument naming the key.
Result<EngineSettings> ResolveEngineSettings(const spark::v1::EngineOptions& options);

// KV cache bytes of one CPU rank (see the file comment). `mem_available_bytes` is the host's
// MemAvailable; InvalidArgument for a fraction outside [0, 1].
Result<int64_t> ResolveKvCacheBytes(const spark::v1::EngineOptions& options,
                                    const engine::ModelConfig& config, int tp_size,
                                    int64_t mem_available_bytes);

// MemAvailable of /proc/meminfo in bytes (0 when it cannot be read).
int64_t MemAvailableBytes();

}  // namespace spark::shard
