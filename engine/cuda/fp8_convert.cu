#include "engine/cuda/fp8_convert.h"

#include <algorithm>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

__global__ void QuantizeKernel(const __nv_bfloat16* __restrict__ x, int64_t cols,
                               uint8_t* __restrict__ q, float* __restrict__ scale) {
  PdlBegin();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const __nv_bfloat16* xr = x + row * cols;
  float amax = 0.f;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    amax = fmaxf(amax, fabsf(__bfloat162float(xr[i])));
  }
  amax = WarpMax(amax);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = amax;
  __syncthreads();
  float v = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.f;
  v = WarpMax(v);
  const float s = fmaxf(v, 1e-10f) / 448.f;
  if (threadIdx.x == 0) scale[row] = s;
  const float inv = 1.f / s;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    q[row * cols + i] = FloatToFp8(__bfloat162float(xr[i]) * inv);
  }
}

__global__ void DequantKernel(DeviceLinear w, __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  const int64_t total = w.out * w.in;
  const uint8_t* q = static_cast<const uint8_t*>(w.data);
  const int64_t kb = (w.block_k > 0 ? (w.in + w.block_k - 1) / w.block_k : 0);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = i / w.in;
    const int64_t k = i - n * w.in;
    const float s = w.scale_kind == WeightScale::kBlock
                        ? w.scale[(n / w.block_n) * kb + k / w.block_k]
                        : w.scale[n];
    out[i] = __float2bfloat16(Fp8ToFloat(q[i]) * s);
  }
}

// 16 elements per thread (one 16-byte load of FP8 codes); requires in % 16 == 0 and, for
// block scales, block_k % 16 == 0.
__global__ void DequantVecKernel(DeviceLinear w, __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  const int64_t vecs = w.out * w.in / 16;
  const uint4* q = static_cast<const uint4*>(w.data);
  const int64_t kb = w.block_k > 0 ? (w.in + w.block_k - 1) / w.block_k : 0;
  const int64_t vecs_per_row = w.in / 16;
  for (int64_t v = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; v < vecs;
       v += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = v / vecs_per_row;
    const int64_t k = (v - n * vecs_per_row) * 16;
    const float s = w.scale_kind == WeightScale::kBlock
                        ? w.scale[(n / w.block_n) * kb + k / w.block_k]
                        : w.scale[n];
    const uint4 raw = q[v];
    const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
    __align__(16) __nv_bfloat16 o[16];
#pragma unroll
    for (int e = 0; e < 16; ++e) o[e] = __float2bfloat16(Fp8ToFloat(b[e]) * s);
    uint4* dst = reinterpret_cast<uint4*>(out + v * 16);
    dst[0] = reinterpret_cast<const uint4*>(o)[0];
    dst[1] = reinterpret_cast<const uint4*>(o)[1];
  }
}

__global__ void Bf16ToF32Kernel(const __nv_bfloat16* __restrict__ in, int64_t count,
                                float* __restrict__ out) {
  PdlBegin();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = __bfloat162float(in[i]);
  }
}

}  // namespace

cudaError_t Bf16ToF32(const __nv_bfloat16* in, int64_t count, float* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 65535);
  LaunchKernel(Bf16ToF32Kernel, static_cast<unsigned>(blocks), 256, 0, stream, in, count, out);
  return cudaGetLastError();
}

cudaError_t QuantizePerToken(const __nv_bfloat16* x, int64_t rows, int64_t cols, uint8_t* q,
                             float* scale, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  LaunchKernel(QuantizeKernel, static_cast<unsigned>(rows), RowKernelThreads(cols), 0, stream, x,
               cols, q, scale);
  return cudaGetLastError();
}

cudaError_t DequantizeWeight(const DeviceLinear& w, __nv_bfloat16* out, cudaStream_t stream) {
  if (w.type != WeightType::kFP8 || w.scale_kind == WeightScale::kNone) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = w.out * w.in;
  if (total == 0) return cudaSuccess;
  const bool vec = w.in % 16 == 0 && (w.scale_kind != WeightScale::kBlock || w.block_k % 16 == 0);
  if (vec) {
    const int64_t blocks = std::min<int64_t>((total / 16 + 255) / 256, 65535);
    LaunchKernel(DequantVecKernel, static_cast<unsigned>(blocks), 256, 0, stream, w, out);
    return cudaGetLastError();
  }
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65535);
  LaunchKernel(DequantKernel, static_cast<unsigned>(blocks), 256, 0, stream, w, out);
  return cudaGetLastError();
}

}  // namespace spark::cuda
