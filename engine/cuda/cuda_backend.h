// CudaBackend: one tensor-parallel rank's forward pass on one CUDA device, with its paged KV
// cache in device memory. Same contract as CpuBackend (engine/cpu/cpu_backend.h): same batch
// semantics, same errors, same TP collectives, logits of the full vocabulary.
//
// Numerics: BF16 activations into every GEMM, fp32 accumulation, fp32 residual stream, norms,
// RoPE, softmax and router in fp32; weights stay in their stored dtype on the device (BF16, or
// FP8 E4M3 with per-channel or 128x128 block scales). Dense linears pick a kernel per batch size
// and format (engine/cuda/dense_linear.h): cuBLASLt BF16, cuBLASLt FP8 with per-token FP8
// activations (W8A8, the official FP8 checkpoints' scheme; ~0.1 of max|logit| from the
// dequantised fp32 reference on random weights, fp8_activations = false keeps BF16 activations,
// ~1e-2), the own split-K GEMV at decode sizes, or FP8 weights dequantised to BF16.
//
// Weights: Load() streams a checkpoint layer by layer to the device (LoadOptions::on_layer), so
// the host holds one layer at a time. Create() uploads a ModelWeights layer by layer and frees
// each host layer once it is on the device. CreateDummy() generates the
// values of MakeDummyWeights (engine/model/loader.h) directly on the device: bit-identical to
// Create(MakeDummyWeights(...)), without a host copy (load_format=dummy for large models).
//
// KV cache: K and V of the rank's local kv heads in BF16 (or FP8 E4M3: kv_cache_dtype), paged in
// blocks of kv_block_tokens; the pool is sized after the weights and workspace are allocated,
// from kv_cache_bytes when given (unified-memory devices such as GB10), else kv_cache_fraction
// of the device's free memory.
// ResourceExhausted names the numbers when the weights or a single KV block do not fit.
//
// Speculative decoding (engine/runtime/backend.h): tree chunks (PagedAttention with per-token
// ancestor masks; K/V in chunk order, RoPE at start_pos + depth), return_hidden (the fp32
// final-norm rows, unrounded, whose BF16 rounding feeds lm_head) and KeepCacheEntries (a device
// copy of the kept K/V entries, then a truncation) always work. The MTP (nextn) layer is used when
// the weights carry one (ModelWeights::mtp / LoadOptions::load_mtp; mtp[0] only): enorm, hnorm,
// eh_proj (replicated, stored dtype), one decoder layer TP-sliced like the main ones,
// shared_head.norm, the main lm_head. Its KV cache is a second paged cache of one layer with as
// many blocks as the main one (the KV budget is split so both hold the same number of tokens);
// FreeKvTokens is the smaller of the two caches' free tokens, Release frees both.
//
// Tensor parallelism: collectives per layer as CpuBackend (all-reduce after o_proj and after the
// MLP/MoE block, all-gather of the vocab-parallel logits). With CollectiveMode::kDevice the
// Communicator receives device pointers (fp32) and must enqueue its collectives on
// options.stream (NcclCommunicator created on the same stream); with kHost the backend stages
// the data through host memory and synchronises around each collective (GlooCommunicator).
//
// Ownership: the backend owns its device memory, cuBLASLt handle and (unless options.stream is
// given) its stream; the Communicator is borrowed and must outlive the backend.
// Thread safety: single owner thread (the rank's engine loop); the device must not be shared
// with another backend's allocations between Create() and the first Forward().
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/cuda/dense_gemv_tuner.h"
#include "engine/cuda/kv_dtype.h"
#include "engine/cuda/moe_tuner.h"
#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/weights.h"
#include "engine/runtime/backend.h"

