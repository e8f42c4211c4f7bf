#include "engine/comm/rank_order_sum.h"

#include <algorithm>
#include <cstdint>

namespace spark::engine {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    RankOrderSumKernel(const float* __restrict__ gathered, int world, size_t count,
                       float* __restrict__ out) {
  for (size_t i = size_t{blockIdx.x} * kThreads + threadIdx.x; i < count;
       i += size_t{gridDim.x} * kThreads) {
    float s = gathered[i];
    for (int r = 1; r < world; ++r) s += gathered[r * count + i];
    out[i] = s;
  }
}

}  // namespace

cudaError_t RankOrderSum(const float* gathered, int world, size_t count, float* out,
                         cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (gathered == nullptr || out == nullptr || world < 1) return cudaErrorInvalidValue;
  const auto blocks =
      static_cast<unsigned>(std::min<size_t>((count + kThreads - 1) / kThreads, 1024));
  RankOrderSumKernel<<<blocks, kThreads, 0, stream>>>(gathered, world, count, out);
  return cudaGetLastError();
}

}  // namespace spark::engine
