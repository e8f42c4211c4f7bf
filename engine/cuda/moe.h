// Routed experts of a GLM-4 MoE layer on the GPU (shared/docs/glm4-moe.md §2.7-2.8, §6, §7).
//
// MoeForward(layer, x, tokens, out, workspace, table, stream) computes, for every token t,
//   out[t] = Σ_j w[t,j] * Expert_{idx[t,j]}(x[t]) + Σ_s Shared_s(x[t])
// where (idx, w) come from the router: fp32 logits x·Wr^T, sigmoid (or softmax), correction
// bias for the choice only, group-limited top-k, weights from the unbiased scores, renormalised
// and scaled by routed_scaling_factor. Shared experts are optional: with
// MoeShape::shared_experts = S > 0 the last S expert slots of w13/w2 hold them and every token
// takes each with weight 1, as S more (token, expert) pairs of the same grouped GEMMs (one
// pipeline instead of a separate MLP); otherwise the caller adds the shared expert. The caller
// runs the tensor-parallel all-reduce. Choices are deterministic (no atomics decide them), and so
// are the sums: the k expert outputs of a token are added in ascending expert order, split-K
// partials in split order.
//
// Pipeline of a few tokens (MoeConfigTable::gemv_max_tokens): router (logits and top-k in one
// kernel up to 8 tokens) -> gate/up GEMV per
// (token, expert) pair with SiLU(gate)*up -> down GEMV summing a token's pairs (+ addend), BF16
// activations (engine/cuda/moe_gemv.h). Otherwise: router -> permutation (pairs sorted by
// expert, padded to BLOCK_M) -> [per-token or 1x128 FP8 quantisation of x] -> grouped GEMM
// gate/up with SiLU(gate)*up in the epilogue -> [quantisation of the intermediate] -> grouped
// GEMM down with the routing weight in the epilogue -> combine over k. Tensor cores through
// mma.sync (m16n8k16 BF16, m16n8k32 e4m3), portable to sm_90 and sm_121; the tile config comes from
// a MoeConfigTable, which never launches one above the device's (or the emulated) shared-memory
// limit.
//
// Device layout of a layer (built by PackMoeLayer, engine/cuda/moe_pack.h):
//   w13 [E+S, 2*Im, H]: gate and up rows INTERLEAVED: row 2i = gate_i, row 2i+1 = up_i.
//   w2  [E+S, H, Im].   (E routed experts, then S shared ones; scales follow the same order)
//   BF16 or e4m3 (MoeWeightFormat). Scales (fp32):
//     kFp8PerChannel: w13_scale [E+S, 2*Im] (interleaved like the rows), w2_scale [E+S, H].
//     kFp8Block:      w13_scale [E+S, 2, Im/128, H/128] (gate blocks, then up blocks),
//                     w2_scale [E+S, H/128, Im/128]; H and Im must be multiples of 128.
//   router [E, H] fp32, router_bias [E] fp32 or nullptr.
//
// Thread safety: stream-ordered; one workspace per concurrent stream. Ownership: MoeLayerDevice
// borrows device pointers; MoeWorkspace owns its device buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/cuda/moe_config.h"

namespace spark::cuda {

struct MoeShape {
  int num_experts = 0;  // E (routed experts)
  int hidden = 0;       // H
  int inter = 0;        // Im of this rank (Im / tp)
  int top_k = 0;
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = true;
  bool softmax_scoring = false;  // false: sigmoid (GLM-4); true: softmax (Qwen3-MoE)
  float routed_scaling_factor = 1.0f;
  // Shared experts held as the last expert slots (each of intermediate size Im, like a routed
  // one) and taken by every token with weight 1; 0 = the caller runs them.
  int shared_experts = 0;

  // Expert slots of the grouped GEMMs and (token, expert) pairs per token.
  int gemm_experts() const { return num_experts + shared_experts; }
  int pairs_per_token() const { return top_k + shared_experts; }

