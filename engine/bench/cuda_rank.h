// CUDA ranks for spark-bench (built with SPARK_CUDA only): rank r of a ThreadTpGroup on CUDA
// device r, joined through NcclCommunicator (collectives on the backend's stream), with
// CudaBackend over the checkpoint's slice or dummy weights generated on the device.
//
// Thread safety: MakeCudaRank runs on the rank's own thread. Ownership: the returned parts own
// the communicator and backend; `store` must outlive the group's creation.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/bench/engine_throughput.h"
#include "engine/bench/thread_tp_group.h"
#include "engine/comm/communicator.h"
#include "engine/comm/nccl_communicator.h"
#include "engine/cuda/cuda_backend.h"
#include "engine/model/config.h"

namespace spark::bench {

struct CudaRankSpec {
  engine::ModelConfig config;       // num_hidden_layers already cut to the benchmarked layers
  std::filesystem::path model_dir;  // empty or dummy: CreateDummy
  bool dummy = true;
  uint64_t seed = 0;
  int max_layers = -1;
  int64_t kv_cache_bytes = 0;
  int64_t max_batch_tokens = 2048;
  std::string prefix;  // rendezvous key prefix of the group
  bool cuda_graphs = false;
  bool kv_cache_fp8 = false;  // FP8 E4M3 KV cache
  bool attention_tensor_cores = false;
  bool fuse_shared_experts = false;  // CudaBackendOptions::fuse_shared_experts
  bool programmatic_launch = false;  // CudaBackendOptions::programmatic_launch
  int moe_gemv_max_tokens = -1;      // CudaBackendOptions::moe_gemv_max_tokens (-1: its default)
  bool gemv_tensor_cores = false;    // CudaBackendOptions::gemv_tensor_cores
  bool gemv_row_sweep = false;       // CudaBackendOptions::gemv_row_sweep
  bool gemv_fp8_auto = false;        // CudaBackendOptions::gemv_fp8_auto
  // Rank 0 stores one line per dense FP8 weight shape that gemv_fp8_auto tuned here.
  std::vector<std::string>* dense_gemv = nullptr;
  int moe_grouped_max_tokens = -1;  // CudaBackendOptions::moe_grouped_max_tokens (-1: default)
  int l2_prefetch_percent = -1;     // CudaBackendOptions::l2_prefetch_percent (-1: default)
  int64_t smem_cap_bytes = 0;       // CudaBackendOptions::smem_cap_bytes (0: the device's)
  int64_t one_shot_all_reduce_bytes = 0;  // NcclOptions::one_shot_max_bytes
  // Rank 0 stores the NCCL group's all-reduce calibration and one-shot limit here (tp > 1).
  std::vector<AllReduceRow>* all_reduce = nullptr;
  int64_t* one_shot_max_bytes = nullptr;
  // Tune the MoE tile configs on each rank's GPU for the model's expert shapes (batch buckets up
  // to max_batch_tokens) before the backend is made, as a shard does at its first load; rank 0
  // stores the tuning time in *moe_tune_seconds.
  bool moe_tune = false;
  double moe_tune_max_seconds = 600;
  double* moe_tune_seconds = nullptr;
  // Rank 0 samples each decode step on the GPU (RankParts::sampler, a GpuSampler on the
  // backend's stream) for up to this many rows per call; 0 = no sampler.
  int64_t sample_rows = 0;
};

// What every CUDA rank does before its backend: selects CUDA device `rank` (an error naming
// CUDA_VISIBLE_DEVICES when this process sees fewer than `tp` devices), sets options->device and,
// for tp > 1, joins the NCCL group through `store` with `nccl` (its device set to `rank`), running
// the backend's collectives on the communicator's stream. Returns the communicator (null for
// tp 1), owned by parts->comm.
Result<engine::Communicator*> JoinCudaRank(int rank, int tp, engine::NcclOptions nccl,
                                           engine::KeyValueStore* store,
                                           cuda::CudaBackendOptions* options, RankParts* parts);

// A RankFactory body (engine/bench/thread_tp_group.h).
Status MakeCudaRank(const CudaRankSpec& spec, int rank, int tp, engine::KeyValueStore* store,
                    RankParts* parts);

// Name of CUDA device 0 and its peak memory bandwidth in GB/s from the device attributes
// (0 when the device does not report its memory clock, as unified-memory devices may).
Result<std::string> CudaDeviceName();
double CudaPeakBandwidthGbs();
// Dense tensor-core peak of CUDA device 0 in TFLOP/s, FP8 (`fp8`) or BF16 operands: SMs x SM
// clock x 8192 / 4096 FLOPs per clock on sm_90; 0 for architectures without a known rate
// (pass --peak-tflops).
double CudaPeakTflops(bool fp8);

}  // namespace spark::bench
