#include "engine/cuda/moe_gemv.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/fp8_mma_dot.cuh"
#include "engine/cuda/kernel_smem.h"
#include "engine/cuda/moe_scale_rows.cuh"
#include "engine/cuda/persistent_grid.h"
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

// The scale row of interleaved gate/up weight row n (gate_i = 2i, up_i = 2i + 1) of expert e
// (nullptr for BF16).
template <MoeWeightFormat F>
__device__ __forceinline__ const float* GateUpScaleRow(const MoeGemvParams& p,
                                                       const float* __restrict__ scale, int64_t e,
                                                       int64_t n) {
  if constexpr (F == MoeWeightFormat::kFp8Block) {
    return W13BlockScaleRow(scale, e, n, p.hidden, p.inter);
  } else if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
    return scale + e * 2 * int64_t{p.inter} + n;
  } else {
    return nullptr;
  }
}

// The 4 interleaved rows gate_i0, up_i0, gate_i0+1, up_i0+1 of expert e and their scale rows.
// Rows past the end re-read the last row; their sums are never stored.
template <MoeWeightFormat F>
__device__ __forceinline__ void GateUpRows(const MoeGemvParams& p, const uint8_t* __restrict__ w13,
                                           const float* __restrict__ scale, int64_t e, int i0,
                                           const uint4* (&w)[kRowsPerWarp],
                                           const float* (&srow)[kRowsPerWarp]) {
  const int64_t rows = 2 * int64_t{p.inter};
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = min(int64_t{2} * i0 + r, rows - 1);
    w[r] = reinterpret_cast<const uint4*>(w13 + (e * rows + n) * p.hidden * ElemBytes(F));
    srow[r] = GateUpScaleRow<F>(p, scale, e, n);
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
  const uint4* w[kRowsPerWarp];
  const float* srow[kRowsPerWarp];
  GateUpRows<F>(p, w13, scale, e, i0, w, srow);
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

// Gate/up with whole rows per block over a persistent grid (MoeGemvTiling::gate_up_sweep): an
// item is (pair, 2 intermediate columns), i.e. the 4 interleaved rows gate_i, up_i, gate_i+1,
// up_i+1; a pass of a block takes one item, its 256 threads splitting H (thread t: vectors t,
// t + 256, ...), and pass p of block b takes item b + p * gridDim.x. Consecutive items are
// consecutive rows of one expert, so the blocks read one compact stretch of each expert's weights
// at a time instead of every row group at once. Sums: per thread in vector order, then warps and
// the block's warps in warp order (another order than GateUpKernel's).
constexpr int kGateUpSweepMaxVecs = 4;

template <MoeWeightFormat F, bool kScaled, int kVecs>
__global__ void __launch_bounds__(kWarps * 32)
    GateUpSweepKernel(MoeGemvParams p, const __nv_bfloat16* __restrict__ x,
                      const uint8_t* __restrict__ w13, const float* __restrict__ scale,
                      __nv_bfloat16* __restrict__ inter) {
  constexpr int kThreads = kWarps * 32;
  constexpr int kE = VecElems(F);
  __shared__ float part[2][kWarps][kRowsPerWarp];
  PdlBegin();  // the expert ids come from the router, the preceding kernel
  const int vecs = p.hidden / kE;
  const int64_t per_pair = (p.inter + 1) / 2;
  const int64_t items = p.tokens * p.pairs_per_token * per_pair;
  int pass = 0;
  for (int64_t item = blockIdx.x; item < items; item += gridDim.x, ++pass) {
    const int64_t pair = item / per_pair;
    const int i0 = static_cast<int>(item % per_pair) * 2;
    const int64_t e = __ldcg(p.ids + pair);
    const int64_t token = pair / p.pairs_per_token;
    const uint4* w[kRowsPerWarp];
    const float* srow[kRowsPerWarp];
    GateUpRows<F>(p, w13, scale, e, i0, w, srow);
    uint4 raw[kVecs][kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int v = static_cast<int>(threadIdx.x) + i * kThreads;
      if (v < vecs) {
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r) raw[i][r] = __ldg(w[r] + v);
      }
    }
    float acc[kRowsPerWarp] = {};
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int v = static_cast<int>(threadIdx.x) + i * kThreads;
      if (v >= vecs) break;
      ConsumeVector<F, kRowsPerWarp, kScaled>(raw[i], srow, x + token * p.hidden, v * kE, acc);
    }
    float(&slot)[kWarps][kRowsPerWarp] = part[pass & 1];
    WarpSumsToShared(acc, slot);
    if (threadIdx.x < 2) {
      const int q = static_cast<int>(threadIdx.x);
      const int i = i0 + q;
      if (i < p.inter) {
        float g = 0.f, u = 0.f;
        for (int wi = 0; wi < kWarps; ++wi) {
          g += slot[wi][2 * q];
          u += slot[wi][2 * q + 1];
        }
        if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
          g = Fp8DotValue<kScaled>(g) * __ldg(srow[2 * q]);
          u = Fp8DotValue<kScaled>(u) * __ldg(srow[2 * q + 1]);
        }
        inter[pair * p.inter + i] = __float2bfloat16(g / (1.f + expf(-g)) * u);
      }
    }
  }
}

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void Store(float* p, float v) { *p = v; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

constexpr int kMaxDownOutputs = 16;

// MoeGemvTiling::down_vectors value: every item of a warp in flight at once (DownAllItems).
constexpr int kDownAllItems = 4;
// Items per warp DownAllItems holds (4 rows x 16 bytes each per lane).
constexpr int kDownAllItemsMax = 4;

// The scale row of down weight row n of expert e (nullptr for BF16).
template <MoeWeightFormat F>
__device__ __forceinline__ const float* DownScaleRow(const MoeGemvParams& p,
                                                     const float* __restrict__ scale, int64_t e,
                                                     int64_t n) {
  if constexpr (F == MoeWeightFormat::kFp8Block) {
    return W2BlockScaleRow(scale, e, n, p.hidden, p.inter);
  } else if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
    return scale + e * p.hidden + n;
  } else {
    return nullptr;
  }
}

