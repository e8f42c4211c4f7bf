#include "engine/cuda/moe_gemv.h"

#include <cuda_fp8.h>

#include <algorithm>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda::moe_internal {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;  // weight rows one warp streams together
// Vectors per row and lane in flight (x kRowsPerWarp loads): two measured faster on an H100 than
// four (twice the registers, half the resident blocks, longer compute phases without loads).
constexpr int kVectorsInFlight = 2;
constexpr int kDownOutputs = 16;  // outputs (hidden columns) of one down block

constexpr bool IsFp8(MoeWeightFormat f) { return f != MoeWeightFormat::kBf16; }
// Elements in one 16-byte weight vector.
constexpr int VecElems(MoeWeightFormat f) { return IsFp8(f) ? 16 : 8; }
constexpr int ElemBytes(MoeWeightFormat f) { return IsFp8(f) ? 1 : 2; }

// acc[r] += w[r][k .. k+kE) · x[k .. k+kE) for one 16-byte vector per row. Block scales are
// applied per vector (srow[r][k / 128]); per-channel scales by the caller after the sum.
template <MoeWeightFormat F, int kRows>
__device__ __forceinline__ void ConsumeVector(const uint4 (&raw)[kRows],
                                              const float* const (&srow)[kRows],
                                              const __nv_bfloat16* __restrict__ x, int k,
                                              float (&acc)[kRows]) {
  constexpr int kE = VecElems(F);
  float xv[kE];
  LoadX8(x + k, xv);
  if constexpr (kE == 16) LoadX8(x + k + 8, xv + 8);
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    if constexpr (F == MoeWeightFormat::kBf16) {
      const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw[r]);
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[r] = fmaf(__bfloat162float(b[e]), xv[e], acc[r]);
    } else {
      const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw[r]);
      float d = 0.f;
      float& a = F == MoeWeightFormat::kFp8Block ? d : acc[r];
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
        a = fmaf(f.x, xv[2 * e], a);
        a = fmaf(f.y, xv[2 * e + 1], a);
      }
      if constexpr (F == MoeWeightFormat::kFp8Block)
        acc[r] = fmaf(__ldg(srow[r] + k / 128), d, acc[r]);
    }
  }
}

// Per-lane partial dot products of kRows weight rows (w[r], k_elems elements each) with x.
// Lane l takes the vectors l, l + 32, ...; kUnroll of them per row are loaded before any is
// used (kRows x kUnroll 16-byte loads in flight per lane), out-of-range ones predicated off, so
// short rows (the down GEMM's K = Im) are one round trip.
template <MoeWeightFormat F, int kRows, int kUnroll>
__device__ __forceinline__ void DotRows(const uint4* const (&w)[kRows],
                                        const float* const (&srow)[kRows],
                                        const __nv_bfloat16* __restrict__ x, int k_elems,
                                        float (&acc)[kRows]) {
  constexpr int kE = VecElems(F);
  constexpr int kStride = 32 * kE;
  const int lane = threadIdx.x & 31;
  for (int kk = lane * kE; kk < k_elems; kk += kUnroll * kStride) {
    uint4 raw[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = kk + u * kStride;
      if (k < k_elems) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) raw[u][r] = __ldg(w[r] + k / kE);
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = kk + u * kStride;
      if (k < k_elems) ConsumeVector<F, kRows>(raw[u], srow, x, k, acc);
    }
  }
}

