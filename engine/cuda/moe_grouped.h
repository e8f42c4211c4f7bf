// Internal interface of the expert-grouped MoE kernels (engine/cuda/moe_grouped.cu), used by
// engine/cuda/moe.cu only: the two expert GEMMs of a small batch on the tensor cores with BF16
// activations, each expert's FP8 weights read once for up to 8 of its (token, expert) pairs.
//
// The permutation (PermuteKernel with block_m = kMoeGroupedCols) sorts the pairs by expert and pads
// each expert's segment to whole groups of 8 rows; a group's pairs are the 8 columns of the B
// operand of mma.sync m16n8k16 and the expert's weight rows its A operand, E4M3x2 -> f16x2
// (engine/cuda/fp8_mma_dot.cuh: "swap AB", so that a few tokens fill the narrow side of the MMA).
// Activations are staged per column as f16 times a power of two (exact for BF16 values within
// 2^29 of the column's largest), products are exact, sums fp32: no activation quantisation,
// against the W8A8 tiles' e4m3 rounding of every activation.
//   GateUp: inter[r, i] = bf16(silu(g) * u), g/u = x[token(pair(r))] · w13[e(r), 2i / 2i+1] (x
//   scale) Down:   pair_out[pair(r), n] = weight[pair(r)] * (inter[r] · w2[e(r), n]) (x scale)
// for every padded row r of a valid pair (padding rows are neither read for output nor written);
// CombineKernel then sums each token's pairs.
//
// Thread safety: stream-ordered. Ownership: all pointers borrowed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/moe_config.h"

namespace spark::cuda::moe_internal {

// Pairs (columns) of one group: the permutation's block_m on this path.
constexpr int kMoeGroupedCols = 8;

// Dynamic shared memory a launch needs for these sizes (the larger of the two kernels').
int64_t MoeGroupedSmemBytes(int hidden, int inter);

// Whether the kernels serve a layer of this format and these sizes within `smem_limit_bytes` per
// block (FP8 weights, H and Im multiples of 64).
bool MoeGroupedSupports(MoeWeightFormat format, int hidden, int inter, int64_t smem_limit_bytes);

struct MoeGroupedParams {
  MoeWeightFormat format = MoeWeightFormat::kFp8PerChannel;
  int pairs_per_token = 0;                 // P: routed top-k plus shared slots in use
  int hidden = 0;                          // H
  int inter = 0;                           // Im
  int mblocks = 0;                         // groups launched (the most the permutation can make)
  const int32_t* sorted_pairs = nullptr;   // [mblocks * 8] pair of each padded row, -1 = pad
  const int32_t* mblock_expert = nullptr;  // [mblocks] expert slot of each group
  const int32_t* num_rows = nullptr;       // padded rows in use (device scalar)
  const float* weights = nullptr;          // [pairs] routing weight of each pair
  int warps_per_group = 1;                 // warps splitting K for one 16-row group: 1, 2, 4, 8
};

// x [tokens, H] BF16, w13/w13_scale as in moe.h, inter [mblocks * 8, Im] BF16 (padded rows).
cudaError_t MoeGroupedGateUp(const MoeGroupedParams& p, const __nv_bfloat16* x, const void* w13,
                             const float* w13_scale, __nv_bfloat16* inter, cudaStream_t stream);

// inter as above, w2/w2_scale as in moe.h, pair_out [pairs, H] fp32.
cudaError_t MoeGroupedDown(const MoeGroupedParams& p, const __nv_bfloat16* inter, const void* w2,
                           const float* w2_scale, float* pair_out, cudaStream_t stream);

}  // namespace spark::cuda::moe_internal
