#include "engine/cuda/moe_gemv.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda::moe_internal {
namespace {

constexpr int kWarps = 8;
constexpr int kRowsPerWarp = 4;  // weight rows one warp streams together
// Vectors per row and lane in flight (x kRowsPerWarp loads): two measured faster on an H100 than
// four (twice the registers, half the resident blocks, longer compute phases without loads).
constexpr int kVectorsInFlight = 2;

constexpr bool IsFp8(MoeWeightFormat f) { return f != MoeWeightFormat::kBf16; }
// Elements in one 16-byte weight vector.
constexpr int VecElems(MoeWeightFormat f) { return IsFp8(f) ? 16 : 8; }
constexpr int ElemBytes(MoeWeightFormat f) { return IsFp8(f) ? 1 : 2; }

// acc[r] += w[r][k .. k+kE) · x[k .. k+kE) for one 16-byte vector per row. Block scales are
// applied per vector (srow[r][k / 128]); per-channel scales by the caller after the sum.
template <MoeWeightFormat F, int kRows, bool kScaled>
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
      float d = 0.f;
      float& a = F == MoeWeightFormat::kFp8Block ? d : acc[r];
      Fp8x16Dot<kScaled>(raw[r], xv, a);
      if constexpr (F == MoeWeightFormat::kFp8Block) {
        acc[r] = fmaf(__ldg(srow[r] + k / 128), Fp8DotValue<kScaled>(d), acc[r]);
      }
    }
  }
}

// Per-lane partial dot products of kRows weight rows (w[r]) with x over the elements
// [k_begin, k_end) (k_begin a multiple of the vector width). Lane l takes the vectors l, l + 32,
// ... of the range; each round loads kUnroll of them per row before any is used (kRows x kUnroll
// 16-byte loads in flight per lane), out-of-range ones predicated off, so a short range is one
// round trip. The round loop is warp-uniform: `before_use` runs once in every lane, after the
// first round's loads are issued and before x is read.
template <MoeWeightFormat F, int kRows, int kUnroll, bool kScaled, class BeforeUse>
__device__ __forceinline__ void DotRows(const uint4* const (&w)[kRows],
                                        const float* const (&srow)[kRows],
                                        const __nv_bfloat16* __restrict__ x, int k_begin, int k_end,
                                        float (&acc)[kRows], BeforeUse&& before_use) {
  constexpr int kE = VecElems(F);
  constexpr int kStride = 32 * kE;
  const int lane = threadIdx.x & 31;
  bool first = true;
  for (int round = k_begin; round < k_end; round += kUnroll * kStride) {
    const int base = round + lane * kE;
    uint4 raw[kUnroll][kRows];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = base + u * kStride;
      if (k < k_end) {
#pragma unroll
        for (int r = 0; r < kRows; ++r) raw[u][r] = __ldg(w[r] + k / kE);
      }
    }
    if (first) {
      before_use();
      first = false;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int k = base + u * kStride;
      if (k < k_end) ConsumeVector<F, kRows, kScaled>(raw[u], srow, x, k, acc);
    }
  }
}

// grid (ceil(Im / (2 * kWarps / k_splits)), pairs): the warps of a block form kWarps / k_splits
// row groups, each the rows (gate_i, up_i, gate_i+1, up_i+1), and the k_splits warps of a group
// take consecutive k_chunk-element ranges of H; their sums meet in shared memory (split order).
template <MoeWeightFormat F, bool kScaled>
__global__ void __launch_bounds__(kWarps * 32)
    GateUpKernel(MoeGemvParams p, int k_splits, int k_chunk, const __nv_bfloat16* __restrict__ x,
                 const uint8_t* __restrict__ w13, const float* __restrict__ scale,
                 __nv_bfloat16* __restrict__ inter) {
  __shared__ float part[kWarps][kRowsPerWarp];
  PdlBegin();
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int groups = kWarps / k_splits;
  const int group = warp % groups;
  const int split = warp / groups;
  const int64_t pair = blockIdx.y;
  const int i0 = (static_cast<int>(blockIdx.x) * groups + group) * 2;
  const bool active = i0 < p.inter;
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
  const int k_begin = split * k_chunk;
  const int k_end = min(p.hidden, k_begin + k_chunk);
  if (active) {
    DotRows<F, kRowsPerWarp, kVectorsInFlight, kScaled>(w, srow, x + token * p.hidden, k_begin,
                                                        k_end, acc, [] {});
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = WarpSum(acc[r]);
  if (k_splits > 1) {
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) part[warp][r] = acc[r];
    }
    __syncthreads();
    if (split != 0) return;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float sum = 0.f;
      for (int sp = 0; sp < k_splits; ++sp) sum += part[group + sp * groups][r];
      acc[r] = sum;
    }
  }
  if (!active || lane != 0) return;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
      acc[r] = Fp8DotValue<kScaled>(acc[r]) * __ldg(srow[r]);
    }
  }
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