// grid (ceil(Im / (2 * kWarps)), pairs): each warp the rows (gate_i, up_i, gate_i+1, up_i+1).
template <MoeWeightFormat F>
__global__ void __launch_bounds__(kWarps * 32)
    GateUpKernel(MoeGemvParams p, const __nv_bfloat16* __restrict__ x,
                 const uint8_t* __restrict__ w13, const float* __restrict__ scale,
                 __nv_bfloat16* __restrict__ inter) {
  PdlBegin();
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t pair = blockIdx.y;
  const int i0 = (static_cast<int>(blockIdx.x) * kWarps + warp) * 2;
  if (i0 >= p.inter) return;
  const int64_t e = p.ids[pair];
  const int64_t token = pair / p.pairs_per_token;
  const int64_t rows = 2 * int64_t{p.inter};
  const int kb_h = p.hidden / 128;
  const uint4* w[kRowsPerWarp];
  const float* srow[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // Rows past the end re-read the last row; their sums are never stored.
    const int64_t n = min(int64_t{2} * i0 + r, rows - 1);
    w[r] = reinterpret_cast<const uint4*>(w13 + (e * rows + n) * p.hidden * ElemBytes(F));
    if constexpr (F == MoeWeightFormat::kFp8Block) {
      srow[r] = scale + ((e * 2 + (n & 1)) * (p.inter / 128) + (n >> 1) / 128) * kb_h;
    } else if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
      srow[r] = scale + e * rows + n;
    } else {
      srow[r] = nullptr;
    }
  }
  float acc[kRowsPerWarp] = {};
  DotRows<F, kRowsPerWarp, kVectorsInFlight>(w, srow, x + token * p.hidden, p.hidden, acc);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    acc[r] = WarpSum(acc[r]);
    if constexpr (F == MoeWeightFormat::kFp8PerChannel) acc[r] *= __ldg(srow[r]);
  }
  if (lane != 0) return;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int i = i0 + q;
    if (i >= p.inter) break;
    const float g = acc[2 * q];
    const float u = acc[2 * q + 1];
    inter[pair * p.inter + i] = __float2bfloat16(g / (1.f + expf(-g)) * u);
  }
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// grid (ceil(H / kDownOutputs), tokens): a block's warps take (pair, 4 outputs) items; each
// pair's weighted outputs go to shared memory and are summed over the pairs in order.
template <MoeWeightFormat F, class T>
__global__ void __launch_bounds__(kWarps * 32)
    DownKernel(MoeGemvParams p, const __nv_bfloat16* __restrict__ inter,
               const uint8_t* __restrict__ w2, const float* __restrict__ scale,
               const T* __restrict__ addend, T* __restrict__ out) {
  __shared__ float part[kMoeMaxPairsPerToken][kDownOutputs];
  PdlBegin();
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t t = blockIdx.y;
  const int n_base = static_cast<int>(blockIdx.x) * kDownOutputs;
  const int pairs = p.pairs_per_token;
  constexpr int kQuads = kDownOutputs / kRowsPerWarp;
  const int kb_i = p.inter / 128;
  for (int item = warp; item < kQuads * pairs; item += kWarps) {
    const int j = item / kQuads;
    const int n0 = n_base + (item % kQuads) * kRowsPerWarp;
    const int64_t pair = t * pairs + j;
    const int64_t e = p.ids[pair];
    const uint4* w[kRowsPerWarp];
    const float* srow[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t n = min(n0 + r, p.hidden - 1);
      w[r] = reinterpret_cast<const uint4*>(w2 + (e * p.hidden + n) * p.inter * ElemBytes(F));
      if constexpr (F == MoeWeightFormat::kFp8Block) {
        srow[r] = scale + (e * (p.hidden / 128) + n / 128) * kb_i;
      } else if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
        srow[r] = scale + e * p.hidden + n;
      } else {
        srow[r] = nullptr;
      }
    }
    float acc[kRowsPerWarp] = {};
    DotRows<F, kRowsPerWarp, kVectorsInFlight>(w, srow, inter + pair * p.inter, p.inter, acc);
    const float weight = p.weights[pair];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float v = WarpSum(acc[r]);
      if constexpr (F == MoeWeightFormat::kFp8PerChannel) v *= __ldg(srow[r]);
      if (lane == 0) part[j][n0 - n_base + r] = v * weight;
    }
  }
  __syncthreads();
  if (threadIdx.x >= kDownOutputs) return;
  const int n = n_base + static_cast<int>(threadIdx.x);
  if (n >= p.hidden) return;
  float s = 0.f;
  for (int j = 0; j < pairs; ++j) s += part[j][threadIdx.x];
  if (addend != nullptr) s += ToFloat(addend[t * p.hidden + n]);
  Store(out + t * p.hidden + n, s);
}

