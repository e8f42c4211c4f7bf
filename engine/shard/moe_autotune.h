// MoE tile configs (and GEMV-path splits) of a CUDA shard at load (docs/moe-tuning.md): the
// records of the shard's
// device class (device name, compute capability, shared-memory limit after the deployment's cap)
// come from (a) the assignment (the controller's store) and (b) the node's cache file (the
// agent's SPARK_MOE_TUNING_FILE); the batch buckets 1 .. max_batch_tokens that neither covers are
// tuned on this GPU (unless engine option moe_autotune=off), written to the cache file (the agent
// reports them to the controller) and all of them become CudaBackendOptions::moe_tuned.
// CUDA builds only (included by cuda_setup.cc under SPARK_HAVE_CUDA).
//
// Thread safety: call from the shard's main thread before the backend allocates the device.
// Ownership: values.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/cuda/moe_tuner.h"
#include "spark.pb.h"

namespace spark::shard {

struct MoeAutotuneSetup {
  int device = 0;
  int tp = 1;
  int64_t smem_cap_bytes = 0;
  int64_t max_batch_tokens = 2048;
  bool autotune = true;    // engine option moe_autotune
  std::string cache_file;  // the agent's cache file; "" = none
  double max_seconds = 600;
  bool fuse_shared_experts = true;  // CudaBackendOptions::fuse_shared_experts (the tuned shape)
  // CudaBackendOptions::moe_gemv_max_tokens: buckets up to it run the MoE GEMV path, whose split
  // (a "gemv" record) is tuned instead of tile configs.
  int gemv_max_tokens = cuda::kMoeGemvMaxTokensDefault;
};

// What was found and done (for logs and tests).
struct MoeAutotuneOutcome {
  int buckets = 0;          // batch buckets of the deployment
  int from_assignment = 0;  // valid records of this shape the controller sent
  int from_file = 0;        // records of this shape in the cache file
  int tuned_buckets = 0;    // buckets tuned now
  double tune_seconds = 0;
  std::vector<cuda::MoeTunedChoice> choices;  // for CudaBackendOptions::moe_tuned
};

// The model at assignment.model_path() on device setup.device. A dense model gives no choices.
// Errors: the model config or device cannot be read, tuning failed, or a record names a tile
// this build lacks; the caller may carry on with the heuristic.
Result<MoeAutotuneOutcome> PrepareMoeTuning(const spark::v1::ShardAssignment& assignment,
                                            const MoeAutotuneSetup& setup);

}  // namespace spark::shard
