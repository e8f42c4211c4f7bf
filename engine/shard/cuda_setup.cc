#include "engine/shard/cuda_setup.h"

#include <cstdlib>
#include <utility>

#include "common/log.h"
#include "engine/model/loader.h"
#if defined(SPARK_HAVE_CUDA)
#include <cuda_runtime.h>

#include "engine/comm/nccl_communicator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/gpu_sampler.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "engine/shard/moe_autotune.h"
#include "engine/shard/shard_settings.h"
#endif

namespace spark::shard {

std::string WithoutCudaMessage() {
  return "not supported yet: the CUDA backend is not built into this spark-shard (built "
         "without CUDA); install a build made with the cuda preset, or deploy with backend cpu";
}

engine::LoadOptions ShardLoadOptions(const spark::v1::ShardAssignment& assignment,
                                     std::function<void(int64_t, int64_t)> progress,
                                     bool load_mtp) {
  engine::LoadOptions load;
  load.tp_rank = static_cast<int>(assignment.rank());
  load.tp_size = static_cast<int>(assignment.world_size());
  load.progress = std::move(progress);
  load.load_mtp = load_mtp;
  return load;
}

#if !defined(SPARK_HAVE_CUDA)

bool BuiltWithCuda() { return false; }

Result<std::unique_ptr<engine::Communicator>> JoinNcclGroup(int, int, engine::KeyValueStore*,
                                                            const NcclGroupOptions&) {
  return Unimplemented(WithoutCudaMessage());
}

Result<std::unique_ptr<engine::BatchSampler>> CreateGpuBatchSampler(const engine::Backend&,
                                                                    int64_t) {
  return Unimplemented(WithoutCudaMessage());
}

Result<std::unique_ptr<engine::Backend>> CreateShardCudaBackend(const spark::v1::ShardAssignment&,
                                                                engine::Communicator*,
                                                                const engine::Communicator*,
                                                                const CudaBackendSetup&) {
  return Unimplemented(WithoutCudaMessage());
}

#else

bool BuiltWithCuda() { return true; }

namespace {

Status CheckDevice(int device) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    return Unavailable(std::string("no usable CUDA device: ") + cudaGetErrorString(err) +
                       "; check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES");
  }
  if (device < 0 || device >= count) {
    return InvalidArgument("GPU " + std::to_string(device) + " is not visible to this shard (" +
                           std::to_string(count) +
                           " visible); check the deployment's gpu_index and CUDA_VISIBLE_DEVICES");
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<engine::Communicator>> JoinNcclGroup(int rank, int world,
                                                            engine::KeyValueStore* store,
                                                            const NcclGroupOptions& options) {
  SPARK_RETURN_IF_ERROR(CheckDevice(options.device));
  engine::NcclOptions n;
  n.device = options.device;
  n.init_timeout_ms = options.connect_timeout_ms;
  n.op_timeout_ms = options.op_timeout_ms;
  n.prefix = options.prefix;
  n.one_shot_max_bytes = options.one_shot_max_bytes;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::NcclCommunicator> comm,
                         engine::NcclCommunicator::Create(rank, world, store, n));
  return std::unique_ptr<engine::Communicator>(std::move(comm));
}

Result<std::unique_ptr<engine::Backend>> CreateShardCudaBackend(const spark::v1::ShardAssignment& a,
                                                                engine::Communicator* comm,
                                                                const engine::Communicator* nccl,
                                                                const CudaBackendSetup& setup) {
  SPARK_RETURN_IF_ERROR(CheckDevice(setup.device));
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(setup.device));
  const spark::v1::EngineOptions& o = a.options();
  cuda::CudaBackendOptions options;
  options.device = setup.device;
  options.kv_block_tokens = setup.kv_block_tokens;
  options.max_batch_tokens = setup.max_batch_tokens;
  options.kv_cache_bytes = static_cast<int64_t>(o.kv_cache_bytes());
  if (o.kv_cache_fraction() < 0.0 || o.kv_cache_fraction() > 1.0) {
    return InvalidArgument("engine option kv_cache_fraction " +
                           std::to_string(o.kv_cache_fraction()) + " is outside (0, 1]");
  }
  if (o.kv_cache_fraction() > 0.0) options.kv_cache_fraction = o.kv_cache_fraction();
  options.smem_cap_bytes = static_cast<int64_t>(o.shared_memory_cap_bytes());
  if (nccl != nullptr) {
    const auto* n = dynamic_cast<const engine::NcclCommunicator*>(nccl);
    if (n == nullptr) return Internal("the CUDA backend needs an NcclCommunicator");
    options.stream = n->stream();
    options.collectives = cuda::CollectiveMode::kDevice;
  }
  const int rank = static_cast<int>(a.rank());
  const int world = static_cast<int>(a.world_size());
  // MoE tile configs of this device class: from the controller, the node's cache file, or tuned
  // now (docs/moe-tuning.md).
  SPARK_ASSIGN_OR_RETURN(EngineSettings settings, ResolveEngineSettings(o));
  MoeAutotuneSetup tune;
  tune.device = setup.device;
  tune.tp = world;
  tune.smem_cap_bytes = options.smem_cap_bytes;
  tune.max_batch_tokens = setup.max_batch_tokens;
  tune.autotune = settings.moe_autotune;
  tune.fuse_shared_experts = options.fuse_shared_experts;
  tune.gemv_max_tokens = options.moe_gemv_max_tokens;
  options.cuda_graphs = CudaGraphsFor(settings, world);
  if (settings.kv_cache_fp8) options.kv_cache_dtype = cuda::KvCacheDtype::kFp8E4m3;
  options.moe_grouped_max_tokens = settings.moe_grouped_max_tokens;
  options.gemv_row_sweep = settings.gemv_fp8 == "row_sweep";
  options.gemv_tensor_cores = settings.gemv_fp8 == "tensor_cores";
  options.gemv_fp8_auto = settings.gemv_fp8 == "auto";
  options.l2_prefetch_percent = settings.l2_prefetch_percent;
  if (const char* file = std::getenv(engine::kMoeTuningFileEnv); file != nullptr) {
    tune.cache_file = file;
  }
  Result<MoeAutotuneOutcome> moe = PrepareMoeTuning(a, tune);
  if (moe.ok()) {
    options.moe_tuned = std::move(moe->choices);
  } else {
    SPARK_LOG(WARN).With("error", moe.status())
        << "no tuned MoE tile configs; the heuristic serves every batch size";
  }
  std::unique_ptr<cuda::CudaBackend> backend;
  if (o.load_format() == spark::v1::LOAD_FORMAT_DUMMY) {
    SPARK_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(a.model_path()));
    cuda::DummyWeightsSpec spec;
    spec.tp_rank = rank;
    spec.tp_size = world;
    spec.seed = o.seed();
    spec.mtp = setup.load_mtp;
    SPARK_ASSIGN_OR_RETURN(backend, cuda::CudaBackend::CreateDummy(config, spec, comm, options));
    if (setup.progress) setup.progress(backend->weight_bytes(), backend->weight_bytes());
  } else {
    // Streamed: each decoder layer goes to the device as soon as it is read and is freed on the
    // host before the next one is built (LoadOptions::on_layer inside CudaBackend::Load).
    SPARK_ASSIGN_OR_RETURN(
        backend,
        cuda::CudaBackend::Load(a.model_path(), ShardLoadOptions(a, setup.progress, setup.load_mtp),
                                comm, options));
  }
  SPARK_LOG(INFO)
          .With("device", setup.device)
          .With("weight_bytes", backend->weight_bytes())
          .With("kv_cache_bytes", backend->kv_cache_bytes())
          .With("kv_capacity_tokens", backend->KvCapacityTokens())
      << "CUDA backend created";
  for (const cuda::DenseGemvChoice& c : backend->dense_gemv_choices()) {
    SPARK_LOG(INFO) << "dense FP8 GEMV tuned (gemv_fp8=auto): " << cuda::DenseGemvChoiceLine(c);
  }
  return std::unique_ptr<engine::Backend>(std::move(backend));
}

Result<std::unique_ptr<engine::BatchSampler>> CreateGpuBatchSampler(const engine::Backend& backend,
                                                                    int64_t max_rows) {
  const auto* cuda_backend = dynamic_cast<const cuda::CudaBackend*>(&backend);
  if (cuda_backend == nullptr) {
    return InvalidArgument(
        "the GPU sampler needs the CUDA backend (engine option sampler=cpu "
        "samples on the CPU)");
  }
  SPARK_ASSIGN_OR_RETURN(
      std::unique_ptr<cuda::GpuSampler> sampler,
      cuda::GpuSampler::Create(backend.config().vocab_size, max_rows, cuda_backend->stream()));
  return std::unique_ptr<engine::BatchSampler>(std::move(sampler));
}

#endif

}  // namespace spark::shard