bool Valid(const MoeGemvParams& p) {
  return p.tokens > 0 && p.pairs_per_token > 0 && p.pairs_per_token <= kMoeMaxPairsPerToken &&
         MoeGemvSupports(p.format, p.hidden, p.inter) && p.tokens <= 65535 &&
         p.tokens * p.pairs_per_token <= 65535;
}

template <class T>
cudaError_t LaunchDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                       const float* w2_scale, const T* addend, T* out, cudaStream_t stream) {
  if (p.tokens == 0) return cudaSuccess;
  if (!Valid(p)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>((p.hidden + kDownOutputs - 1) / kDownOutputs),
                  static_cast<unsigned>(p.tokens));
  const auto* w = static_cast<const uint8_t*>(w2);
  switch (p.format) {
    case MoeWeightFormat::kBf16:
      LaunchKernel(DownKernel<MoeWeightFormat::kBf16, T>, grid, kWarps * 32, 0, stream, p, inter, w,
                   w2_scale, addend, out);
      break;
    case MoeWeightFormat::kFp8PerChannel:
      LaunchKernel(DownKernel<MoeWeightFormat::kFp8PerChannel, T>, grid, kWarps * 32, 0, stream, p,
                   inter, w, w2_scale, addend, out);
      break;
    case MoeWeightFormat::kFp8Block:
      LaunchKernel(DownKernel<MoeWeightFormat::kFp8Block, T>, grid, kWarps * 32, 0, stream, p,
                   inter, w, w2_scale, addend, out);
      break;
  }
  return cudaGetLastError();
}

}  // namespace

bool MoeGemvSupports(MoeWeightFormat format, int hidden, int inter) {
  const int align = VecElems(format);
  if (hidden <= 0 || inter <= 0 || hidden % align != 0 || inter % align != 0) return false;
  return format != MoeWeightFormat::kFp8Block || (hidden % 128 == 0 && inter % 128 == 0);
}

bool MoeGemvServes(const MoeConfigTable& table, MoeWeightFormat format, int hidden, int inter,
                   int64_t tokens) {
  return tokens <= table.gemv_max_tokens() && MoeGemvSupports(format, hidden, inter);
}

cudaError_t MoeGemvGateUp(const MoeGemvParams& p, const __nv_bfloat16* x, const void* w13,
                          const float* w13_scale, __nv_bfloat16* inter, cudaStream_t stream) {
  if (p.tokens == 0) return cudaSuccess;
  if (!Valid(p)) return cudaErrorInvalidValue;
  const int per_block = 2 * kWarps;
  const dim3 grid(static_cast<unsigned>((p.inter + per_block - 1) / per_block),
                  static_cast<unsigned>(p.tokens * p.pairs_per_token));
  const auto* w = static_cast<const uint8_t*>(w13);
  switch (p.format) {
    case MoeWeightFormat::kBf16:
      LaunchKernel(GateUpKernel<MoeWeightFormat::kBf16>, grid, kWarps * 32, 0, stream, p, x, w,
                   w13_scale, inter);
      break;
    case MoeWeightFormat::kFp8PerChannel:
      LaunchKernel(GateUpKernel<MoeWeightFormat::kFp8PerChannel>, grid, kWarps * 32, 0, stream, p,
                   x, w, w13_scale, inter);
      break;
    case MoeWeightFormat::kFp8Block:
      LaunchKernel(GateUpKernel<MoeWeightFormat::kFp8Block>, grid, kWarps * 32, 0, stream, p, x, w,
                   w13_scale, inter);
      break;
  }
  return cudaGetLastError();
}

cudaError_t MoeGemvDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                        const float* w2_scale, const float* addend, float* out,
                        cudaStream_t stream) {
  return LaunchDown(p, inter, w2, w2_scale, addend, out, stream);
}

cudaError_t MoeGemvDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                        const float* w2_scale, const __nv_bfloat16* addend, __nv_bfloat16* out,
                        cudaStream_t stream) {
  return LaunchDown(p, inter, w2, w2_scale, addend, out, stream);
}

}  // namespace spark::cuda::moe_internal
