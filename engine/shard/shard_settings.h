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
//   moe_autotune      "on" or "off": whether a CUDA shard tunes the MoE tile configs its device
//                     class has no records for at load (default on; docs/moe-tuning.md)
//   cuda_graphs       "on", "off" or "auto": whether a CUDA shard replays decode steps from CUDA
//                     graphs (engine/cuda/cuda_backend.h); auto (the default) = on for a
//                     deployment of one rank, off with tp > 1 until graphs with NCCL collectives
//                     have passed their check on a multi-GPU machine (CudaGraphsFor)
//   kv_cache_dtype    "bf16" or "fp8": the KV cache's element type on the CUDA backend (default
//                     bf16; fp8 = E4M3 with scale 1, twice the tokens per byte; the CPU backend
//                     refuses fp8)
//   moe_grouped_max_tokens  CUDA backend: MoE forwards above the GEMV path's token count and up
//                     to this many tokens run the expert-grouped tensor-core kernels, BF16
//                     activations instead of the FP8 tiles' per-token quantisation (default 0 =
//                     never; CudaBackendOptions::moe_grouped_max_tokens; the CPU backend ignores
//                     it)
//   gemv_fp8          CUDA backend: how one-token FP8 GEMVs run: "convert" (the default; FP8 ->
//                     float on the CUDA cores, K-split blocks), "row_sweep" (dense linears with
//                     whole rows per block over a persistent grid), "tensor_cores" (dense and
//                     MoE GEMVs on mma.sync) or "auto" (each dense FP8 weight shape timed at load
//                     with every variant checked on a GPU, the fastest kept;
//                     engine/cuda/dense_gemv_tuner.h); CudaBackendOptions::gemv_row_sweep /
//                     gemv_tensor_cores / gemv_fp8_auto; the CPU backend ignores it
//   l2_prefetch_percent  CUDA backend: steps of up to 64 tokens prefetch the next weights into
//                     L2 beside the latency-bound kernels, each prefetch up to this percentage of
//                     the device's L2 (default 0 = off, at most 100;
//                     CudaBackendOptions::l2_prefetch_percent); the CPU backend ignores it
//   one_shot_all_reduce_bytes  CUDA backend with tp > 1: fp32 all-reduces up to this many bytes
//                     run as an NCCL all-gather and a rank-order sum (one network step for a
//                     token's hidden state); -1 = time both against NCCL's all-reduce when the
//                     group forms and keep the faster per size; default 0 = NCCL's all-reduce
//                     (at most 16 MiB; NcclOptions::one_shot_max_bytes)
// Any other extra key is an error naming the accepted keys (a typo must not pass silently).
//
// EngineOptions.speculative (steps > 0) turns on speculative decoding with the checkpoint's MTP
// layer; without steps, mode AUTO (the default) turns it on where it helps (AutoSpeculation) and
// mode OFF never. Explicit options need the MTP layer (engine/runtime/speculative.h): the options
// are checked as the engine does, the model must have an MTP layer (config and weights) and the
// backend must support speculation; each refusal names the problem and says to deploy without
// speculative.
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
#include <optional>
#include <string>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/speculative.h"
#include "spark.pb.h"