// One down item's 4 sums (per lane) into part[j][col .. col + 4): warp sums, per-channel scales,
// the pair's routing weight.
template <MoeWeightFormat F, bool kScaled>
__device__ __forceinline__ void StoreDownItem(const float (&acc)[kRowsPerWarp],
                                              const float* const (&srow)[kRowsPerWarp],
                                              float weight, float* part_row) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    float v = WarpSum(acc[r]);
    if constexpr (F == MoeWeightFormat::kFp8PerChannel)
      v = Fp8DotValue<kScaled>(v) * __ldg(srow[r]);
    if (lane == 0) part_row[r] = v * weight;
  }
}

// Whether DownAllItems serves a shape: each weight row within one 16-byte vector per lane
// (Im <= 512 FP8 / 256 BF16 elements, e.g. GLM-4.7 at tp 4 and 8) and at most kDownAllItemsMax
// items per warp.
bool DownAllItemsServes(const MoeGemvParams& p, int outputs) {
  return p.inter <= 32 * VecElems(p.format) &&
         (outputs / kRowsPerWarp) * p.pairs_per_token <= kWarps * kDownAllItemsMax;
}

// The down kernel's items (pair, 4 outputs) of one warp with short rows (DownAllItemsServes):
// the expert ids of all its items, then every item's weight vectors are loaded before any is
// used (and before the programmatic wait), so the warp's items cost one memory round trip
// instead of one each. The weighted sums go to part[pair][output] as in the item loop.
template <MoeWeightFormat F, bool kScaled, class Wait>
__device__ __forceinline__ void DownAllItems(const MoeGemvParams& p, int quads, int n_base,
                                             int64_t t, const __nv_bfloat16* __restrict__ inter,
                                             const uint8_t* __restrict__ w2,
                                             const float* __restrict__ scale,
                                             float (*part)[kMaxDownOutputs], Wait&& wait_once) {
  constexpr int kE = VecElems(F);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int pairs = p.pairs_per_token;
  const int items = quads * pairs;
  const bool has_vector = lane * kE < p.inter;
  int64_t e[kDownAllItemsMax];
#pragma unroll
  for (int it = 0; it < kDownAllItemsMax; ++it) {
    const int item = warp + it * kWarps;
    e[it] = item < items ? __ldcg(p.ids + t * pairs + item / quads) : 0;
  }
  uint4 raw[kDownAllItemsMax][kRowsPerWarp];
#pragma unroll
  for (int it = 0; it < kDownAllItemsMax; ++it) {
    const int item = warp + it * kWarps;
    if (item >= items || !has_vector) continue;
    const int n0 = n_base + (item % quads) * kRowsPerWarp;
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t n = min(n0 + r, p.hidden - 1);
      raw[it][r] = __ldg(
          reinterpret_cast<const uint4*>(w2 + (e[it] * p.hidden + n) * p.inter * ElemBytes(F)) +
          lane);
    }
  }
  wait_once();
