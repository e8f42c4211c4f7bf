#include "engine/cuda/dummy_weights.h"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>

#include "engine/cuda/device_math.cuh"

namespace spark::cuda {
namespace {

__host__ __device__ __forceinline__ uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float UnitValue(uint64_t key, int64_t row, int64_t col) {
  const uint64_t counter = (static_cast<uint64_t>(row) << 32) ^ static_cast<uint64_t>(col);
  const uint64_t h = SplitMix64(key ^ SplitMix64(counter));
  return __fsub_rn(__fmul_rn(static_cast<float>(h >> 40), 0x1p-23f), 1.0f);
}

__global__ void FillKernel(uint64_t key, float bound, float scale, int64_t row0, int64_t rows,
                           int64_t col0, int64_t cols, bool fp8, void* dst, int64_t ld) {
  const int64_t total = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols;
    const int64_t c = i - r * cols;
    const float v = __fmul_rn(UnitValue(key, row0 + r, col0 + c), bound);
    if (fp8) {
      static_cast<uint8_t*>(dst)[r * ld + c] = FloatToFp8(__fdiv_rn(v, scale));
    } else {
      static_cast<__nv_bfloat16*>(dst)[r * ld + c] = __float2bfloat16_rn(v);
    }
  }
}

}  // namespace

uint64_t DummyNameKey(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return SplitMix64(h ^ SplitMix64(seed));
}

float DummyFp8Scale(int64_t in_features) {
  return std::sqrt(3.0f / static_cast<float>(in_features)) / 448.0f;
}

cudaError_t FillDummyMatrix(uint64_t key, int64_t in_features, int64_t row0, int64_t rows,
                            int64_t col0, int64_t cols, bool fp8, void* dst, int64_t ld,
                            cudaStream_t stream) {
  const int64_t total = rows * cols;
  if (total == 0) return cudaSuccess;
  const float bound = std::sqrt(3.0f / static_cast<float>(in_features));
  const float scale = bound / 448.0f;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65535);
  FillKernel<<<static_cast<unsigned>(blocks), 256, 0, stream>>>(key, bound, scale, row0, rows, col0,
                                                                cols, fp8, dst, ld);
  return cudaGetLastError();
}

}  // namespace spark::cuda