  // Clear InvalidArgument naming the problem when the shape is not supported.
  Status Validate(MoeWeightFormat format) const;
};

struct MoeLayerDevice {
  MoeShape shape;
  MoeWeightFormat format = MoeWeightFormat::kBf16;
  const float* router = nullptr;       // [E, H]
  const float* router_bias = nullptr;  // [E] or nullptr
  const void* w13 = nullptr;           // [E, 2*Im, H] interleaved gate/up
  const void* w2 = nullptr;            // [E, H, Im]
  const float* w13_scale = nullptr;    // FP8 only, see the layout above
  const float* w2_scale = nullptr;
};

// Phase times of the last MoeForward when phase timing is on (cudaEvent resolution, ~1 us).
struct MoePhaseTimes {
  float route_ms = 0;    // router logits, top-k, permutation
  float gate_up_ms = 0;  // FP8 quantisation of x + gate/up GEMM with SiLU*up
  float down_ms = 0;     // FP8 quantisation of the intermediate + down GEMM with routing weight
  float combine_ms = 0;  // sum over the top-k
};

// What the last MoeForward launched (for tests, benchmarks and logs).
struct MoePlan {
  int64_t tokens = 0;
  MoeTileConfig gate_up;  // unset (kernel -1) on the GEMV path
  MoeTileConfig down;
  // The expert GEMMs ran as GEMVs over the pairs (MoeConfigTable::gemv_max_tokens).
  bool gemv = false;
  MoeGemvTiling gemv_tiling;  // the GEMV kernels' work split, resolved (GEMV path only)
  // The expert GEMMs ran on the expert-grouped tensor-core kernels
  // (MoeConfigTable::grouped_max_tokens); gemv_tiling.gate_up_k_splits is their warps per group.
  bool grouped = false;
};

// Device scratch for up to `max_tokens` tokens of one layer shape and format. Rows and row
// blocks are sized (MoeScratchFor) for every compiled tile height, so one workspace serves any
// MoeConfigTable (any shared-memory cap, any tuned config); MoeConfigTable::PlanLaunch checks
// each forward against it. Given `table`, the split-K partial tiles also cover every split that
// table's heuristic picks up to max_tokens (MoeConfigTable::ScratchFor); otherwise (and for tuned
// configs) a split larger than the scratch holds is lowered.
class MoeWorkspace {
 public:
  static Result<MoeWorkspace> Create(const MoeShape& shape, MoeWeightFormat format,
                                     int64_t max_tokens, const MoeConfigTable* table = nullptr);
  MoeWorkspace() = default;
  MoeWorkspace(MoeWorkspace&& other) noexcept;
  MoeWorkspace& operator=(MoeWorkspace&& other) noexcept;
  MoeWorkspace(const MoeWorkspace&) = delete;
  MoeWorkspace& operator=(const MoeWorkspace&) = delete;
  ~MoeWorkspace();

  int64_t max_tokens() const { return max_tokens_; }
  int64_t bytes() const { return bytes_; }
  const MoePlan& last_plan() const { return last_plan_; }

  // Records events between the phases of every forward (benchmarks); PhaseTimes() waits for the
  // last forward and reads them.
  Status SetPhaseTiming(bool on);
  Result<MoePhaseTimes> PhaseTimes() const;

  // Router results of the last forward (device): [tokens, top_k + S], routed experts ascending
  // per token, then the shared slots E..E+S-1 with weight 1.
  const int32_t* topk_ids() const { return topk_ids_; }
  const float* topk_weights() const { return topk_weights_; }

 private:
  friend struct MoeWorkspaceAccess;
  void Release();