constexpr int kMaxDownOutputs = 16;

// grid (ceil(H / outputs), tokens): a block's warps take (pair, 4 outputs) items; each pair's
// weighted outputs go to shared memory and are summed over the pairs in order. kUnroll vectors
// per row and lane are in flight (Im in one round where kUnroll * 32 vectors reach it).
// The expert ids come from the router, which completed before the gate/up kernel got past its
// own wait: each warp issues its first weight loads before waiting for gate/up (programmatic
// launch), reading the ids through L2 (never a stale L1 line of an earlier layer).
template <MoeWeightFormat F, int kUnroll, class T, bool kScaled>
__global__ void __launch_bounds__(kWarps * 32)
    DownKernel(MoeGemvParams p, int outputs, const __nv_bfloat16* __restrict__ inter,
               const uint8_t* __restrict__ w2, const float* __restrict__ scale,
               const T* __restrict__ addend, T* __restrict__ out) {
  __shared__ float part[kMoeMaxPairsPerToken][kMaxDownOutputs];
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t t = blockIdx.y;
  const int n_base = static_cast<int>(blockIdx.x) * outputs;
  const int pairs = p.pairs_per_token;
  const int quads = outputs / kRowsPerWarp;
  const int kb_i = p.inter / 128;
  bool waited = false;
  auto wait_once = [&waited] {
    if (!waited) {
      PdlBegin();
      waited = true;
    }
  };
  for (int item = warp; item < quads * pairs; item += kWarps) {
    const int j = item / quads;
    const int n0 = n_base + (item % quads) * kRowsPerWarp;
    const int64_t pair = t * pairs + j;
    const int64_t e = __ldcg(p.ids + pair);
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
    DotRows<F, kRowsPerWarp, kUnroll, kScaled>(w, srow, inter + pair * p.inter, 0, p.inter, acc,
                                               wait_once);
    const float weight = p.weights[pair];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float v = WarpSum(acc[r]);
      if constexpr (F == MoeWeightFormat::kFp8PerChannel)
        v = Fp8DotValue<kScaled>(v) * __ldg(srow[r]);
      if (lane == 0) part[j][n0 - n_base + r] = v * weight;
    }
  }
  wait_once();  // warps without an item
  __syncthreads();
  if (static_cast<int>(threadIdx.x) >= outputs) return;
  const int n = n_base + static_cast<int>(threadIdx.x);
  if (n >= p.hidden) return;
  float s = 0.f;
  for (int j = 0; j < pairs; ++j) s += part[j][threadIdx.x];
  if (addend != nullptr) s += ToFloat(addend[t * p.hidden + n]);
  Store(out + t * p.hidden + n, s);
}

bool Valid(const MoeGemvParams& p) {
  return CheckMoeGemvTiling(p.tiling).ok() && p.tokens > 0 && p.pairs_per_token > 0 &&
         p.pairs_per_token <= kMoeMaxPairsPerToken &&
         MoeGemvSupports(p.format, p.hidden, p.inter) && p.tokens <= 65535 &&
         p.tokens * p.pairs_per_token <= 65535;
}

// The down kernel with `vectors` 16-byte vectors per row and lane in flight (1, 2 or 3).
template <MoeWeightFormat F, class T, bool kScaled, class Launch>
void WithDownVectors(int vectors, Launch&& launch) {
  if (vectors == 1) {
    launch(DownKernel<F, 1, T, kScaled>);
  } else if (vectors == 2) {
    launch(DownKernel<F, 2, T, kScaled>);
  } else {
    launch(DownKernel<F, 3, T, kScaled>);
  }
}

