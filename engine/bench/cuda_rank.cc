#include "engine/bench/cuda_rank.h"

#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <utility>

#include "engine/comm/nccl_communicator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/gpu_sampler.h"
#include "engine/cuda/moe_tuner.h"
#include "engine/model/loader.h"

namespace spark::bench {

Result<engine::Communicator*> JoinCudaRank(int rank, int tp, engine::NcclOptions nccl,
                                           engine::KeyValueStore* store,
                                           cuda::CudaBackendOptions* options, RankParts* parts) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess) {
    return Unavailable(std::string("--backend cuda: no usable CUDA device: ") +
                       cudaGetErrorString(err) +
                       "; check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES");
  }
  if (rank >= devices) {
    return InvalidArgument("--tp " + std::to_string(tp) + " needs " + std::to_string(tp) +
                           " CUDA devices (one per rank); this process sees " +
                           std::to_string(devices) + " (check CUDA_VISIBLE_DEVICES)");
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(rank));
  options->device = rank;
  if (tp <= 1) return nullptr;
  nccl.device = rank;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::NcclCommunicator> comm,
                         engine::NcclCommunicator::Create(rank, tp, store, nccl));
  engine::Communicator* raw = comm.get();
  options->stream = comm->stream();
  options->collectives = cuda::CollectiveMode::kDevice;
  parts->comm = std::move(comm);
  return raw;
}

namespace {

// CudaRankSpec::moe_tune: the tuned tile configs of the model's MoE shapes on this rank's GPU.
Status TuneMoeOfRank(const CudaRankSpec& spec, int rank, int tp,
                     cuda::CudaBackendOptions* options) {
  if (spec.config.n_routed_experts <= 0) return Status::Ok();
  SPARK_ASSIGN_OR_RETURN(cuda::MoeShape shape,
                         cuda::MoeShapeOfModel(spec.config, tp, spec.fuse_shared_experts));
  const cuda::MoeWeightFormat format = cuda::MoeWeightFormatOfModel(spec.config);
  SPARK_ASSIGN_OR_RETURN(cuda::DeviceInfo device, cuda::QueryDevice(rank));
  SPARK_ASSIGN_OR_RETURN(cuda::MoeConfigTable table,
                         cuda::MoeConfigTable::Create(device, options->smem_cap_bytes));
  table.SetGemvMaxTokens(options->moe_gemv_max_tokens);
  cuda::MoeTunerOptions tuner;
  tuner.batches = engine::MoeBatchBuckets(spec.max_batch_tokens);
  tuner.max_seconds = spec.moe_tune_max_seconds;
  SPARK_ASSIGN_OR_RETURN(cuda::MoeTuneResult tuned,
                         cuda::TuneMoe(device, table, shape, format, tuner));
  SPARK_ASSIGN_OR_RETURN(
      options->moe_tuned,
      cuda::MoeTunedChoicesOf(tuned.records, cuda::MoeDeviceClassOf(device, table), shape, format,
                              table));
  if (rank == 0 && spec.moe_tune_seconds != nullptr) *spec.moe_tune_seconds = tuned.seconds;
  return Status::Ok();
}

}  // namespace