#pragma unroll
  for (int it = 0; it < kDownAllItemsMax; ++it) {
    const int item = warp + it * kWarps;
    if (item >= items) break;
    const int j = item / quads;
    const int n0 = n_base + (item % quads) * kRowsPerWarp;
    const int64_t pair = t * pairs + j;
    const float* srow[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      srow[r] = DownScaleRow<F>(p, scale, e[it], min(n0 + r, p.hidden - 1));
    }
    float acc[kRowsPerWarp] = {};
    if (has_vector) {
      ConsumeVector<F, kRowsPerWarp, kScaled>(raw[it], srow, inter + pair * p.inter, lane * kE,
                                              acc);
    }
    StoreDownItem<F, kScaled>(acc, srow, p.weights[pair], &part[j][n0 - n_base]);
  }
}

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
  const int64_t t = blockIdx.y;
  const int n_base = static_cast<int>(blockIdx.x) * outputs;
  const int pairs = p.pairs_per_token;
  const int quads = outputs / kRowsPerWarp;
  bool waited = false;
  auto wait_once = [&waited] {
    if (!waited) {
      PdlBegin();
      waited = true;
    }
  };
  if constexpr (kUnroll == kDownAllItems) {
    DownAllItems<F, kScaled>(p, quads, n_base, t, inter, w2, scale, part, wait_once);
  } else {
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
        srow[r] = DownScaleRow<F>(p, scale, e, n);
      }
      float acc[kRowsPerWarp] = {};
      DotRows<F, kRowsPerWarp, kUnroll, kScaled>(w, srow, inter + pair * p.inter, 0, p.inter, acc,
                                                 wait_once);
      StoreDownItem<F, kScaled>(acc, srow, p.weights[pair], &part[j][n0 - n_base]);
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

// ---- FP8 weights on the tensor cores (kMoeGemvHalfMma, engine/cuda/fp8_mma_dot.cuh) ----

// Depth of each warp's weight ring (engine/cuda/fp8_mma_dot.cuh StepRing): steps of 1 KB per
// warp in flight, in shared memory rather than registers.
constexpr int kMmaStages = 6;
constexpr size_t kMmaRingBytes = size_t{kWarps} * kMmaStages * fp8_mma::kSlotBytes;
// Most activation elements a block stages as f16 (dynamic shared memory within the 48 KB a launch
// gets without opting in): H for gate/up, pairs x Im for down.
constexpr int kMmaMaxStaged = 20480;

bool MmaServesGateUp(const MoeGemvParams& p) {
  return IsFp8(p.format) && p.hidden % fp8_mma::kStepElems == 0 && p.hidden <= kMmaMaxStaged;
}
bool MmaServesDown(const MoeGemvParams& p) {
  return IsFp8(p.format) && p.inter % fp8_mma::kStepElems == 0 &&
         int64_t{p.pairs_per_token} * p.inter <= kMmaMaxStaged;
}

