#include "engine/cuda/activation.h"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

__global__ void SiluMulKernel(const float* __restrict__ gate_up, int64_t rows, int64_t inter,
                              __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  const int64_t total = rows * inter;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t m = idx / inter;
    const int64_t i = idx - m * inter;
    const float g = gate_up[m * 2 * inter + i];
    const float u = gate_up[m * 2 * inter + inter + i];
    out[idx] = __float2bfloat16(g / (1.f + expf(-g)) * u);
  }
}

}  // namespace

cudaError_t SiluMul(const float* gate_up, int64_t rows, int64_t inter, __nv_bfloat16* out,
                    cudaStream_t stream) {
  const int64_t total = rows * inter;
  if (total == 0) return cudaSuccess;
  const int64_t blocks = (total + 255) / 256;
  LaunchKernel(SiluMulKernel, static_cast<unsigned>(blocks < 65535 ? blocks : 65535), 256, 0,
               stream, gate_up, rows, inter, out);
  return cudaGetLastError();
}

}  // namespace spark::cuda
