#include "engine/cuda/embedding.h"

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

__global__ void EmbeddingKernel(const __nv_bfloat16* __restrict__ table, int64_t hidden,
                                const int32_t* __restrict__ ids, float* __restrict__ out) {
  PdlBegin();
  const int64_t t = blockIdx.x;
  const __nv_bfloat16* row = table + static_cast<int64_t>(ids[t]) * hidden;
  float* dst = out + t * hidden;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) dst[i] = __bfloat162float(row[i]);
}

}  // namespace

cudaError_t EmbeddingLookup(const __nv_bfloat16* table, int64_t hidden, const int32_t* ids,
                            int64_t tokens, float* out, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  LaunchKernel(EmbeddingKernel, static_cast<unsigned>(tokens), RowKernelThreads(hidden), 0, stream,
               table, hidden, ids, out);
  return cudaGetLastError();
}

}  // namespace spark::cuda