// grid (ceil(2 Im / (16 * groups)), pairs), groups = kWarps / k_splits groups of 16 interleaved
// rows (gate_i, up_i, gate_i+1, ...) per block; the k_splits warps of a group take consecutive
// step ranges of H and their sums meet in shared memory in split order. Dynamic shared memory:
// the pair's token row of x as f16 (H elements).
template <MoeWeightFormat F>
__global__ void __launch_bounds__(kWarps * 32)
    GateUpMmaKernel(MoeGemvParams p, int k_splits, const __nv_bfloat16* __restrict__ x,
                    const uint8_t* __restrict__ w13, const float* __restrict__ scale,
                    __nv_bfloat16* __restrict__ inter) {
  extern __shared__ uint4 gate_up_mma_smem[];
  uint8_t* rings = reinterpret_cast<uint8_t*>(gate_up_mma_smem);
  __half* xs = reinterpret_cast<__half*>(rings + kMmaRingBytes);
  __shared__ float scratch[32];
  __shared__ float part[kWarps][fp8_mma::kRows];
  __shared__ float vals[kWarps * fp8_mma::kRows];
  constexpr int kStep = fp8_mma::kStepElems;
  const int64_t pair = blockIdx.y;
  const int64_t token = pair / p.pairs_per_token;
  // x is the router's input: complete once the router got past its own wait, which it did
  // before this kernel could start (programmatic launch), so x is staged while the router runs.
  const float unscale = fp8_mma::StageScaledHalf(x + token * p.hidden, p.hidden, xs, scratch);
  PdlBegin();  // the expert ids come from the router, the preceding kernel
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int groups = kWarps / k_splits;
  const int group = warp % groups;
  const int split = warp / groups;
  // Through L2: with programmatic launch this kernel started before the router wrote the ids,
  // and an L1 line of an earlier layer's ids may still be there.
  const int64_t e = __ldcg(p.ids + pair);
  const int rows = 2 * p.inter;
  const int block_rows = groups * fp8_mma::kRows;
  const int n0 = static_cast<int>(blockIdx.x) * block_rows + group * fp8_mma::kRows;
  const int steps = p.hidden / kStep;
  const int per_split = (steps + k_splits - 1) / k_splits;
  const int s_begin = min(steps, split * per_split);
  const int s_end = n0 < rows ? min(steps, s_begin + per_split) : s_begin;
  // Rows past the end re-read the last row; their sums are never stored.
  const int ng = min(n0 + g, rows - 1);
  const int ng8 = min(n0 + g + 8, rows - 1);
  const uint8_t* wg = w13 + (e * rows + ng) * p.hidden;
  const uint8_t* wg8 = w13 + (e * rows + ng8) * p.hidden;
  // Block scales: rows g and g + 8 are both gate or both up rows, of one 128-row block.
  const float* srow =
      F == MoeWeightFormat::kFp8Block ? W13BlockScaleRow(scale, e, ng, p.hidden, p.inter) : nullptr;
  fp8_mma::StepRing<kMmaStages> ring(rings + warp * (kMmaStages * fp8_mma::kSlotBytes));
  fp8_mma::PrimeSteps(ring, wg, wg8, s_begin, s_end);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  fp8_mma::StreamSteps<F == MoeWeightFormat::kFp8Block>(
      ring, wg, wg8, s_begin, s_end, xs, acc,
      [&](int st) { return __ldg(srow + st * kStep / 128); });
  fp8_mma::StoreColumn0(part[warp], acc[0], acc[2]);
  __syncthreads();
  const int t = threadIdx.x;
  const int n = static_cast<int>(blockIdx.x) * block_rows + t;
  if (t < block_rows) {
    float v = 0.f;
    for (int sp = 0; sp < k_splits; ++sp) {
      v += part[t / fp8_mma::kRows + sp * groups][t % fp8_mma::kRows];
    }
    v *= unscale;
    if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
      v *= __ldg(scale + e * rows + min(n, rows - 1));
    }
    vals[t] = v;
  }
  __syncthreads();
  const int i = static_cast<int>(blockIdx.x) * (block_rows / 2) + t;
  if (t < block_rows / 2 && i < p.inter) {
    const float gate = vals[2 * t];
    const float up = vals[2 * t + 1];
    inter[pair * p.inter + i] = __float2bfloat16(gate / (1.f + expf(-gate)) * up);
  }
}