namespace spark::cuda {

enum class CollectiveMode {
  kDevice,  // Communicator takes device pointers, stream-ordered on options.stream (NCCL)
  kHost,    // backend copies to host, synchronises, calls the Communicator, copies back (Gloo)
};

// Steps of at most this many tokens prefetch weights into L2 (CudaBackendOptions::
// l2_prefetch_percent); larger ones keep the memory busy without it.
constexpr int64_t kL2PrefetchMaxTokens = 64;

struct CudaBackendOptions {
  int device = 0;
  // Stream for every kernel of the backend; nullptr = the backend creates its own.
  cudaStream_t stream = nullptr;
  CollectiveMode collectives = CollectiveMode::kDevice;
  // KV cache: an explicit byte budget (> 0) wins; else this fraction of the free device memory
  // left after weights and workspace.
  int64_t kv_cache_bytes = 0;
  double kv_cache_fraction = 0.9;
  int kv_block_tokens = 16;
  // Element type of the KV cache (engine/cuda/kv_dtype.h): BF16, or FP8 E4M3 with scale 1 (twice
  // the tokens in the same bytes, half the KV bytes a decode step reads; attention still
  // computes in fp32). The MTP layer's cache uses the same type.
  KvCacheDtype kv_cache_dtype = KvCacheDtype::kBf16;
  // Attention on tensor cores (engine/cuda/attention_mma.h) where it applies (head_dim 128, no
  // tree masks; BF16 or FP8 cache); the CUDA-core kernel otherwise. H100: 4.4x faster at 32
  // sequences of 4,096 tokens (197 vs 868 us per layer), decode at batch 16 and 4k context
  // 5.9 vs 8.0 ms per step (8 layers); within 2.1e-3..2.9e-3 of the CPU reference.
  bool attention_tensor_cores = true;
  // MoE layers whose shared expert has the routed experts' shape and format (GLM-4's one
  // shared expert) run it, in batches of up to 256 tokens (decode), inside the fused MoE
  // kernels as one more expert slot taken by every token with weight 1 (engine/cuda/moe.h),
  // instead of a separate gate/up GEMV, SiLU-multiply and down GEMV: three kernels fewer per
  // layer and more blocks for the grouped GEMMs (H100, GLM-4.5-Air FP8: decode 5% faster at
  // batch 1, 1.5% at 64). Larger batches (prefill) run the dense copy, which the layer keeps
  // too (the shared expert's weights twice: 1.5% of GLM-4.5-Air's). In the MoE kernels its
  // activations are quantised to FP8 per token like the routed experts'.
  bool fuse_shared_experts = true;
  // Kernels of Forward / ForwardMtp launch with programmatic dependent launch (sm_90+;
  // engine/cuda/programmatic_launch.h): each is scheduled while its predecessor finishes, and
  // the FP8 GEMV starts streaming its weights before the wait (eager and in CUDA graphs; logits
  // bit-identical to plain launches; H100: ~1% off a batch-1 decode step).
  bool programmatic_launch = true;
  // MoE forwards of at most this many tokens run the expert GEMMs as GEMVs over the router's
  // (token, expert) pairs (engine/cuda/moe_gemv.h) instead of the grouped tile GEMMs; 0 = never.
  int moe_gemv_max_tokens = kMoeGemvMaxTokensDefault;
  // MoE forwards above moe_gemv_max_tokens and up to this many tokens run the expert-grouped
  // tensor-core kernels (engine/cuda/moe_grouped.h; FP8 weights read once per expert for up to 8
  // of its pairs, BF16 activations) where they fit the shared-memory limit; 0 = never.
  int moe_grouped_max_tokens = 0;
  // Tokens (summed over the chunks) one Forward may carry; sizes the activation workspace.
  int64_t max_batch_tokens = 4096;
  // Caps the shared memory per block a kernel may use (0 = the device's opt-in limit);
  // 101376 emulates GB10 on an H100/H200.
  int64_t smem_cap_bytes = 0;
  // Dense linears (engine/cuda/dense_linear.h): the own split-K GEMV serves BF16 weights up to
  // gemv_bf16_rows rows, per-channel FP8 up to gemv_fp8_rows, block FP8 (and shapes cuBLASLt has
  // no algorithm for) up to gemv_max_rows (at most 16); cuBLASLt the rest.
  int gemv_max_rows = 4;
  int gemv_bf16_rows = 0;
  int gemv_fp8_rows = 1;
  // One-token FP8 GEMVs (dense one-row linears and the MoE GEMV path) on the tensor cores:
  // E4M3x2 -> f16x2 mma.sync fragments with the activations staged as scaled f16
  // (engine/cuda/fp8_mma_dot.cuh; Fp8Dequant::kHalfMma, kMoeGemvHalfMma) instead of conversions
  // and FMAs on the CUDA cores. Same products, fp32 sums in another order.
  bool gemv_tensor_cores = false;
  // Dense one-token FP8 GEMVs with whole rows per block swept by a persistent grid
  // (Fp8Dequant::kConvertSweep) instead of K-split blocks of 32 rows; gemv_tensor_cores wins.
  bool gemv_row_sweep = false;
  // Dense one-token FP8 GEMVs: each weight shape's variant chosen at load by timing the model's
  // own weights on this device (engine/cuda/dense_gemv_tuner.h; the variants checked on a GPU,
  // the default kept unless another is more than 1% faster); gemv_tensor_cores and
  // gemv_row_sweep win.
  bool gemv_fp8_auto = false;
  // Steps of at most kL2PrefetchMaxTokens tokens prefetch weights into L2 on a side stream while
  // the latency-bound kernels run (engine/cuda/l2_prefetch.h): the o_proj weights beside RoPE and
  // attention, the router and fused shared expert (or a dense MLP's gate/up) beside the
  // post-attention norm, q/k/v beside the input norm; each up to this percentage of the device's
  // L2 (0 = off, at most 100).
  int l2_prefetch_percent = 0;
  // FP8 per-channel linears: quantise activations per token and run cuBLASLt FP8 (true, W8A8),
  // or keep BF16 activations with the GEMV / dequantised weights (false; closer to the fp32
  // reference, slower prefill).
  bool fp8_activations = true;
  // Tuned MoE tile configs and GEMV-path splits (engine/cuda/moe_tuner.h) set on the MoE config
  // table before the workspace is sized; buckets without one use the heuristic. With
  // gemv_tensor_cores the GEMV path's split is that option's for every bucket (tuned GEMV splits
  // are not applied).
  std::vector<MoeTunedChoice> moe_tuned;
  // Decode steps (every chunk one token, causal, logits of that token only, no hidden rows)
  // replay one CUDA graph per batch-size bucket (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, ... up
  // to graph_max_batch and max_batch_tokens): the batch is padded to its bucket with one-token
  // rows that write a reserved KV block, its metadata goes into a fixed device buffer, and the
  // embedding and every decoder layer (with their collectives) run as one graph launch; the
  // head (final norm, lm_head, logits to the host) runs as usual. Needs tp_size == 1 or
  // CollectiveMode::kDevice with a Communicator that supports capture; otherwise, or when a
  // capture fails (graph_stats() says why), every step runs eagerly. Off by default: the graph
  // path has yet to pass gpu_backend_test's DecodeGraphs check on a GPU.
  bool cuda_graphs = false;
  int graph_max_batch = 128;
};

// Decode graphs of a backend (CudaBackendOptions::cuda_graphs).
struct CudaGraphStats {
  std::vector<int> buckets;     // batch sizes with a graph (empty: graphs are off)
  int64_t captures = 0;         // graphs captured (a bucket is captured again when the block
                                // tables need more entries per sequence)
  int64_t launches = 0;         // decode steps replayed from a graph
  int64_t table_blocks = 0;     // block-table entries per sequence in the graph metadata
  std::string disabled_reason;  // why graphs are off (empty while on)
};

// Which weights CreateDummy generates (the LoadOptions of MakeDummyWeights that apply).
struct DummyWeightsSpec {
  int tp_rank = 0;
  int tp_size = 1;
  uint64_t seed = 0;
  int max_layers = -1;  // -1 = config.num_hidden_layers
  // Also the MTP layer (MakeDummyWeights with load_mtp) when the config has one.
  bool mtp = false;
};

class CudaBackend final : public engine::Backend {
 public:
  // Validates the weights like CpuBackend::Create, checks they fit, uploads them (freeing the
  // host copy layer by layer) and allocates workspace and KV cache. `comm` may be nullptr only
  // when weights.tp_size == 1.
  static Result<std::unique_ptr<CudaBackend>> Create(engine::ModelWeights weights,
                                                     engine::Communicator* comm,
                                                     const CudaBackendOptions& options);
  // Loads the slice load.tp_rank / load.tp_size of the checkpoint in `dir` straight to the
  // device, one layer in host memory at a time (load.progress reports bytes; load.max_layers
  // and load.load_mtp as LoadModelWeights; with load_mtp the MTP block is uploaded too).
  static Result<std::unique_ptr<CudaBackend>> Load(const std::filesystem::path& dir,
                                                   engine::LoadOptions load,
                                                   engine::Communicator* comm,
                                                   const CudaBackendOptions& options);
  // Generates MakeDummyWeights(config, {tp_rank, tp_size, seed, max_layers, load_mtp = mtp}) on
  // the device.
  static Result<std::unique_ptr<CudaBackend>> CreateDummy(const engine::ModelConfig& config,
                                                          const DummyWeightsSpec& spec,
                                                          engine::Communicator* comm,
                                                          const CudaBackendOptions& options);
  ~CudaBackend() override;

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const engine::ModelConfig& config() const override;

