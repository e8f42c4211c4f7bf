// SwiGLU activation: out[m, i] = bf16(silu(gate_up[m, i]) * gate_up[m, inter + i]) for a fused
// gate/up projection output [rows, 2 * inter] in fp32; silu(g) = g / (1 + exp(-g)) in fp32.
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

cudaError_t SiluMul(const float* gate_up, int64_t rows, int64_t inter, __nv_bfloat16* out,
                    cudaStream_t stream);

}  // namespace spark::cuda