// grid (ceil(H / 16), tokens): a block's 16 hidden columns for every pair of its token. Its warps
// split the sequence of (pair, 64-element step of Im) evenly; each sums weight * (channel scale)
// * dot over its steps in pair order, and the warps' sums meet in shared memory in warp order
// (+ the addend). Dynamic shared memory: the warps' weight rings (StepRing), then the token's P
// intermediate rows as f16 (one power-of-two scale for all). The expert ids and routing weights
// come from the router, which completed before the gate/up kernel got past its own wait: the first
// weight loads are issued before waiting for gate/up (programmatic launch), with the ids read
// through L2.
template <MoeWeightFormat F, class T>
__global__ void __launch_bounds__(kWarps * 32)
    DownMmaKernel(MoeGemvParams p, const __nv_bfloat16* __restrict__ inter,
                  const uint8_t* __restrict__ w2, const float* __restrict__ scale,
                  const T* __restrict__ addend, T* __restrict__ out) {
  extern __shared__ uint4 down_mma_smem[];
  uint8_t* rings = reinterpret_cast<uint8_t*>(down_mma_smem);
  __half* xs = reinterpret_cast<__half*>(rings + kMmaRingBytes);
  __shared__ float scratch[32];
  __shared__ float part[kWarps][fp8_mma::kRows];
  __shared__ int64_t experts[kMoeMaxPairsPerToken];
  __shared__ float weights[kMoeMaxPairsPerToken];
  constexpr int kStep = fp8_mma::kStepElems;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int64_t t = blockIdx.y;
  const int pairs = p.pairs_per_token;
  if (static_cast<int>(threadIdx.x) < pairs) {
    experts[threadIdx.x] = __ldcg(p.ids + t * pairs + threadIdx.x);
    weights[threadIdx.x] = __ldcg(p.weights + t * pairs + threadIdx.x);
  }
  __syncthreads();
  const int n0 = static_cast<int>(blockIdx.x) * fp8_mma::kRows;
  const int ng = min(n0 + g, p.hidden - 1);
  const int ng8 = min(n0 + g + 8, p.hidden - 1);
  const int steps = p.inter / kStep;  // per pair
  const int total = pairs * steps;
  const int per_warp = (total + kWarps - 1) / kWarps;
  const int f_begin = min(total, warp * per_warp);
  const int f_end = min(total, f_begin + per_warp);
  // Row pointers of pair j at element 0.
  auto rows_of = [&](int j, const uint8_t*& a, const uint8_t*& b) {
    const int64_t e = experts[j];
    a = w2 + (e * p.hidden + ng) * p.inter;
    b = w2 + (e * p.hidden + ng8) * p.inter;
  };
  // Load cursor: pair lj, step ls (kMmaStages - 1 steps ahead of the consumer).
  int lj = f_begin / max(steps, 1);
  int ls = f_begin - lj * steps;
  const uint8_t* la = nullptr;
  const uint8_t* lb = nullptr;
  if (f_begin < f_end) rows_of(lj, la, lb);
  fp8_mma::StepRing<kMmaStages> ring(rings + warp * (kMmaStages * fp8_mma::kSlotBytes));
  auto push = [&](int f) {
    if (f >= f_end) {
      ring.PushEmpty();
      return;
    }
    ring.Push(la, lb, int64_t{ls} * kStep);
    if (++ls == steps) {
      ls = 0;
      if (++lj < pairs) rows_of(lj, la, lb);
    }
  };
#pragma unroll
  for (int i = 0; i < kMmaStages - 1; ++i) push(f_begin + i);
  PdlBegin();
  const float unscale =
      fp8_mma::StageScaledHalf(inter + t * pairs * p.inter, pairs * p.inter, xs, scratch);
  // Consumer cursor: pair cj, step cs; c sums the current pair.
  int cj = f_begin / max(steps, 1);
  int cs = f_begin - cj * steps;
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  float acc_g = 0.f;   // rows g (column 0 of the product: lanes with q == 0)
  float acc_g8 = 0.f;  // rows g + 8
  for (int f = f_begin; f < f_end; ++f) {
    push(f + kMmaStages - 1);
    const fp8_mma::StepBytes bytes = ring.Pop();
    const __half* xs_step = xs + cj * p.inter + cs * kStep;
    if constexpr (F == MoeWeightFormat::kFp8Block) {
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      fp8_mma::MmaStep(bytes, xs_step, d);
      const float sc =
          __ldg(W2BlockScaleRow(scale, experts[cj], ng, p.hidden, p.inter) + cs * kStep / 128);
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] = fmaf(sc, d[i], c[i]);
    } else {
      fp8_mma::MmaStep(bytes, xs_step, c);
    }
    if (++cs == steps || f + 1 == f_end) {
      // The pair's last step in this warp: its weighted sums join the warp's.
      float wg = weights[cj];
      float wg8 = wg;
      if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
        const int64_t base = experts[cj] * p.hidden;
        wg *= __ldg(scale + base + ng);
        wg8 *= __ldg(scale + base + ng8);
      }
      acc_g = fmaf(wg, c[0], acc_g);
      acc_g8 = fmaf(wg8, c[2], acc_g8);
#pragma unroll
      for (int i = 0; i < 4; ++i) c[i] = 0.f;
      cs = 0;
      ++cj;
    }
  }
  ring.Drain();
  fp8_mma::StoreColumn0(part[warp], acc_g, acc_g8);
  __syncthreads();
  const int n = n0 + static_cast<int>(threadIdx.x);
  if (static_cast<int>(threadIdx.x) >= fp8_mma::kRows || n >= p.hidden) return;
  float s = 0.f;
  for (int w = 0; w < kWarps; ++w) s += part[w][threadIdx.x];
  s *= unscale;
  if (addend != nullptr) s += ToFloat(addend[t * p.hidden + n]);
  Store(out + t * p.hidden + n, s);
}

