#include "engine/cuda/rmsnorm.h"

#include <algorithm>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void RmsNormResidualKernel(const __nv_bfloat16* __restrict__ x,
                                      __nv_bfloat16* __restrict__ residual,
                                      const __nv_bfloat16* __restrict__ weight,
                                      __nv_bfloat16* __restrict__ out, int hidden, float eps) {
  PdlBegin();
  const int64_t row = blockIdx.x;
  __nv_bfloat16* r = residual + row * hidden;
  const __nv_bfloat16* xr = x ? x + row * hidden : nullptr;
  float sum_sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = __bfloat162float(r[i]);
    if (xr) {
      v += __bfloat162float(xr[i]);
      r[i] = __float2bfloat16(v);
      v = __bfloat162float(r[i]);  // the stored (rounded) residual is what the norm sees
    }
    sum_sq += v * v;
  }
  __shared__ float warp_sums[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = sum_sq;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < (blockDim.x >> 5) ? warp_sums[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (threadIdx.x == 0) warp_sums[0] = s;
  }
  __syncthreads();
  const float inv = rsqrtf(warp_sums[0] / hidden + eps);
  __nv_bfloat16* o = out + row * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    // HF: cast the normalised value to the activation dtype before multiplying by the weight.
    __nv_bfloat16 normed = __float2bfloat16(__bfloat162float(r[i]) * inv);
    o[i] = __float2bfloat16(__bfloat162float(weight[i]) * __bfloat162float(normed));
  }
}

__global__ void RmsNormF32Kernel(const float* __restrict__ add, float* __restrict__ residual,
                                 const float* __restrict__ weight, __nv_bfloat16* __restrict__ out,
                                 float* __restrict__ out_f32, int hidden, float eps,
                                 const int32_t* __restrict__ row_index) {
  PdlBegin();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t src = row_index ? row_index[row] : row;
  float* r = residual + src * hidden;
  const float* a = add ? add + src * hidden : nullptr;
  float sum_sq = 0.f;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    float v = r[i];
    if (a) {
      v += a[i];
      r[i] = v;
    }
    sum_sq += v * v;
  }
  const float total = BlockSum(sum_sq, scratch);
  const float inv = rsqrtf(total / static_cast<float>(hidden) + eps);
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    const float y = weight[i] * (r[i] * inv);
    out[row * hidden + i] = __float2bfloat16(y);
    if (out_f32) out_f32[row * hidden + i] = y;
  }
}

// The same for rows of at most kRegThreads * kPer elements, one block per row: every element a
// thread handles is loaded before any is used and stays in registers for the output, so a row
// costs about three memory round trips instead of two passes of dependent loads (a decode step
// has a single row: its latency is the kernel's time).
constexpr int kRegThreads = 1024;
constexpr int kPer = 8;

__global__ void __launch_bounds__(kRegThreads)
    RmsNormF32RegKernel(const float* __restrict__ add, float* __restrict__ residual,
                        const float* __restrict__ weight, __nv_bfloat16* __restrict__ out,
                        float* __restrict__ out_f32, int hidden, float eps,
                        const int32_t* __restrict__ row_index) {
  PdlBegin();
  __shared__ float scratch[32];
  const int64_t row = blockIdx.x;
  const int64_t src = row_index ? row_index[row] : row;
  float* r = residual + src * hidden;
  const float* a = add ? add + src * hidden : nullptr;
  float v[kPer];
  float sum_sq = 0.f;
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    v[j] = i < hidden ? r[i] : 0.f;
  }
  if (a) {
    float av[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      av[j] = i < hidden ? a[i] : 0.f;
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int i = threadIdx.x + j * blockDim.x;
      v[j] += av[j];
      if (i < hidden) r[i] = v[j];
    }
  }
#pragma unroll
  for (int j = 0; j < kPer; ++j) sum_sq += v[j] * v[j];
  const float total = BlockSum(sum_sq, scratch);
  const float inv = rsqrtf(total / static_cast<float>(hidden) + eps);
#pragma unroll
  for (int j = 0; j < kPer; ++j) {
    const int i = threadIdx.x + j * blockDim.x;
    if (i < hidden) {
      const float y = weight[i] * (v[j] * inv);
      out[row * hidden + i] = __float2bfloat16(y);
      if (out_f32) out_f32[row * hidden + i] = y;
    }
  }
}

}  // namespace

cudaError_t RmsNormF32(const float* add, float* residual, const float* weight, __nv_bfloat16* out,
                       float* out_f32, int64_t rows, int hidden, float eps,
                       const int32_t* row_index, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (add != nullptr && row_index != nullptr) return cudaErrorInvalidValue;
  if (hidden <= kRegThreads * kPer) {
    // Threads to hold the row in kPer registers each, whole warps, at least kThreads.
    int threads = (hidden + kPer - 1) / kPer;
    threads = std::max(kThreads, std::min(kRegThreads, (threads + 31) / 32 * 32));
    LaunchKernel(RmsNormF32RegKernel, static_cast<unsigned>(rows), static_cast<unsigned>(threads),
                 0, stream, add, residual, weight, out, out_f32, hidden, eps, row_index);
    return cudaGetLastError();
  }
  LaunchKernel(RmsNormF32Kernel, static_cast<unsigned>(rows), kThreads, 0, stream, add, residual,
               weight, out, out_f32, hidden, eps, row_index);
  return cudaGetLastError();
}

cudaError_t RmsNormResidual(const __nv_bfloat16* x, __nv_bfloat16* residual,
                            const __nv_bfloat16* weight, __nv_bfloat16* out, int64_t rows,
                            int hidden, float eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  LaunchKernel(RmsNormResidualKernel, static_cast<unsigned>(rows), kThreads, 0, stream, x, residual,
               weight, out, hidden, eps);
  return cudaGetLastError();
}

}  // namespace spark::cuda
