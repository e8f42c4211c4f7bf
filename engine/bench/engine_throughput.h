// `spark-bench engine`: prefill and decode throughput of one backend over a model, next to the
// memory-bandwidth roofline of a decode step.
//
// The model comes from a checkpoint directory (--model, real or dummy weights) or from a config
// alone (--config: a built-in name such as glm-4.5-air, or a config.json path; dummy weights).
// For each batch size B it prefills B sequences of input_len tokens (in steps of at most
// max_batch_tokens tokens), then one decode step that is not timed with the others (its time is
// first_step_ms: on the CUDA backend it captures the batch's decode graph, once per bucket in
// serving), then output_len timed decode steps of one token per sequence, and reports prefill
// tokens/s, time to first token (the prefill of the whole batch), decode tokens/s, inter-token
// latency (mean step time), and the roofline: the bytes one rank reads per
// decode step (DecodeStepBytes) over the device's peak bandwidth, the measured step time, the
// achieved bandwidth and its ratio to the peak. On the CUDA backend a decode step is timed as
// serving runs it: the forward pass with the logits left on the device, then greedy GPU
// sampling of every row (engine/cuda/gpu_sampler.h); on the CPU, the forward pass alone.
//
// Thread safety: RunEngineBench runs on the calling thread (plus the TP group's worker threads).
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/model/config.h"