// Whether GateUpSweepKernel serves a shape (H within its vectors per thread).
bool GateUpSweepServes(const MoeGemvParams& p) {
  return p.hidden / VecElems(p.format) <= kGateUpSweepMaxVecs * kWarps * 32;
}

// The sweep kernel's template for a format, dequantisation and vectors per thread.
template <MoeWeightFormat F, bool kScaled>
auto GateUpSweepFor(int vecs_per_thread) {
  switch (vecs_per_thread) {
    case 1:
      return GateUpSweepKernel<F, kScaled, 1>;
    case 2:
      return GateUpSweepKernel<F, kScaled, 2>;
    case 3:
      return GateUpSweepKernel<F, kScaled, 3>;
    default:
      return GateUpSweepKernel<F, kScaled, 4>;
  }
}

bool Valid(const MoeGemvParams& p) {
  return CheckMoeGemvTiling(p.tiling).ok() && p.tokens > 0 && p.pairs_per_token > 0 &&
         p.pairs_per_token <= kMoeMaxPairsPerToken &&
         MoeGemvSupports(p.format, p.hidden, p.inter) && p.tokens <= 65535 &&
         p.tokens * p.pairs_per_token <= 65535;
}

// The down kernel with `vectors` 16-byte vectors per row and lane in flight (1, 2 or 3), or
// every item of a warp in flight (kDownAllItems).
template <MoeWeightFormat F, class T, bool kScaled, class Launch>
void WithDownVectors(int vectors, Launch&& launch) {
  if (vectors == 1) {
    launch(DownKernel<F, 1, T, kScaled>);
  } else if (vectors == 2) {
    launch(DownKernel<F, 2, T, kScaled>);
  } else if (vectors == kDownAllItems) {
    launch(DownKernel<F, kDownAllItems, T, kScaled>);
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

// GateUpSweepKernel on a persistent grid: at most every SM's resident blocks, the items spread
// evenly over the passes.
cudaError_t LaunchGateUpSweep(const MoeGemvParams& p, const MoeGemvTiling& tiling,
                              const __nv_bfloat16* x, const uint8_t* w, const float* w13_scale,
                              __nv_bfloat16* inter, cudaStream_t stream) {
  const int threads = kWarps * 32;
  const int vecs_per_thread = (p.hidden / VecElems(p.format) + threads - 1) / threads;
  auto launch = [&](auto kernel) -> cudaError_t {
    int64_t slots = 0;
    if (const cudaError_t err = ResidentBlocks(kernel, threads, &slots); err != cudaSuccess) {
      return err;
    }
    const int64_t grid =
        BalancedPersistentGrid(p.tokens * p.pairs_per_token * ((p.inter + 1) / 2), slots);
    LaunchKernel(kernel, static_cast<unsigned>(grid), threads, 0, stream, p, x, w, w13_scale,
                 inter);
    return cudaGetLastError();
  };
  switch (p.format) {
    case MoeWeightFormat::kBf16:
      return launch(GateUpSweepFor<MoeWeightFormat::kBf16, false>(vecs_per_thread));
    case MoeWeightFormat::kFp8PerChannel: {
      cudaError_t err = cudaSuccess;
      WithDequant(tiling, [&](auto scaled) {
        err = launch(GateUpSweepFor<MoeWeightFormat::kFp8PerChannel, decltype(scaled)::value>(
            vecs_per_thread));
      });
      return err;
    }
    case MoeWeightFormat::kFp8Block: {
      cudaError_t err = cudaSuccess;
      WithDequant(tiling, [&](auto scaled) {
        err = launch(
            GateUpSweepFor<MoeWeightFormat::kFp8Block, decltype(scaled)::value>(vecs_per_thread));
      });
      return err;
    }
  }
  return cudaErrorInvalidValue;
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
  if (tiling.fp8_dequant == kMoeGemvHalfMma && MmaServesDown(p)) {
    const dim3 mma_grid(static_cast<unsigned>((p.hidden + fp8_mma::kRows - 1) / fp8_mma::kRows),
                        static_cast<unsigned>(p.tokens));
    const size_t smem =
        kMmaRingBytes + static_cast<size_t>(p.pairs_per_token) * p.inter * sizeof(__half);
    auto kernel = p.format == MoeWeightFormat::kFp8Block
                      ? DownMmaKernel<MoeWeightFormat::kFp8Block, T>
                      : DownMmaKernel<MoeWeightFormat::kFp8PerChannel, T>;
    if (const cudaError_t err = AllowDynamicSmem(kernel, smem); err != cudaSuccess) return err;
    LaunchKernel(kernel, mma_grid, kWarps * 32, smem, stream, p, inter, w, w2_scale, addend, out);
    return cudaGetLastError();
  }
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
  // Every item in flight needs rows of one vector per lane; other shapes keep one vector.
  if (t.down_vectors == kDownAllItems && !DownAllItemsServes(p, t.down_outputs)) {
    t.down_vectors = 1;
  }
  if (t.fp8_dequant <= 0) t.fp8_dequant = kMoeGemvFp8DequantDefault;
  return t;
}

MoeGemvTiling MoeGemvEffectiveTiling(const MoeGemvParams& p) {
  MoeGemvTiling t = MoeGemvResolveTiling(p);
  if (!IsFp8(p.format)) t.fp8_dequant = kMoeGemvHardwareConvert;
  const bool mma = t.fp8_dequant == kMoeGemvHalfMma;
  const bool mma_gate_up = mma && MmaServesGateUp(p);
  const bool mma_down = mma && MmaServesDown(p);
  if (mma && !mma_gate_up && !mma_down) t.fp8_dequant = kMoeGemvHardwareConvert;
  if (mma_gate_up || !GateUpSweepServes(p)) t.gate_up_sweep = 0;
  if (t.gate_up_sweep == 1) t.gate_up_k_splits = 1;
  if (mma_down) {
    t.down_outputs = 16;
    t.down_vectors = 1;
  }
  return t;
}

bool SameMoeGemvTiling(const MoeGemvTiling& a, const MoeGemvTiling& b) {
  return a.gate_up_k_splits == b.gate_up_k_splits && a.down_outputs == b.down_outputs &&
         a.down_vectors == b.down_vectors && a.fp8_dequant == b.fp8_dequant &&
         a.gate_up_sweep == b.gate_up_sweep;
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
  if (tiling.fp8_dequant == kMoeGemvHalfMma && MmaServesGateUp(p)) {
    const int block_rows = kWarps / k_splits * fp8_mma::kRows;
    const dim3 mma_grid(static_cast<unsigned>((2 * p.inter + block_rows - 1) / block_rows),
                        static_cast<unsigned>(p.tokens * p.pairs_per_token));
    const size_t smem = kMmaRingBytes + static_cast<size_t>(p.hidden) * sizeof(__half);
    auto kernel = p.format == MoeWeightFormat::kFp8Block
                      ? GateUpMmaKernel<MoeWeightFormat::kFp8Block>
                      : GateUpMmaKernel<MoeWeightFormat::kFp8PerChannel>;
    if (const cudaError_t err = AllowDynamicSmem(kernel, smem); err != cudaSuccess) return err;
    LaunchKernel(kernel, mma_grid, kWarps * 32, smem, stream, p, k_splits, x, w, w13_scale, inter);
    return cudaGetLastError();
  }
  if (tiling.gate_up_sweep == 1 && GateUpSweepServes(p)) {
    return LaunchGateUpSweep(p, tiling, x, w, w13_scale, inter, stream);
  }
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
