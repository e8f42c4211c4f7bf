// The engine behind `spark-model logits` and `spark-model generate`: a tensor-parallel group of
// one backend over a checkpoint directory, whose rank-0 backend the commands drive.
//
//   --backend cpu:  engine::OpenOfflineEngine (CPU ranks as threads joined by Gloo).
//   --backend cuda: in builds with the CUDA backend (SPARK_CUDA), rank r runs on CUDA device r as
//                   a thread of this process, ranks joined by NCCL; each rank's slice of the
//                   checkpoint is streamed to its GPU layer by layer (CudaBackend::Load), or
//                   generated there with --dummy (CudaBackend::CreateDummy). KV cache:
//                   options.kv_cache_bytes per rank. Other builds: Unimplemented naming the fix.
//
// Thread safety: the group and its backend belong to the thread that opened it.
// Ownership: the group owns its ranks (threads, communicators, backends); Shutdown() (or the
// destructor) stops them.
#pragma once

#include <filesystem>
#include <memory>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/offline.h"

namespace spark::tools {

class ModelEngine {
 public:
  virtual ~ModelEngine() = default;
  // Rank 0's view: Forward runs on every rank; logits are full-vocabulary.
  virtual engine::Backend* backend() = 0;
  virtual const engine::ModelConfig& config() const = 0;
  // Stops the ranks; the first error of any rank. Idempotent.
  virtual Status Shutdown() = 0;
};

// InvalidArgument for an unknown backend or a bad tp size; Unimplemented for cuda in a build
// without it; otherwise the load's errors (a missing GPU names the devices this process sees).
Result<std::unique_ptr<ModelEngine>> OpenModelEngine(const std::filesystem::path& model_dir,
                                                     const engine::OfflineEngineOptions& options);

}  // namespace spark::tools
