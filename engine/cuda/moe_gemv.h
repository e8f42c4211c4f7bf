// Internal interface of the MoE decode kernels (engine/cuda/moe_gemv.cu), used by
// engine/cuda/moe.cu only: the two expert GEMMs of a few tokens as GEMVs over the router's
// (token, expert) pairs, without permutation, activation quantisation or a combine kernel.
//
// At batch 1 the grouped GEMM pads each expert's single row to a tensor-core tile and runs too
// few K steps per block to stream the weights at the memory bandwidth; these kernels read each
// pair's expert rows in 16-byte vectors, many in flight per lane, with BF16 activations (exact
// dequantisation of FP8 weights, fp32 accumulation, as the dense one-row GEMV):
//   GateUp: inter[p, i] = bf16(silu(g) * u), g/u = x[token(p)] · w13[e_p, 2i / 2i+1] (x scale)
//   Down:   out[t, n] = Σ_j weight[t, j] * (inter[t*P + j] · w2[e, n]) (x scale) (+ addend[t, n]),
//           j ascending (the order of CombineKernel), one kernel.
// An expert chosen by several of the tokens is read once per token (L2 may serve the repeats),
// so the path pays for few tokens only (MoeConfigTable::gemv_max_tokens).
//
// Thread safety: stream-ordered. Ownership: all pointers borrowed.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/moe_config.h"

namespace spark::cuda::moe_internal {

// Most (token, expert) pairs per token: the router's top-k limit (moe.cu), and the pairs the down
// kernel's shared memory holds.
constexpr int kMoeMaxPairsPerToken = 32;

// Whether the kernels serve a layer of this format and these sizes (16-byte weight vectors; block
// FP8 also needs H and Im in whole 128-element blocks).
bool MoeGemvSupports(MoeWeightFormat format, int hidden, int inter);

// Whether a forward of `tokens` tokens with `table` runs these kernels (the table's
// gemv_max_tokens and MoeGemvSupports); forwards with explicit tile configs never do.
bool MoeGemvServes(const MoeConfigTable& table, MoeWeightFormat format, int hidden, int inter,
                   int64_t tokens);

struct MoeGemvParams {
  MoeWeightFormat format = MoeWeightFormat::kBf16;
  int64_t tokens = 0;
  int pairs_per_token = 0;         // P: routed top-k plus shared slots in use
  int hidden = 0;                  // H
  int inter = 0;                   // Im
  const int32_t* ids = nullptr;    // [tokens, P] expert slot of each pair
  const float* weights = nullptr;  // [tokens, P] routing weight of each pair
  MoeGemvTiling tiling;            // zeros: the defaults (MoeGemvResolveTiling)
};

// The tiling a launch of `p` uses: p.tiling's non-zero values, MoeGemvTiling's defaults for the
// rest.
MoeGemvTiling MoeGemvResolveTiling(const MoeGemvParams& p);
// MoeGemvResolveTiling with the fields the launch of `p` ignores set to fixed values (BF16: the
// dequantisation; a row sweep: the K splits; the tensor-core kernels: the down outputs and
// vectors; a variant the shape cannot run: the one that runs instead), so two tilings launch the
// same kernels exactly when their effective tilings are equal (the tuner's candidates).
MoeGemvTiling MoeGemvEffectiveTiling(const MoeGemvParams& p);
bool SameMoeGemvTiling(const MoeGemvTiling& a, const MoeGemvTiling& b);

// x [tokens, H] BF16, w13/w13_scale as in moe.h, inter [tokens * P, Im] BF16.
cudaError_t MoeGemvGateUp(const MoeGemvParams& p, const __nv_bfloat16* x, const void* w13,
                          const float* w13_scale, __nv_bfloat16* inter, cudaStream_t stream);

// inter [tokens * P, Im], w2/w2_scale as in moe.h, out (and addend, may be null) [tokens, H].
cudaError_t MoeGemvDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                        const float* w2_scale, const float* addend, float* out,
                        cudaStream_t stream);
cudaError_t MoeGemvDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                        const float* w2_scale, const __nv_bfloat16* addend, __nv_bfloat16* out,
                        cudaStream_t stream);

}  // namespace spark::cuda::moe_internal
