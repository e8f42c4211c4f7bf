// The CUDA side of spark-shard: the NCCL group and the CudaBackend of one rank. Compiled in
// every build; without SPARK_CUDA each function fails with Unimplemented ("built without CUDA").
//
// Device: the assignment's gpu_index, an ordinal among the devices this process sees (the agent
// may narrow them with CUDA_VISIBLE_DEVICES). The NCCL unique id travels through the
// controller's rendezvous store (rank 0 publishes it, see engine/comm/nccl_communicator.h).
// KV cache: engine option kv_cache_bytes when > 0, else kv_cache_fraction (default 0.9) of the
// device memory left after the weights. Weights: load_format=dummy generates them on the
// device; otherwise the rank's slice is streamed from the checkpoint (CudaBackend::Load with
// ShardLoadOptions): each decoder layer is uploaded and freed on the host before the next one is
// read, so the host holds the embedding, one layer and (at the end) lm_head, never the model.
//
// Thread safety: call from the shard's main thread. Ownership: results are owned by the caller;
// the backend borrows `comm`, which must outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/model/loader.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/batch_sampler.h"
#include "spark.pb.h"

namespace spark::shard {

// True when this spark-shard was built with the CUDA backend.
bool BuiltWithCuda();

// The message every CUDA entry point returns in a build without CUDA.
std::string WithoutCudaMessage();

struct NcclGroupOptions {
  int device = 0;
  int64_t connect_timeout_ms = 60000;
  int64_t op_timeout_ms = 60000;
  std::string prefix;
  int64_t one_shot_max_bytes = 0;  // NcclOptions::one_shot_max_bytes
};

// Joins the rank's NCCL group. DeadlineExceeded names the ranks that never joined.
Result<std::unique_ptr<engine::Communicator>> JoinNcclGroup(int rank, int world,
                                                            engine::KeyValueStore* store,
                                                            const NcclGroupOptions& options);

// The LoadOptions of the rank's checkpoint slice: tp rank and size from the assignment,
// `progress` (bytes done, total) forwarded as the loader reports them, and the MTP layer when
// `load_mtp` (speculative decoding on, explicitly or automatically). Host code, every build.
engine::LoadOptions ShardLoadOptions(const spark::v1::ShardAssignment& assignment,
                                     std::function<void(int64_t, int64_t)> progress,
                                     bool load_mtp = false);

struct CudaBackendSetup {
  int device = 0;
  int64_t max_batch_tokens = 2048;
  int kv_block_tokens = 16;
  // Weight bytes done / total (the checkpoint's; dummy weights report once at the end).
  std::function<void(int64_t, int64_t)> progress;
  // The MTP layer too (speculative decoding on).
  bool load_mtp = false;
};

// Loads (or generates) the rank's weights on its GPU. `comm` is the rank's NCCL communicator
// (possibly wrapped, e.g. by WatchedCommunicator) or nullptr with one rank; `nccl_stream` is the
// NCCL communicator's stream (collectives and kernels share it).
Result<std::unique_ptr<engine::Backend>> CreateShardCudaBackend(
    const spark::v1::ShardAssignment& assignment, engine::Communicator* comm,
    const engine::Communicator* nccl, const CudaBackendSetup& setup);

// Rank 0's GPU sampler (engine/cuda/gpu_sampler.h) for up to `max_rows` rows per call, on the
// current device and the stream of `backend` (a CudaBackend from CreateShardCudaBackend), so
// that it samples the backend's device logits in order. InvalidArgument for another backend.
Result<std::unique_ptr<engine::BatchSampler>> CreateGpuBatchSampler(const engine::Backend& backend,
                                                                    int64_t max_rows);

}  // namespace spark::shard
