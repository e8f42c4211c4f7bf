// FP8 conversions for the dense linears.
//
// QuantizePerToken: per-token dynamic FP8 E4M3 quantisation of BF16 activations [rows, cols]:
//   scale[m] = max(max_k |x[m, k]|, 1e-10) / 448, q[m, k] = e4m3(x[m, k] / scale[m]) (RNE,
//   saturating) - shared/docs/glm4-moe.md §6.2.
// DequantizeWeight: FP8 weight (per-channel or block scales) -> BF16 [out, in], element
//   bf16(float(q) * scale) (the fallback when cuBLASLt has no FP8 algorithm for a shape).
// Bf16ToF32: out[i] = float(in[i]).
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/device_linear.h"

namespace spark::cuda {

cudaError_t QuantizePerToken(const __nv_bfloat16* x, int64_t rows, int64_t cols, uint8_t* q,
                             float* scale, cudaStream_t stream);

cudaError_t DequantizeWeight(const DeviceLinear& w, __nv_bfloat16* out, cudaStream_t stream);

cudaError_t Bf16ToF32(const __nv_bfloat16* in, int64_t count, float* out, cudaStream_t stream);

}  // namespace spark::cuda