namespace spark::bench {

struct EngineBenchOptions {
  std::filesystem::path model_dir;  // --model
  std::string config;               // --config: built-in name or config.json path
  bool dummy = false;               // --load-format dummy
  std::string backend = "cpu";      // cpu | cuda
  int layers = -1;                  // first N decoder layers only; -1 = all
  int tp = 1;
  std::vector<int> batch_sizes = {1};
  int input_len = 128;
  int output_len = 32;
  int threads = 0;                      // CPU backend threads per rank; 0 = cores / tp
  int64_t max_batch_tokens = 2048;      // tokens per prefill step
  double peak_bandwidth_gbs = 0;        // 0 = the device's (CUDA) or a measured read rate (CPU)
  double peak_tflops = 0;               // 0 = the device's dense tensor-core peak where known
                                        // (sm_90: SMs x clock x 4096 BF16 / 8192 FP8 per clock)
  uint64_t seed = 0;                    // dummy weights
  bool json = false;                    // one JSON object per batch size instead of the table
  bool cuda_graphs = false;             // CUDA: decode steps replay CUDA graphs (CLI: tp 1)
  std::string kv_cache_dtype = "bf16";  // CUDA: bf16 | fp8 (E4M3 KV cache)
  bool attention_tensor_cores = false;  // CUDA: the mma.sync attention kernel where it applies
  bool fuse_shared_experts = false;     // CUDA: shared expert inside the fused MoE kernels
  bool programmatic_launch = false;     // CUDA: kernels with programmatic dependent launch
  bool moe_tune = false;                // CUDA: tune the MoE tile configs first (as a shard does)
  int moe_gemv_max_tokens = -1;         // CUDA: MoE GEMV path up to this many tokens (-1: default)
  bool gemv_tensor_cores = false;       // CUDA: one-token FP8 GEMVs on the tensor cores
  bool gemv_row_sweep = false;          // CUDA: dense one-token FP8 GEMVs as row sweeps
  bool gemv_fp8_auto = false;           // CUDA: each dense FP8 shape's GEMV variant timed at load
  int moe_grouped_max_tokens = -1;      // CUDA: expert-grouped MoE kernels up to this many tokens
  int l2_prefetch_percent = -1;         // CUDA: weight prefetch into L2 (-1: the default)
  int64_t smem_cap_bytes = 0;           // CUDA: shared memory per block cap (0: the device's)
  // CUDA, tp > 1: fp32 all-reduces up to this many bytes run one-shot (all-gather + rank-order
  // sum); 0 = never, -1 = timed against NCCL's at start (NcclOptions::one_shot_max_bytes).
  int64_t one_shot_all_reduce_bytes = 0;
};

// Bytes one rank reads in a decode step of `batch` sequences at context length `context`.
struct StepBytes {
  double weight_bytes = 0;      // dense weights + expected distinct routed experts + lm_head
  double kv_bytes = 0;          // K and V of every cached token of every sequence
  double expected_experts = 0;  // distinct routed experts per MoE layer (uniform routing)
  double total() const { return weight_bytes + kv_bytes; }
};

// Floating-point operations of one rank in a decode step of `batch` sequences at context
// `context`: 2 per weight each token multiplies (attention projections, the top-k routed and the
// shared experts, the router, dense MLPs, lm_head; sliced by `tp`) plus the attention scores and
// values (4 * context * local q width per token and layer).
double DecodeStepFlops(const engine::ModelConfig& config, int tp, int batch, double context);

// Weights in their stored dtype (FP8: 1 byte + scales; BF16: 2), sliced by `tp`; routed experts
// counted as E * (1 - (1 - k/E)^batch), the expected number of distinct experts that `batch`
// tokens choose under uniform routing; KV of the rank's kv heads, `kv_element_bytes` per element
// (2: BF16, 1: FP8).
StepBytes DecodeStepBytes(const engine::ModelConfig& config, int tp, int batch, double context,
                          int kv_element_bytes = 2);

struct BatchResult {
  int batch = 0;
  double prefill_ms = 0;
  double prefill_tokens_per_s = 0;
  double ttft_ms = 0;
  double itl_ms = 0;  // mean decode step
  double itl_p50_ms = 0;
  double first_step_ms = 0;  // the untimed first decode step (graph capture on CUDA)
  // Mean time a decode step spends in Backend::Forward. On the CUDA backend with device logits
  // that is the host's cost of queueing the step (the GPU then runs while the sampler waits):
  // close to itl_ms means the step is bound by the host. On the CPU backend, the whole pass.
  double issue_ms = 0;
  double decode_tokens_per_s = 0;
  StepBytes bytes;          // at the mean decode context
  double roofline_ms = 0;   // bytes.total() / peak
  double achieved_gbs = 0;  // bytes.total() / itl
  double bandwidth_ratio = 0;
  double step_flops = 0;           // DecodeStepFlops at the mean decode context
  double compute_roofline_ms = 0;  // step_flops / peak compute (0 when the peak is unknown)
  double achieved_tflops = 0;      // step_flops / itl
  double compute_ratio = 0;        // achieved_tflops / peak (0 when unknown)
};

// One message size of the all-reduce calibration (engine/comm/nccl_communicator.h).
struct AllReduceRow {
  int64_t bytes = 0;
  double nccl_us = 0;
  double one_shot_us = 0;
};

struct EngineBenchReport {
  std::string model;   // name or path
  std::string device;  // e.g. "NVIDIA H200" or "CPU (16 threads)"
  double peak_bandwidth_gbs = 0;
  std::string peak_source;  // "device attributes", "measured", "--peak-bandwidth-gbs"
  double peak_tflops = 0;   // dense compute peak of the weights' GEMM dtype; 0 = unknown
  std::string tflops_source;
  int layers = 0;
  std::string quant;  // bf16 | fp8-channel | fp8-block
  double load_s = 0;
  double moe_tune_s = -1;  // MoE tuning time inside load_s (--moe-tune), -1 = not tuned
  // CUDA, tp > 1, --one-shot-all-reduce-bytes -1: rank 0's calibration of the all-reduce
  // (NCCL against one-shot, the slowest rank's mean per call) and the one-shot limit kept.
  std::vector<AllReduceRow> all_reduce;
  int64_t one_shot_max_bytes = 0;
  // CUDA, --gemv-fp8-auto: rank 0's choice per dense FP8 weight shape (DenseGemvChoiceLine).
  std::vector<std::string> dense_gemv;
  std::vector<BatchResult> batches;
};

// Resolves the model config (built-in name, config.json path, or model directory).
Result<engine::ModelConfig> ResolveBenchConfig(const EngineBenchOptions& options);

// Runs the benchmark; `log` receives progress lines (may be null).
Result<EngineBenchReport> RunEngineBench(const EngineBenchOptions& options, std::ostream* log);

// The table (or JSON lines) of a report.
void PrintEngineBenchReport(const EngineBenchReport& report, bool json, std::ostream& out);

}  // namespace spark::bench