namespace spark::shard {

// Reads a serialized ShardAssignment (binary protobuf, as the agent writes it). NotFound /
// DataLoss with the path and the fix.
Result<spark::v1::ShardAssignment> ReadAssignmentFile(const std::filesystem::path& path);

// InvalidArgument naming the field: empty deployment, world_size 0, rank >= world_size,
// options.tp other than 0 or world_size, a routing id over 255 bytes.
Status ValidateAssignment(const spark::v1::ShardAssignment& assignment);

// "shard/<deployment>/<generation>/<rank>": the routing and sender id of a shard.
std::string ShardSenderId(const spark::v1::ShardAssignment& assignment);

struct EngineSettings {
  int threads = 0;
  int64_t max_batch_tokens = 2048;
  int max_running = 64;
  int64_t max_model_len = 0;  // 0 = the model's max_position_embeddings
  int kv_block_tokens = 16;
  bool gpu_sampling = true;          // CUDA backend only
  bool moe_autotune = true;          // CUDA backend only
  std::optional<bool> cuda_graphs;   // CUDA backend only; unset = auto (CudaGraphsFor)
  bool kv_cache_fp8 = false;         // CUDA backend only (kv_cache_dtype=fp8)
  int moe_grouped_max_tokens = 0;    // CUDA backend only
  std::string gemv_fp8 = "convert";  // CUDA backend only: convert, row_sweep, tensor_cores, auto
  int l2_prefetch_percent = 0;       // CUDA backend only
  int64_t one_shot_all_reduce_bytes = 0;  // CUDA backend only
  std::chrono::milliseconds step_timeout{30000};
  std::chrono::milliseconds keepalive{1000};
  // EngineOptions.speculative, resolved (topk 1: draft_tokens = steps + 1); steps 0 = off.
  engine::SpeculativeOptions speculative;
  // No explicit options and mode AUTO: the shard turns speculation on where it helps
  // (AutoSpeculation).
  bool speculative_auto = false;
};

// What mode AUTO turns on: 3 draft steps, a chain (the setting that paid off in
// `spark-bench speculative`; trees recompute their inner nodes at every draft step).
engine::SpeculativeOptions AutoSpeculativeOptions();

// Mode AUTO: speculation helps where decode steps are bound by memory bandwidth and the model
// has a draft: the CUDA backend with a checkpoint that declares its MTP layer
// (num_nextn_predict_layers > 0) and holds its weights (`mtp_layers_present`; the config alone
// for dummy weights). The CPU backend never turns it on by itself.
bool AutoSpeculation(spark::v1::Backend backend, const engine::ModelConfig& config,
                     size_t mtp_layers_present, bool dummy_weights);

// Parses EngineOptions into settings (no model needed). InvalidArgument naming the key.
Result<EngineSettings> ResolveEngineSettings(const spark::v1::EngineOptions& options);

// Whether a CUDA shard of a deployment with `world_size` ranks replays decode steps from CUDA
// graphs: the explicit cuda_graphs option, else (auto) only with one rank.
bool CudaGraphsFor(const EngineSettings& settings, int world_size);

// Speculative decoding needs the checkpoint's MTP layer: FailedPrecondition ("model X has no MTP
// layer (num_nextn_predict_layers = 0): deploy without speculative") when `config` declares
// none. `model` names the checkpoint in the message.
Status CheckSpeculativeModel(const engine::ModelConfig& config, const std::string& model);

// FailedPrecondition when the checkpoint declares MTP layers but holds no MTP weights
// (`mtp_layers_present` 0: found in its files, or loaded with LoadOptions::load_mtp).
Status CheckMtpWeightsLoaded(const engine::ModelConfig& config, const std::string& model,
                             size_t mtp_layers_present);

// Unimplemented ("speculative decoding is not supported yet on the <backend> backend ...") when
// the created backend cannot speculate (Backend::SupportsSpeculation() false).
Status CheckSpeculationSupported(const engine::Backend& backend, spark::v1::Backend kind);

// The engine's counters as the ShardStatus carries them.
spark::v1::SpeculativeStats SpeculativeStatsToProto(const engine::SpeculativeStats& stats);

// KV cache bytes of one CPU rank (see the file comment). `mem_available_bytes` is the host's
// MemAvailable; InvalidArgument for a fraction outside [0, 1].
Result<int64_t> ResolveKvCacheBytes(const spark::v1::EngineOptions& options,
                                    const engine::ModelConfig& config, int tp_size,
                                    int64_t mem_available_bytes);

// MemAvailable of /proc/meminfo in bytes (0 when it cannot be read).
int64_t MemAvailableBytes();

}  // namespace spark::shard