Status MakeCudaRank(const CudaRankSpec& spec, int rank, int tp, engine::KeyValueStore* store,
                    RankParts* parts) {
  cuda::CudaBackendOptions options;
  options.kv_cache_bytes = spec.kv_cache_bytes;
  options.max_batch_tokens = spec.max_batch_tokens;
  options.cuda_graphs = spec.cuda_graphs;
  options.attention_tensor_cores = spec.attention_tensor_cores;
  options.fuse_shared_experts = spec.fuse_shared_experts;
  options.programmatic_launch = spec.programmatic_launch;
  if (spec.moe_gemv_max_tokens >= 0) options.moe_gemv_max_tokens = spec.moe_gemv_max_tokens;
  options.gemv_tensor_cores = spec.gemv_tensor_cores;
  options.gemv_row_sweep = spec.gemv_row_sweep;
  options.gemv_fp8_auto = spec.gemv_fp8_auto;
  if (spec.moe_grouped_max_tokens >= 0) {
    options.moe_grouped_max_tokens = spec.moe_grouped_max_tokens;
  }
  if (spec.l2_prefetch_percent >= 0) options.l2_prefetch_percent = spec.l2_prefetch_percent;
  options.smem_cap_bytes = spec.smem_cap_bytes;
  if (spec.kv_cache_fp8) options.kv_cache_dtype = cuda::KvCacheDtype::kFp8E4m3;
  engine::NcclOptions n;
  n.prefix = spec.prefix;
  n.init_timeout_ms = 120000;
  n.op_timeout_ms = 600000;  // loading a large model on another rank may take minutes
  n.one_shot_max_bytes = spec.one_shot_all_reduce_bytes;
  SPARK_ASSIGN_OR_RETURN(engine::Communicator * nccl,
                         JoinCudaRank(rank, tp, n, store, &options, parts));
  if (rank == 0 && nccl != nullptr) {
    const auto* group = static_cast<const engine::NcclCommunicator*>(nccl);
    if (spec.one_shot_max_bytes != nullptr) *spec.one_shot_max_bytes = group->one_shot_max_bytes();
    if (spec.all_reduce != nullptr) {
      for (const engine::AllReduceTiming& t : group->all_reduce_timings()) {
        spec.all_reduce->push_back({t.bytes, t.nccl_us, t.one_shot_us});
      }
    }
  }
  if (spec.moe_tune) SPARK_RETURN_IF_ERROR(TuneMoeOfRank(spec, rank, tp, &options));
  if (spec.dummy || spec.model_dir.empty()) {
    cuda::DummyWeightsSpec dummy;
    dummy.tp_rank = rank;
    dummy.tp_size = tp;
    dummy.seed = spec.seed;
    dummy.max_layers = spec.max_layers;
    SPARK_ASSIGN_OR_RETURN(parts->backend,
                           cuda::CudaBackend::CreateDummy(spec.config, dummy, nccl, options));
  } else {
    // Streamed: one decoder layer in host memory at a time.
    engine::LoadOptions load;
    load.tp_rank = rank;
    load.tp_size = tp;
    load.max_layers = spec.max_layers;
    SPARK_ASSIGN_OR_RETURN(parts->backend,
                           cuda::CudaBackend::Load(spec.model_dir, load, nccl, options));
  }
  if (rank == 0 && spec.dense_gemv != nullptr) {
    const auto& backend = static_cast<const cuda::CudaBackend&>(*parts->backend);
    for (const cuda::DenseGemvChoice& c : backend.dense_gemv_choices()) {
      spec.dense_gemv->push_back(cuda::DenseGemvChoiceLine(c));
    }
  }
  if (rank == 0 && spec.sample_rows > 0) {
    const auto& backend = static_cast<const cuda::CudaBackend&>(*parts->backend);
    SPARK_ASSIGN_OR_RETURN(
        parts->sampler,
        cuda::GpuSampler::Create(backend.config().vocab_size, spec.sample_rows, backend.stream()));
  }
  return Status::Ok();
}

Result<std::string> CudaDeviceName() {
  cudaDeviceProp prop{};
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, 0));
  return std::string(prop.name);
}

double CudaPeakBandwidthGbs() {
  int clock_khz = 0;
  int bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0) != cudaSuccess ||
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  // Double data rate: two transfers per memory clock.
  return 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
}

double CudaPeakTflops(bool fp8) {
  int major = 0;
  int sms = 0;
  int clock_khz = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0) != cudaSuccess ||
      cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, 0) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  if (major != 9) return 0;  // Hopper: 1024 dense BF16 FMA per SM and clock, twice for FP8
  const double flops_per_clock = fp8 ? 8192.0 : 4096.0;
  return sms * (clock_khz * 1e3) * flops_per_clock / 1e12;
}

}  // namespace spark::bench
