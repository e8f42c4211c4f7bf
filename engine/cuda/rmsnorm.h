// RMSNorm kernels (Hugging Face numerics: fp32 statistics, eps inside the rsqrt).
//
// RmsNormResidual: residual[i] += x[i] (when x != nullptr), then
//   out[i] = weight * residual[i] * rsqrt(mean(residual^2) + eps), per row of `hidden` elements.
// Raw device pointers, BF16 activations and weights, fp32 math; returns the launch error.
// Thread safety: stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

cudaError_t RmsNormResidual(const __nv_bfloat16* x, __nv_bfloat16* residual,
                            const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows,
                            int hidden, float eps, cudaStream_t stream);

}  // namespace spark::cuda
