// Test support for the CUDA MoE tests: random MoE layers (BF16, FP8 per-channel, FP8 block via the
// project's quantiser), and the host reference computed with the CPU backend's kernels
// (engine/cpu/kernels.h: LinearF32 router logits, RouteToken, Linear with exact dequantisation).
//
// Two references per token: `plain` is the CPU backend's MoE math (fp32 activations, fp32
// intermediate); `mirror` adds the GPU path's roundings (FP8 activation quantisation per token /
// per 1x128 group, BF16 intermediate) so that the kernels can be held to a tight tolerance;
// `mirror_gemv` those of the GEMV path for a few tokens (BF16 intermediate only).
//
// Thread safety: functions are reentrant. Ownership: values.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/cuda/moe.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace spark::cuda::testing {

struct MoeTestShape {
  const char* name;
  int experts, hidden, inter, top_k, n_group, topk_group;
  float scaling;
};

engine::ModelConfig MoeTestConfig(const MoeTestShape& shape);

// Random routed experts of one layer in `format` (router, correction bias, E experts).
engine::LayerWeights MakeMoeTestLayer(const MoeTestShape& shape, MoeWeightFormat format,
                                      uint64_t seed, engine::ThreadPool* pool);

// Random activations [tokens, hidden] as BF16 bits.
std::vector<uint16_t> MakeMoeTestInput(int64_t tokens, int hidden, uint64_t seed);

struct MoeReference {
  std::vector<int32_t> ids;        // [S, k] CPU routing (ascending experts)
  std::vector<float> weights;      // [S, k]
  std::vector<float> plain;        // [S, H]
  std::vector<float> mirror;       // [S, H]
  std::vector<float> mirror_gemv;  // [S, H]
};

// Reference for the tokens `rows` of x.
MoeReference ComputeMoeReference(const engine::ModelConfig& config,
                                 const engine::LayerWeights& layer, MoeWeightFormat format,
                                 const std::vector<uint16_t>& x, const std::vector<int64_t>& rows,
                                 engine::ThreadPool* pool);

// max_i |a - b| / max(max_i |b|, 1e-6) over one row of `n`.
float RowRelError(const float* a, const float* b, int64_t n);

}  // namespace spark::cuda::testing