  MoeShape shape_;
  MoeWeightFormat format_ = MoeWeightFormat::kBf16;
  int64_t max_tokens_ = 0;
  int64_t bytes_ = 0;
  int max_split_k_ = 1;
  MoePlan last_plan_;
  cudaEvent_t events_[5] = {};
  bool timing_ = false;
  void* base_ = nullptr;  // one allocation, carved into the buffers below
  float* logits_ = nullptr;
  int32_t* topk_ids_ = nullptr;
  float* topk_weights_ = nullptr;
  int32_t* expert_counts_ = nullptr;
  int32_t* sorted_pairs_ = nullptr;    // [max_rows] pair index or -1 (padding)
  int32_t* mblock_expert_ = nullptr;   // [max_mblocks] expert of each BLOCK_M rows
  int32_t* num_rows_ = nullptr;        // [1] padded rows in use
  void* x_q_ = nullptr;                // FP8 x [max_tokens, H]
  float* x_scale_ = nullptr;           // [max_tokens, H/128] or [max_tokens]
  __nv_bfloat16* inter_ = nullptr;     // [max_rows, Im]
  void* inter_q_ = nullptr;            // FP8 [max_rows, Im]
  float* inter_scale_ = nullptr;       // [max_rows, Im/128] or [max_rows]
  float* out_pairs_ = nullptr;         // [max_tokens * (top_k + S), H]
  float* split_partials_ = nullptr;    // split-K partial tiles
  int32_t* split_counters_ = nullptr;  // per-tile arrival counters (kept zero between launches)
  int32_t* route_counter_ = nullptr;   // router blocks arrived (fused router + top-k; zero)
  int64_t split_partial_floats_ = 0;
  int64_t split_counter_count_ = 0;
  int64_t max_rows_ = 0;
  int64_t max_mblocks_ = 0;
};

// Whether a forward runs the shared experts held in the layer's last slots (MoeShape::
// shared_experts) or leaves them to the caller (which then runs its own copy, e.g. for large
// batches where a dense GEMM serves them better).
enum class MoeSharedSlots { kRun, kSkip };

// Experts of `tokens` rows of x [tokens, H] (BF16) into out [tokens, H]. When `addend` is not
// null, out = addend + experts (e.g. a shared expert run separately). tokens may be 0.
// Errors: cudaErrorInvalidValue for tokens > workspace.max_tokens() or a shape/format that the
// workspace was not made for; cudaErrorInvalidConfiguration if the table's choice does not fit.
cudaError_t MoeForward(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                       __nv_bfloat16* out, const __nv_bfloat16* addend, MoeWorkspace& workspace,
                       const MoeConfigTable& table, cudaStream_t stream);
cudaError_t MoeForward(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                       float* out, const float* addend, MoeWorkspace& workspace,
                       const MoeConfigTable& table, cudaStream_t stream,
                       MoeSharedSlots shared = MoeSharedSlots::kRun);

// Same pipeline with explicit tile configs for both GEMMs (autotuning, tests). The configs must
// pass table.Check and share block_m; otherwise cudaErrorInvalidConfiguration and nothing runs.
cudaError_t MoeForwardWithConfigs(const MoeLayerDevice& layer, const __nv_bfloat16* x,
                                  int64_t tokens, float* out, MoeWorkspace& workspace,
                                  const MoeConfigTable& table, const MoeTileConfig& gate_up,
                                  const MoeTileConfig& down, cudaStream_t stream);

// Router alone: logits, scores and top-k of `tokens` rows into ids/weights [tokens, top_k + S]
// (routed experts ascending per token, then the S shared slots with weight 1), exactly the
// choice MoeForward makes.
cudaError_t MoeRoute(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                     float* logits, int32_t* topk_ids, float* topk_weights, cudaStream_t stream);
// Top-k selection alone from fp32 logits [tokens, E].
cudaError_t MoeTopK(const MoeShape& shape, const float* logits, const float* correction_bias,
                    int64_t tokens, int32_t* topk_ids, float* topk_weights, cudaStream_t stream);

// FP8 e4m3 activation quantisation of rows of `cols` BF16 values: group_cols == 0 gives one
// scale per row (amax/448), group_cols == 128 one per 1x128 group (scales [rows, cols/128]).
// amax is clamped below at 1e-10. `rows_device`, when not null, is a device int with the number
// of rows actually in use (rows is then the upper bound).
cudaError_t QuantizeFp8Rows(const __nv_bfloat16* x, int64_t rows, int64_t cols, int group_cols,
                            void* q, float* scales, const int32_t* rows_device,
                            cudaStream_t stream);

}  // namespace spark::cuda
