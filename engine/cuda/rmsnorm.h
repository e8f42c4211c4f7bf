// RMSNorm kernels (Hugging Face numerics: fp32 statistics, eps inside the rsqrt).
//
// RmsNormResidual: residual[i] += x[i] (when x != nullptr), then
//   out[i] = weight * residual[i] * rsqrt(mean(residual^2) + eps), per row of `hidden` elements.
// Raw device pointers, BF16 activations and weights, fp32 math; returns the launch error.
//
// RmsNormF32: the backend's fp32 residual stream. residual[r] += add[r] when add != nullptr,
//   then out[r] = bf16(weight * residual[r] * rsqrt(mean(residual[r]^2) + eps)) with fp32 weights
//   (and the same values unrounded into out_f32 when it is not nullptr). With row_index, output
//   row i normalises residual row row_index[i] (add must then be nullptr).
// Thread safety: stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

cudaError_t RmsNormResidual(const __nv_bfloat16* x, __nv_bfloat16* residual,
                            const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows,
                            int hidden, float eps, cudaStream_t stream);

cudaError_t RmsNormF32(const float* add, float* residual, const float* weight, __nv_bfloat16* out,
                       float* out_f32, int64_t rows, int hidden, float eps,
                       const int32_t* row_index, cudaStream_t stream);

}  // namespace spark::cuda
