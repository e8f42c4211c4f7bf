// Where the block scales of one packed MoE weight row start (the layout of engine/cuda/moe.h):
// the kernels that read FP8 block-scaled expert weights row by row (the GEMVs, the
// expert-grouped kernels) take a row's H/128 or Im/128 scales from here.
// Device-only inline functions; no state.
#pragma once

#include <cstdint>

namespace spark::cuda::moe_internal {

// w13_scale [E+S, 2, Im/128, H/128] (gate blocks, then up blocks): the scales along H of
// interleaved row n of expert e (gate_i = 2i, up_i = 2i + 1).
__device__ __forceinline__ const float* W13BlockScaleRow(const float* scale, int64_t e, int64_t n,
                                                         int hidden, int inter) {
  return scale + ((e * 2 + (n & 1)) * (inter / 128) + (n >> 1) / 128) * (hidden / 128);
}

// w2_scale [E+S, H/128, Im/128]: the scales along Im of row n (hidden column n) of expert e.
__device__ __forceinline__ const float* W2BlockScaleRow(const float* scale, int64_t e, int64_t n,
                                                        int hidden, int inter) {
  return scale + (e * (hidden / 128) + n / 128) * (inter / 128);
}

}  // namespace spark::cuda::moe_internal
