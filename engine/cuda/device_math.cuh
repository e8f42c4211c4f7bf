// Device-side helpers shared by the CUDA kernels: exact dtype conversions and warp reductions,
// and the launch width of one-block-per-row kernels. Header-only; stateless.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

// Threads of a kernel with one block per row of `cols` elements: 1024 for wide rows, so that a
// lone row (a decode step's token) costs each thread only a few dependent loads; else 256.
inline unsigned RowKernelThreads(int64_t cols) { return cols >= 4096 ? 1024u : 256u; }

// Exact FP8 E4M3 -> float (every e4m3 value is representable in fp32).
__device__ __forceinline__ float Fp8ToFloat(uint8_t bits) {
  __nv_fp8_e4m3 v;
  v.__x = bits;
  return static_cast<float>(v);
}

// Round-to-nearest-even float -> FP8 E4M3 with saturation to +-448.
__device__ __forceinline__ uint8_t FloatToFp8(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

// Eight BF16 values from one 16-byte read-only load (p 16-byte aligned) as floats.
__device__ __forceinline__ void LoadX8(const __nv_bfloat16* p, float* out) {
  const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
  const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
  for (int e = 0; e < 8; ++e) out[e] = __bfloat162float(b[e]);
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
  return v;
}

// Sum over a block of blockDim.x threads (multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  v = WarpSum(v);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float s = lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.f;
  return WarpSum(s);
}

}  // namespace spark::cuda
