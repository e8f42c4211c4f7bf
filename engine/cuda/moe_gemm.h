// Internal interface of the MoE grouped GEMM kernel (engine/cuda/moe_gemm.cu), used by
// engine/cuda/moe.cu and moe_config.cc only.
//
// One launch computes, for every BLOCK_M rows of the permuted pair list (all rows of one
// expert) and every BLOCK_N columns, C = A · B[e]^T with A rows gathered from the activations,
// B = the expert's [N, K] weights, fp32 accumulation on tensor cores, and one of two epilogues:
//   kGateUp: columns (2i, 2i+1) are (gate_i, up_i): inter[row, i] = bf16(silu(g) * u)
//   kDown:   out_pairs[pair, n] = C * routing weight of the pair
// FP8 scales: per-channel (a_scale per row, b_scale per column, applied after the K loop) or
// 128x128 block (applied per 128-element K group). Split-K partials are reduced by the last
// arriving thread block of a tile in split order (deterministic), which then runs the epilogue.
//
// Thread safety: stream-ordered. Ownership: all pointers borrowed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/moe_config.h"

namespace spark::cuda::moe_internal {

struct GemmParams {
  const void* a = nullptr;                 // kGateUp: x [tokens, K]; kDown: inter [rows, K]
  const void* b = nullptr;                 // [E, N, K]
  const float* a_scale = nullptr;          // FP8: per row [rows] or per group [rows, K/128]
  const float* b_scale = nullptr;          // FP8: see moe.h for the layouts
  const int32_t* sorted_pairs = nullptr;   // [rows] pair index or -1
  const int32_t* mblock_expert = nullptr;  // [mblocks]
  const int32_t* num_rows = nullptr;       // [1]
  const float* topk_weights = nullptr;     // [pairs] (kDown)
  __nv_bfloat16* inter_out = nullptr;      // kGateUp: [rows, N/2]
  float* pair_out = nullptr;               // kDown: [pairs, N]
  float* partials = nullptr;               // split-K scratch
  int32_t* counters = nullptr;             // split-K arrival counters, zero on entry and exit
  int top_k = 1;
  int n = 0;  // columns (elements)
  int k = 0;  // reduction length (elements)
  MoeGemm gemm = MoeGemm::kGateUp;
  int mblocks = 0;  // grid bound on BLOCK_M row blocks
};

// Launches variant `config.kernel` of `format` with the config's stages and split-K.
cudaError_t LaunchMoeGemm(MoeWeightFormat format, const MoeTileConfig& config,
                          const GemmParams& params, cudaStream_t stream);

// Raises the dynamic shared-memory limit of every compiled variant to `limit_bytes` (the
// table's limit) so that configs up to it can launch.
cudaError_t SetMoeGemmSmemLimit(int64_t limit_bytes);

}  // namespace spark::cuda::moe_internal