  // As CpuBackend::Forward: InvalidArgument for an empty chunk, an out-of-vocabulary token, a
  // start_pos different from the cached length, a sequence twice in a batch, or more tokens than
  // max_batch_tokens; ResourceExhausted when the KV cache cannot hold the new tokens (nothing is
  // modified then). CUDA and collective failures return Internal / the collective's Status.
  // Tree chunks: InvalidArgument when tree_parents has another size than tokens or an entry i
  // outside [-1, i).
  Result<engine::ForwardOutput> Forward(const engine::ForwardBatch& batch) override;
  // Frees both caches (target and MTP) of a sequence; unknown ids are ignored.
  void Release(uint64_t seq_id) override;
  // Free tokens of the KV cache (with an MTP layer: the smaller of the two caches').
  int64_t FreeKvTokens() const override;

  // True when the MTP layer is loaded.
  bool SupportsSpeculation() const override;
  // The MTP layer over its own cache (shared/docs/glm4-moe.md §4.1): per pair j,
  // z = eh_proj([enorm(embed[tokens[j]]), hnorm(hidden[j])]), the decoder layer at position
  // start_pos + depth(j) (slot start_pos + j), out = shared_head.norm(z), logits = lm_head(out);
  // hidden rows are `out`. Errors as Forward (start_pos against the MTP cache), InvalidArgument
  // when hidden does not hold tokens.size() * hidden_size values, Unimplemented without an MTP
  // layer.
  Result<engine::ForwardOutput> ForwardMtp(const engine::MtpBatch& batch) override;
  int64_t CachedTokens(uint64_t seq_id, engine::CacheKind kind) const override;
  // Compacts one cache of a sequence (backend.h): InvalidArgument when prefix_len is outside
  // [0, cached length] or keep is not strictly ascending within [0, cached length - prefix_len)
  // (nothing changes then); Unimplemented for kMtp without an MTP layer.
  Status KeepCacheEntries(uint64_t seq_id, engine::CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep) override;

  // Cached length in the target cache (0 for unknown ids).
  int64_t CachedTokens(uint64_t seq_id) const;
  Status TruncateSequence(uint64_t seq_id, int64_t length);
  int64_t KvCapacityTokens() const;

  CudaGraphStats graph_stats() const;

  // Device bytes held by the weights, the workspace and the KV cache pool.
  int64_t weight_bytes() const;
  int64_t workspace_bytes() const;
  int64_t kv_cache_bytes() const;
  cudaStream_t stream() const;
  const CudaBackendOptions& options() const;
  // What gemv_fp8_auto chose per dense FP8 weight shape (empty without it), for logs.
  const std::vector<DenseGemvChoice>& dense_gemv_choices() const;

  struct Impl;

 private:
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spark::cuda
