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

// Scale of the floats Fp8x4ScaledFloats makes: float(q) = kFp8ScaledFloatUnscale * f.
constexpr float kFp8ScaledFloatUnscale = 0x1p120f;

// The four E4M3 bytes of `q` (byte e = element e) as floats times 2^-120, exactly, from integer
// shifts and masks alone: sign to bit 31, the exponent and mantissa bits to bits 26..20 of an
// fp32 (an E4M3 subnormal becomes an fp32 subnormal of the same scaled value; NaN is not kept).
// The conversion instructions cost more per weight byte than a GEMV can spend at the memory
// bandwidth; products and sums scaled by a power of two round as the unscaled ones do while
// they stay above fp32's normal minimum.
__device__ __forceinline__ void Fp8x4ScaledFloats(uint32_t q, float (&f)[4]) {
  f[0] = __uint_as_float(((q << 24) & 0x80000000u) | ((q << 20) & 0x07F00000u));
  f[1] = __uint_as_float(((q << 16) & 0x80000000u) | ((q << 12) & 0x07F00000u));
  f[2] = __uint_as_float(((q << 8) & 0x80000000u) | ((q << 4) & 0x07F00000u));
  f[3] = __uint_as_float((q & 0x80000000u) | ((q >> 4) & 0x07F00000u));
}

// a += float(w[e]) * x[e] for the 16 E4M3 weights of one 16-byte vector, in element order. With
// kScaled the weights come from Fp8x4ScaledFloats and `a` accumulates 2^-120 times the sum
// (multiply by kFp8ScaledFloatUnscale once at the end); otherwise from the hardware conversion.
template <bool kScaled>
__device__ __forceinline__ void Fp8x16Dot(const uint4& raw, const float* xv, float& a) {
  if constexpr (kScaled) {
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      float f[4];
      Fp8x4ScaledFloats(words[j], f);
#pragma unroll
      for (int e = 0; e < 4; ++e) a = fmaf(f[e], xv[4 * j + e], a);
    }
  } else {
    const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
      a = fmaf(f.x, xv[2 * e], a);
      a = fmaf(f.y, xv[2 * e + 1], a);
    }
  }
}

// A sum Fp8x16Dot<kScaled> accumulated, at the weights' true scale.
template <bool kScaled>
__device__ __forceinline__ float Fp8DotValue(float sum) {
  return kScaled ? sum * kFp8ScaledFloatUnscale : sum;
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

// Block-wide: each warp's sums of its lanes' kN values (WarpSum) into slot[warp][0 .. kN) (lane 0
// writes), then a barrier, after which any thread may read slot. Every thread of the block calls
// it. Persistent kernels alternate two slots per pass, so one barrier per pass suffices: the
// readers of one slot are past the next pass's barrier before that slot is written again.
template <int kBlockWarps, int kN>
__device__ __forceinline__ void WarpSumsToShared(const float (&acc)[kN],
                                                 float (&slot)[kBlockWarps][kN]) {
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kN; ++r) {
    const float v = WarpSum(acc[r]);
    if (lane == 0) slot[warp][r] = v;
  }
  __syncthreads();
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