// FP8 kernels with the tiling's dequantisation (kMoeGemvScaledBits: integer bit placement).
template <class Launch>
void WithDequant(const MoeGemvTiling& tiling, Launch&& launch) {
  if (tiling.fp8_dequant == kMoeGemvScaledBits) {
    launch(std::true_type{});
  } else {
    launch(std::false_type{});
  }
}

template <class T>
cudaError_t LaunchDown(const MoeGemvParams& p, const __nv_bfloat16* inter, const void* w2,
                       const float* w2_scale, const T* addend, T* out, cudaStream_t stream) {
  if (p.tokens == 0) return cudaSuccess;
  if (!Valid(p)) return cudaErrorInvalidValue;
  const MoeGemvTiling tiling = MoeGemvResolveTiling(p);
  const int outputs = tiling.down_outputs;
  const dim3 grid(static_cast<unsigned>((p.hidden + outputs - 1) / outputs),
                  static_cast<unsigned>(p.tokens));
  const auto* w = static_cast<const uint8_t*>(w2);
  auto launch = [&](auto kernel) {
    LaunchKernel(kernel, grid, kWarps * 32, 0, stream, p, outputs, inter, w, w2_scale, addend, out);
  };
  switch (p.format) {
    case MoeWeightFormat::kBf16:
      WithDownVectors<MoeWeightFormat::kBf16, T, false>(tiling.down_vectors, launch);
      break;
    case MoeWeightFormat::kFp8PerChannel:
      WithDequant(tiling, [&](auto scaled) {
        WithDownVectors<MoeWeightFormat::kFp8PerChannel, T, decltype(scaled)::value>(
            tiling.down_vectors, launch);
      });
      break;
    case MoeWeightFormat::kFp8Block:
      WithDequant(tiling, [&](auto scaled) {
        WithDownVectors<MoeWeightFormat::kFp8Block, T, decltype(scaled)::value>(tiling.down_vectors,
                                                                                launch);
      });
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

MoeGemvTiling MoeGemvResolveTiling(const MoeGemvParams& p) {
  MoeGemvTiling t = p.tiling;
  if (t.gate_up_k_splits <= 0) t.gate_up_k_splits = 1;
  if (t.down_outputs <= 0) t.down_outputs = p.tokens <= 2 ? 8 : 16;
  if (t.down_vectors <= 0) t.down_vectors = 1;
  if (t.fp8_dequant <= 0) t.fp8_dequant = kMoeGemvFp8DequantDefault;
  return t;
}

cudaError_t MoeGemvGateUp(const MoeGemvParams& p, const __nv_bfloat16* x, const void* w13,
                          const float* w13_scale, __nv_bfloat16* inter, cudaStream_t stream) {
  if (p.tokens == 0) return cudaSuccess;
  if (!Valid(p)) return cudaErrorInvalidValue;
  const MoeGemvTiling tiling = MoeGemvResolveTiling(p);
  const int k_splits = tiling.gate_up_k_splits;
  const int elems = VecElems(p.format);
  const int k_chunk = (p.hidden + k_splits * elems - 1) / (k_splits * elems) * elems;
  const int per_block = 2 * (kWarps / k_splits);
  const dim3 grid(static_cast<unsigned>((p.inter + per_block - 1) / per_block),
                  static_cast<unsigned>(p.tokens * p.pairs_per_token));
  const auto* w = static_cast<const uint8_t*>(w13);
  auto launch = [&](auto kernel) {
    LaunchKernel(kernel, grid, kWarps * 32, 0, stream, p, k_splits, k_chunk, x, w, w13_scale,
                 inter);
  };
  switch (p.format) {
    case MoeWeightFormat::kBf16:
      launch(GateUpKernel<MoeWeightFormat::kBf16, false>);
      break;
    case MoeWeightFormat::kFp8PerChannel:
      WithDequant(tiling, [&](auto scaled) {
        launch(GateUpKernel<MoeWeightFormat::kFp8PerChannel, decltype(scaled)::value>);
      });
      break;
    case MoeWeightFormat::kFp8Block:
      WithDequant(tiling, [&](auto scaled) {
        launch(GateUpKernel<MoeWeightFormat::kFp8Block, decltype(scaled)::value>);
      });
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
