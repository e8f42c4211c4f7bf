#include "engine/cuda/gemv.h"

#include <algorithm>
#include <atomic>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/fp8_mma_dot.cuh"
#include "engine/cuda/kernel_smem.h"
#include "engine/cuda/persistent_grid.h"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

constexpr int kWarps = 8;

// One 16-byte weight vector: 8 BF16 or 16 FP8 elements.
template <WeightType T>
struct Vec;
template <>
struct Vec<WeightType::kBF16> {
  static constexpr int kElems = 8;
};
template <>
struct Vec<WeightType::kFP8> {
  static constexpr int kElems = 16;
};

template <WeightType T, int MT>
__global__ void __launch_bounds__(kWarps * 32)
    GemvKernel(DeviceLinear w, const __nv_bfloat16* __restrict__ x, int rows, int64_t k_chunk,
               float* __restrict__ partial, float* __restrict__ y, const float* __restrict__ bias,
               int k_splits) {
  PdlBegin();
  constexpr int kE = Vec<T>::kElems;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarps + warp;
  if (n >= w.out) return;
  const int64_t k_begin = blockIdx.y * k_chunk;
  const int64_t k_end = min(w.in, k_begin + k_chunk);
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.f;
  float channel_scale = 1.f;
  if (T == WeightType::kFP8 && w.scale_kind == WeightScale::kPerChannel) channel_scale = w.scale[n];
  const int64_t kb = (w.block_k > 0 ? (w.in + w.block_k - 1) / w.block_k : 0);
  const uint8_t* row_bytes =
      static_cast<const uint8_t*>(w.data) + n * w.in * (T == WeightType::kBF16 ? 2 : 1);
  // One 16-byte weight vector at element k0: dequantised and multiplied into every row.
  auto consume = [&](const uint4& raw, int64_t k0) {
    float wv[kE];
    if constexpr (T == WeightType::kBF16) {
      const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; ++e) wv[e] = __bfloat162float(b[e]);
    } else {
      const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
      // Per-channel scales are applied once at the end; block scales per 16-element vector.
      const float s = w.scale_kind == WeightScale::kBlock
                          ? w.scale[(n / w.block_n) * kb + k0 / w.block_k]
                          : 1.f;
#pragma unroll
      for (int e = 0; e < kE / 2; ++e) {
        const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
        wv[2 * e] = f.x * s;
        wv[2 * e + 1] = f.y * s;
      }
    }
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      if (m < rows) {
        const __nv_bfloat16* xr = x + static_cast<int64_t>(m) * w.in + k0;
#pragma unroll
        for (int h = 0; h < kE; h += 8) {
          float xv[8];
          LoadX8(xr + h, xv);
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[m] = fmaf(wv[h + e], xv[e], acc[m]);
        }
      }
    }
  };
  // kUnroll weight vectors per lane are loaded before any is consumed, so each warp keeps
  // several 16-byte loads in flight (one at a time leaves the memory system under-occupied).
  constexpr int kUnroll = 4;
  constexpr int64_t kStride = 32 * kE;
  const uint4* wrow = reinterpret_cast<const uint4*>(row_bytes);
  const int64_t elems_per_vec = kE;
  int64_t k0 = k_begin + static_cast<int64_t>(lane) * kE;
  for (; k0 + (kUnroll - 1) * kStride < k_end; k0 += kUnroll * kStride) {
    uint4 raw[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) raw[u] = __ldg(wrow + (k0 + u * kStride) / elems_per_vec);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) consume(raw[u], k0 + u * kStride);
  }
  for (; k0 < k_end; k0 += kStride) consume(__ldg(wrow + k0 / elems_per_vec), k0);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= rows) break;
    const float v = WarpSum(acc[m]) * channel_scale;
    if (lane == 0) {
      if (k_splits == 1) {
        y[static_cast<int64_t>(m) * w.out + n] = v + (bias ? bias[n] : 0.f);
      } else {
        partial[(static_cast<int64_t>(blockIdx.y) * rows + m) * w.out + n] = v;
      }
    }
  }
}

// One activation row against FP8 weights (decode at batch 1): each warp computes kRowsPerWarp
// consecutive outputs, so a lane converts its 16 activations once for kRowsPerWarp weight vectors
// (loaded together: kRowsPerWarp x kUnrollK 16-byte loads in flight per lane). The per-channel
// scale is applied once per output, a block scale once per 16-element vector. The generic kernel
// spends most of its instructions per weight byte on activation conversions and the scale.
constexpr int kRowsPerWarp = 4;

// The in-kernel reduction of a split one-row GEMV: after every thread of the block has stored its
// partials ([k_splits, out]), the last block of the output range [blockIdx.x * outputs, + outputs)
// to arrive sums the splits in split order (+ bias) into y and resets its counter. Every thread
// of the block calls it.
__device__ __forceinline__ void ReduceSplitsInKernel(const float* __restrict__ partial,
                                                     float* __restrict__ y,
                                                     const float* __restrict__ bias, int64_t out,
                                                     int k_splits, int32_t* __restrict__ counters,
                                                     int outputs) {
  __shared__ bool last;
  __threadfence();  // this block's partials, visible before its arrival is counted
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counters + blockIdx.x, 1) == k_splits - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < outputs; i += blockDim.x) {
    const int64_t n = static_cast<int64_t>(blockIdx.x) * outputs + i;
    if (n < out) {
      float s = 0.f;
      for (int k = 0; k < k_splits; ++k) s += __ldcg(partial + k * out + n);
      y[n] = s + (bias ? bias[n] : 0.f);
    }
  }
  if (threadIdx.x == 0) counters[blockIdx.x] = 0;
}

// With k_splits > 1 and `counters` (one per output block, zero on entry and exit), the last
// block of an output range to finish sums the splits' partials in split order (the result of
// ReduceKernel, without its launch); otherwise ReduceKernel does.
template <bool kBlock, bool kScaled>
__global__ void __launch_bounds__(kWarps * 32)
    GemvFp8OneRowKernel(DeviceLinear w, const __nv_bfloat16* __restrict__ x, int64_t k_chunk,
                        float* __restrict__ partial, float* __restrict__ y,
                        const float* __restrict__ bias, int k_splits,
                        int32_t* __restrict__ counters) {
  // Two vectors per row in flight per lane: measured faster on an H100 than four (which
  // doubles the registers and halves the resident blocks).
  constexpr int kUnrollK = 2;
  constexpr int64_t kStride = 32 * 16;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kRowsPerWarp;
  const bool block_reduce = k_splits > 1 && counters != nullptr;
  // Warps past the last output skip the work but stay for the block's reduction barrier.
  if (n0 >= w.out && !block_reduce) return;
  const int64_t k_begin = blockIdx.y * k_chunk;
  const int64_t k_end = n0 < w.out ? min(w.in, k_begin + k_chunk) : k_begin;
  const int64_t kb = kBlock ? (w.in + w.block_k - 1) / w.block_k : 0;
  const uint4* wrows[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    // Rows past the end re-read the last row; their sums are never stored.
    const int64_t n = min(n0 + r, w.out - 1);
    wrows[r] = reinterpret_cast<const uint4*>(static_cast<const uint8_t*>(w.data) + n * w.in);
  }
  float acc[kRowsPerWarp];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) acc[r] = 0.f;

  auto consume = [&](const uint4(&raw)[kRowsPerWarp], int64_t k0) {
    float xv[16];
    LoadX8(x + k0, xv);
    LoadX8(x + k0 + 8, xv + 8);
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      float d = 0.f;
      float& a = kBlock ? d : acc[r];
      Fp8x16Dot<kScaled>(raw[r], xv, a);
      if constexpr (kBlock) {
        const int64_t n = min(n0 + r, w.out - 1);
        acc[r] = fmaf(__ldg(w.scale + (n / w.block_n) * kb + k0 / w.block_k),
                      Fp8DotValue<kScaled>(d), acc[r]);
      }
    }
  };
  int64_t k0 = k_begin + static_cast<int64_t>(lane) * 16;
  uint4 raw[kUnrollK][kRowsPerWarp];
  auto load = [&](int64_t k) {
#pragma unroll
    for (int u = 0; u < kUnrollK; ++u)
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) raw[u][r] = __ldg(wrows[r] + (k + u * kStride) / 16);
  };
  // Weights do not come from the preceding kernels: with programmatic dependent launch the
  // first loads are in flight while those finish; x is read only after the wait.
  bool loaded = k0 + (kUnrollK - 1) * kStride < k_end;
  if (loaded) load(k0);
  PdlBegin();
  for (; k0 + (kUnrollK - 1) * kStride < k_end; k0 += kUnrollK * kStride) {
    if (!loaded) load(k0);
    loaded = false;
#pragma unroll
    for (int u = 0; u < kUnrollK; ++u) consume(raw[u], k0 + u * kStride);
  }
  for (; k0 < k_end; k0 += kStride) {
    uint4 raw1[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) raw1[r] = __ldg(wrows[r] + k0 / 16);
    consume(raw1, k0);
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t n = n0 + r;
    float v = WarpSum(acc[r]);
    if (lane != 0 || n >= w.out) continue;
    if (!kBlock) v = Fp8DotValue<kScaled>(v) * w.scale[n];
    if (k_splits == 1) {
      y[n] = v + (bias ? bias[n] : 0.f);
    } else {
      partial[static_cast<int64_t>(blockIdx.y) * w.out + n] = v;
    }
  }
  if (!block_reduce) return;
  ReduceSplitsInKernel(partial, y, bias, w.out, k_splits, counters, kWarps * kRowsPerWarp);
}

// One activation row against FP8 weights with whole rows per block (Fp8Dequant::kConvertSweep):
// a pass of a block takes kSweepRows consecutive rows, its 256 threads splitting each row's K
// (thread t: 16-byte vectors t, t + 256, ...), and the grid is persistent: pass p of block b takes
// row group b + p * gridDim.x, so at any time the blocks read one compact stretch of the weights
// (as a copy kernel does) instead of every row at once, with no K splits and no partial sums.
// Sums: per thread in vector order, then warps (shuffles) and the block's warps in warp order;
// per-channel scales once per output, block scales per vector. K <= kSweepVecs * 256 * 16.
constexpr int kSweepRows = 4;
constexpr int kSweepMaxVecs = 4;

template <bool kBlock, int kVecs>
__global__ void __launch_bounds__(kWarps * 32)
    GemvFp8SweepKernel(DeviceLinear w, const __nv_bfloat16* __restrict__ x,
                       const float* __restrict__ bias, float* __restrict__ y) {
  constexpr int kThreads = kWarps * 32;
  const int64_t vecs = w.in / 16;
  const int64_t groups = (w.out + kSweepRows - 1) / kSweepRows;
  const int64_t kb = kBlock ? (w.in + w.block_k - 1) / w.block_k : 0;
  __shared__ float part[2][kWarps][kSweepRows];
  const uint8_t* base = static_cast<const uint8_t*>(w.data);
  uint4 raw[kSweepRows][kVecs];
  auto load = [&](int64_t group) {
#pragma unroll
    for (int r = 0; r < kSweepRows; ++r) {
      // Rows past the end re-read the last row; their sums are never stored.
      const int64_t n = min(group * kSweepRows + r, w.out - 1);
      const uint4* row = reinterpret_cast<const uint4*>(base + n * w.in);
#pragma unroll
      for (int i = 0; i < kVecs; ++i) {
        const int64_t v = threadIdx.x + int64_t{i} * kThreads;
        if (v < vecs) raw[r][i] = __ldg(row + v);
      }
    }
  };
  int64_t group = blockIdx.x;
  // Weights do not come from the preceding kernels: the first pass's loads are in flight before
  // the programmatic wait; x is read after it.
  if (group < groups) load(group);
  PdlBegin();
  for (int pass = 0; group < groups; ++pass, group += gridDim.x) {
    if (pass > 0) load(group);
    float acc[kSweepRows];
#pragma unroll
    for (int r = 0; r < kSweepRows; ++r) acc[r] = 0.f;
#pragma unroll
    for (int i = 0; i < kVecs; ++i) {
      const int64_t v = threadIdx.x + int64_t{i} * kThreads;
      if (v >= vecs) break;
      float xv[16];
      LoadX8(x + v * 16, xv);
      LoadX8(x + v * 16 + 8, xv + 8);
#pragma unroll
      for (int r = 0; r < kSweepRows; ++r) {
        if constexpr (kBlock) {
          float d = 0.f;
          Fp8x16Dot<false>(raw[r][i], xv, d);
          const int64_t n = min(group * kSweepRows + r, w.out - 1);
          acc[r] = fmaf(__ldg(w.scale + (n / w.block_n) * kb + v * 16 / w.block_k), d, acc[r]);
        } else {
          Fp8x16Dot<false>(raw[r][i], xv, acc[r]);
        }
      }
    }
    float(&slot)[kWarps][kSweepRows] = part[pass & 1];
    WarpSumsToShared(acc, slot);
    if (threadIdx.x < kSweepRows) {
      const int64_t n = group * kSweepRows + threadIdx.x;
      if (n < w.out) {
        float v = 0.f;
        for (int wi = 0; wi < kWarps; ++wi) v += slot[wi][threadIdx.x];
        if (!kBlock) v *= w.scale[n];
        y[n] = v + (bias ? bias[n] : 0.f);
      }
    }
  }
}

// One activation row against FP8 weights on the tensor cores (Fp8Dequant::kHalfMma,
// engine/cuda/fp8_mma_dot.cuh). grid (ceil(out / (16 * groups)), k_splits), kWarps warps forming
// groups = kWarps / slices row groups of 16 rows; the `slices` warps of a group take consecutive
// step ranges of the block's K chunk and their sums meet in shared memory in slice order.
// The weights stream through a ring of kMmaStages steps per warp in shared memory filled by
// cp.async (bytes in flight without registers: a register-bound GEMV is latency-bound on an
// H100), the first kMmaStages - 1 steps before the programmatic wait (weights do not come from
// the preceding kernels). Dynamic shared memory: the rings, then the K chunk as f16.
// Ring depths compiled (Gemv's mma_stages); the default.
constexpr int kMmaStagesDefault = 6;
constexpr int RingBytes(int stages) { return kWarps * stages * fp8_mma::kSlotBytes; }
// Longest K chunk one block stages (f16 in dynamic shared memory); longer rows need K splits.
constexpr int64_t kMmaMaxChunk = 20480;

size_t MmaSmemBytes(int64_t k_chunk, int stages) {
  return RingBytes(stages) + static_cast<size_t>(k_chunk) * sizeof(__half);
}

template <bool kBlock, int kMmaStages>
__global__ void __launch_bounds__(kWarps * 32)
    GemvFp8MmaKernel(DeviceLinear w, const __nv_bfloat16* __restrict__ x, int64_t k_chunk,
                     int slices, float* __restrict__ partial, float* __restrict__ y,
                     const float* __restrict__ bias, int k_splits, int32_t* __restrict__ counters) {
  extern __shared__ uint4 gemv_mma_smem[];
  uint8_t* rings = reinterpret_cast<uint8_t*>(gemv_mma_smem);
  __half* xs = reinterpret_cast<__half*>(rings + RingBytes(kMmaStages));
  __shared__ float scratch[32];
  __shared__ float part[kWarps][fp8_mma::kRows];
  constexpr int kStep = fp8_mma::kStepElems;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int groups = kWarps / slices;
  const int group = warp % groups;
  const int slice = warp / groups;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * groups + group) * fp8_mma::kRows;
  const int64_t k_begin = blockIdx.y * k_chunk;
  const int k_len = static_cast<int>(min(w.in, k_begin + k_chunk) - k_begin);
  const int steps = k_len / kStep;
  const int per_slice = (steps + slices - 1) / slices;
  const int s_begin = min(steps, slice * per_slice);
  // Groups past the last output load nothing but stay for the block's barriers.
  const int s_end = n0 < w.out ? min(steps, s_begin + per_slice) : s_begin;
  // Rows past the end re-read the last row; their sums are never stored.
  const int64_t row_g = min(n0 + g, w.out - 1);
  const int64_t row_g8 = min(n0 + g + 8, w.out - 1);
  const uint8_t* wg = static_cast<const uint8_t*>(w.data) + row_g * w.in + k_begin;
  const uint8_t* wg8 = static_cast<const uint8_t*>(w.data) + row_g8 * w.in + k_begin;
  // Block scales: rows g and g + 8 share a block (block_n % 16 == 0, n0 % 16 == 0).
  const float* srow =
      kBlock ? w.scale + (row_g / w.block_n) * ((w.in + w.block_k - 1) / w.block_k) : nullptr;
  fp8_mma::StepRing<kMmaStages> ring(rings + warp * (kMmaStages * fp8_mma::kSlotBytes));
  fp8_mma::PrimeSteps(ring, wg, wg8, s_begin, s_end);
  PdlBegin();
  const float unscale = fp8_mma::StageScaledHalf(x + k_begin, k_len, xs, scratch);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  fp8_mma::StreamSteps<kBlock>(ring, wg, wg8, s_begin, s_end, xs, acc, [&](int st) {
    return __ldg(srow + (k_begin + int64_t{st} * kStep) / w.block_k);
  });
  fp8_mma::StoreColumn0(part[warp], acc[0], acc[2]);
  __syncthreads();
  const int outputs = groups * fp8_mma::kRows;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * outputs + threadIdx.x;
  if (static_cast<int>(threadIdx.x) < outputs && n < w.out) {
    const int grp = threadIdx.x / fp8_mma::kRows;
    const int r = threadIdx.x % fp8_mma::kRows;
    float v = 0.f;
    for (int sl = 0; sl < slices; ++sl) v += part[grp + sl * groups][r];
    v *= unscale;
    if (!kBlock) v *= w.scale[n];
    if (k_splits == 1) {
      y[n] = v + (bias ? bias[n] : 0.f);
    } else {
      partial[static_cast<int64_t>(blockIdx.y) * w.out + n] = v;
    }
  }
  if (k_splits > 1 && counters != nullptr) {
    ReduceSplitsInKernel(partial, y, bias, w.out, k_splits, counters, outputs);
  }
}

__global__ void ReduceKernel(const float* __restrict__ partial, int k_splits, int64_t count,
                             int64_t out, const float* __restrict__ bias, float* __restrict__ y) {
  PdlBegin();
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int k = 0; k < k_splits; ++k) s += partial[k * count + i];
    if (bias) s += bias[i % out];
    y[i] = s;
  }
}

// The K chunk of each split (whole 16-byte vectors or tensor-core steps, whole scale blocks) and
// the splits that remain after rounding.
struct Chunking {
  int64_t k_chunk;
  int splits;
};
Chunking GemvChunking(const DeviceLinear& w, int k_splits, bool mma) {
  const int64_t elems = mma ? fp8_mma::kStepElems : w.type == WeightType::kBF16 ? 8 : 16;
  int64_t k_chunk = (w.in + k_splits - 1) / k_splits;
  k_chunk = (k_chunk + elems - 1) / elems * elems;
  if (w.type == WeightType::kFP8 && w.scale_kind == WeightScale::kBlock) {
    k_chunk = (k_chunk + w.block_k - 1) / w.block_k * w.block_k;
  }
  return {k_chunk, static_cast<int>((w.in + k_chunk - 1) / k_chunk)};
}

// Whether the row-sweep kernel serves this weight (K within its vectors per thread).
bool SweepLayout(const DeviceLinear& w) {
  return w.type == WeightType::kFP8 && w.in / 16 <= int64_t{kSweepMaxVecs} * kWarps * 32 &&
         (w.scale_kind == WeightScale::kPerChannel || w.scale_kind == WeightScale::kBlock);
}

// Whether the tensor-core kernel serves this weight's layout (any K split on top).
bool MmaLayout(const DeviceLinear& w) {
  if (w.type != WeightType::kFP8 || w.in % fp8_mma::kStepElems != 0) return false;
  if (w.scale_kind == WeightScale::kBlock) {
    return w.block_k % fp8_mma::kStepElems == 0 && w.block_n % fp8_mma::kRows == 0;
  }
  return w.scale_kind == WeightScale::kPerChannel;
}

// An attribute of the current device, asked once per process (`fallback` when the query fails).
int CachedDeviceAttribute(std::atomic<int>& cached, cudaDeviceAttr attr, int fallback) {
  if (const int known = cached.load(std::memory_order_relaxed); known > 0) return known;
  int device = 0;
  int value = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&value, attr, device) != cudaSuccess || value <= 0) {
    return fallback;
  }
  cached.store(value, std::memory_order_relaxed);
  return value;
}

// Shared memory one block may opt in to (101,376 bytes less the static use on GB10).
int DeviceSmemOptin() {
  static std::atomic<int> cached{0};
  return CachedDeviceAttribute(cached, cudaDevAttrMaxSharedMemoryPerBlockOptin, 48 * 1024);
}

// How Gemv runs a weight: the kernel, its outputs per block and the K chunking.
struct Plan {
  bool sweep = false;              // GemvFp8SweepKernel (one K chunk, persistent grid)
  bool mma = false;                // GemvFp8MmaKernel
  int slices = 1;                  // its warps per row group
  int stages = kMmaStagesDefault;  // its weight ring depth
  int64_t per_block = kWarps;
  Chunking chunking{};
};

Plan MakePlan(const DeviceLinear& w, int rows, int k_splits, Fp8Dequant dequant, int mma_slices,
              int mma_stages = 0) {
  Plan plan;
  if (w.type == WeightType::kFP8 && rows <= 1 && dequant == Fp8Dequant::kHalfMma && MmaLayout(w)) {
    const Chunking c = GemvChunking(w, k_splits, true);
    const int stages = mma_stages > 0 ? mma_stages : kMmaStagesDefault;
    // The rings and the staged chunk within what a block may opt in to (GB10: 99 KB), with room
    // for the kernel's static arrays.
    const bool fits =
        static_cast<int64_t>(MmaSmemBytes(c.k_chunk, stages)) + 1024 <= int64_t{DeviceSmemOptin()};
    if (c.k_chunk <= kMmaMaxChunk && fits) {
      plan.mma = true;
      plan.slices = mma_slices > 0 ? mma_slices : kGemvMmaSlicesDefault;
      plan.stages = stages;
      plan.per_block = int64_t{kWarps} / plan.slices * fp8_mma::kRows;
      plan.chunking = c;
      return plan;
    }
  }
  if (w.type == WeightType::kFP8 && rows <= 1 && dequant == Fp8Dequant::kConvertSweep &&
      SweepLayout(w)) {
    plan.sweep = true;
    plan.per_block = kSweepRows;
    plan.chunking = {w.in, 1};
    return plan;
  }
  // Outputs one block computes: kRowsPerWarp per warp for one row of FP8 activations
  // (GemvFp8OneRowKernel), one per warp otherwise (GemvKernel).
  plan.per_block =
      w.type == WeightType::kFP8 && rows <= 1 ? int64_t{kWarps} * kRowsPerWarp : int64_t{kWarps};
  plan.chunking = GemvChunking(w, k_splits, false);
  return plan;
}

using OneRowKernelFn = void (*)(DeviceLinear, const __nv_bfloat16*, int64_t, float*, float*,
                                const float*, int, int32_t*);

// The one-row FP8 CUDA-core kernel for a weight's scales and a dequantisation.
OneRowKernelFn OneRowKernel(const DeviceLinear& w, Fp8Dequant dequant) {
  const bool scaled = dequant == Fp8Dequant::kScaledBits;
  if (w.scale_kind == WeightScale::kBlock) {
    return scaled ? GemvFp8OneRowKernel<true, true> : GemvFp8OneRowKernel<true, false>;
  }
  return scaled ? GemvFp8OneRowKernel<false, true> : GemvFp8OneRowKernel<false, false>;
}

using MmaKernelFn = void (*)(DeviceLinear, const __nv_bfloat16*, int64_t, int, float*, float*,
                             const float*, int, int32_t*);
// The tensor-core kernel for a weight's scales and a ring depth (4, 6 or 8 steps).
MmaKernelFn MmaKernel(const DeviceLinear& w, int stages) {
  const bool block = w.scale_kind == WeightScale::kBlock;
  switch (stages) {
    case 4:
      return block ? GemvFp8MmaKernel<true, 4> : GemvFp8MmaKernel<false, 4>;
    case 8:
      return block ? GemvFp8MmaKernel<true, 8> : GemvFp8MmaKernel<false, 8>;
    default:
      return block ? GemvFp8MmaKernel<true, 6> : GemvFp8MmaKernel<false, 6>;
  }
}

using SweepKernelFn = void (*)(DeviceLinear, const __nv_bfloat16*, const float*, float*);
// The row-sweep kernel for a weight's scales and its vectors per thread.
SweepKernelFn SweepKernel(const DeviceLinear& w) {
  const int64_t per_thread = (w.in / 16 + kWarps * 32 - 1) / (kWarps * 32);
  const bool block = w.scale_kind == WeightScale::kBlock;
  switch (per_thread) {
    case 1:
      return block ? GemvFp8SweepKernel<true, 1> : GemvFp8SweepKernel<false, 1>;
    case 2:
      return block ? GemvFp8SweepKernel<true, 2> : GemvFp8SweepKernel<false, 2>;
    case 3:
      return block ? GemvFp8SweepKernel<true, 3> : GemvFp8SweepKernel<false, 3>;
    default:
      return block ? GemvFp8SweepKernel<true, 4> : GemvFp8SweepKernel<false, 4>;
  }
}

// The row-sweep kernel's persistent grid: every multiprocessor's resident blocks at most, the row
// groups spread evenly over the passes.
int64_t SweepGrid(const DeviceLinear& w) {
  int64_t slots = 0;
  if (ResidentBlocks(SweepKernel(w), kWarps * 32, &slots) != cudaSuccess || slots <= 0) {
    static std::atomic<int> sms{0};  // one block per multiprocessor
    slots = CachedDeviceAttribute(sms, cudaDevAttrMultiProcessorCount, 1);
  }
  return BalancedPersistentGrid((w.out + kSweepRows - 1) / kSweepRows, slots);
}

template <WeightType T>
cudaError_t LaunchRows(const DeviceLinear& w, const __nv_bfloat16* x, int rows, const Plan& plan,
                       float* partial, float* y, const float* bias, int32_t* counters,
                       Fp8Dequant dequant, cudaStream_t stream) {
  const unsigned threads = kWarps * 32;
  const int64_t k_chunk = plan.chunking.k_chunk;
  const int k_splits = plan.chunking.splits;
  const dim3 grid(static_cast<unsigned>((w.out + plan.per_block - 1) / plan.per_block),
                  static_cast<unsigned>(k_splits));
  if (plan.sweep) {
    LaunchKernel(SweepKernel(w), static_cast<unsigned>(SweepGrid(w)), threads, 0, stream, w, x,
                 bias, y);
  } else if (plan.mma) {
    const size_t smem = MmaSmemBytes(k_chunk, plan.stages);
    const MmaKernelFn kernel = MmaKernel(w, plan.stages);
    if (const cudaError_t err = AllowDynamicSmem(kernel, smem); err != cudaSuccess) return err;
    LaunchKernel(kernel, grid, threads, smem, stream, w, x, k_chunk, plan.slices, partial, y, bias,
                 k_splits, counters);
  } else if (rows <= 1) {
    if constexpr (T == WeightType::kFP8) {
      LaunchKernel(OneRowKernel(w, dequant), grid, threads, 0, stream, w, x, k_chunk, partial, y,
                   bias, k_splits, counters);
    } else {
      LaunchKernel(GemvKernel<T, 1>, grid, threads, 0, stream, w, x, rows, k_chunk, partial, y,
                   bias, k_splits);
    }
  } else if (rows <= 2) {
    LaunchKernel(GemvKernel<T, 2>, grid, threads, 0, stream, w, x, rows, k_chunk, partial, y, bias,
                 k_splits);
  } else if (rows <= 4) {
    LaunchKernel(GemvKernel<T, 4>, grid, threads, 0, stream, w, x, rows, k_chunk, partial, y, bias,
                 k_splits);
  } else if (rows <= 8) {
    LaunchKernel(GemvKernel<T, 8>, grid, threads, 0, stream, w, x, rows, k_chunk, partial, y, bias,
                 k_splits);
  } else {
    LaunchKernel(GemvKernel<T, 16>, grid, threads, 0, stream, w, x, rows, k_chunk, partial, y, bias,
                 k_splits);
  }
  return cudaGetLastError();
}

}  // namespace

bool GemvSupports(const DeviceLinear& w) {
  if (w.type == WeightType::kBF16) return w.in % 8 == 0;
  if (w.in % 16 != 0) return false;
  if (w.scale_kind == WeightScale::kBlock) return w.block_k % 16 == 0 && w.block_n > 0;
  return w.scale_kind == WeightScale::kPerChannel;
}

int GemvResidentBlocksPerSm(const DeviceLinear& w, int rows, Fp8Dequant dequant) {
  int blocks = 0;
  const int threads = kWarps * 32;
  cudaError_t err;
  if (w.type == WeightType::kFP8 && rows <= 1) {
    // The kernel that Gemv would launch for this weight, its occupancy asked once
    // (GemvKSplits runs for every one-row linear of an eager step).
    const void* kernel = nullptr;
    size_t smem = 0;
    if (dequant == Fp8Dequant::kConvertSweep && SweepLayout(w)) {
      kernel = reinterpret_cast<const void*>(SweepKernel(w));
    } else if (dequant == Fp8Dequant::kHalfMma && MmaLayout(w)) {
      // Shared memory of a 4,096-element chunk (the K splits keep chunks near that).
      kernel = reinterpret_cast<const void*>(MmaKernel(w, kMmaStagesDefault));
      smem = MmaSmemBytes(4096, kMmaStagesDefault);
    } else {
      kernel = reinterpret_cast<const void*>(OneRowKernel(w, dequant));
    }
    err = OccupancyPerSm(kernel, threads, smem, &blocks);
  } else if (w.type == WeightType::kFP8) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, GemvKernel<WeightType::kFP8, 16>,
                                                        threads, 0);
  } else {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, GemvKernel<WeightType::kBF16, 16>,
                                                        threads, 0);
  }
  return err == cudaSuccess ? blocks : 0;
}

int64_t GemvBlocks(const DeviceLinear& w, int rows, int k_splits, Fp8Dequant dequant,
                   int mma_slices) {
  const Plan plan = MakePlan(w, rows, k_splits, dequant, mma_slices);
  if (plan.sweep) return SweepGrid(w);
  return (w.out + plan.per_block - 1) / plan.per_block * plan.chunking.splits;
}

int GemvKSplits(const DeviceLinear& w, int sms, int rows, Fp8Dequant dequant) {
  const Plan one = MakePlan(w, rows, 1, dequant, 0);
  if (one.sweep) return 1;  // whole rows per block
  const int64_t ctas = (w.out + one.per_block - 1) / one.per_block;
  if (w.type == WeightType::kFP8 && rows <= 1) {
    // One row of FP8 (measured on an H100, 2026-12-07, at GLM-4.5-Air and GLM-4.7 tp=4 q/k/v and
    // o widths): more blocks than fit at once never paid, and neither did chunks of fewer than
    // 4,096 elements; within both, splitting a long row over otherwise idle SMs does (o_proj of
    // GLM-4.5-Air, K = 12,288: 3 splits, 9% faster than 1). The tensor-core kernel stages at
    // most kMmaMaxChunk elements per block.
    const int per_sm = std::max(1, GemvResidentBlocksPerSm(w, rows, dequant));
    const int64_t by_length = w.in / 4096;
    const int64_t by_room = int64_t{per_sm} * sms / std::max<int64_t>(1, ctas);
    const int64_t at_least = dequant == Fp8Dequant::kHalfMma && MmaLayout(w)
                                 ? (w.in + kMmaMaxChunk - 1) / kMmaMaxChunk
                                 : 1;
    return static_cast<int>(
        std::clamp<int64_t>(std::max(std::min(by_length, by_room), at_least), 1, 32));
  }
  const int64_t elems = w.type == WeightType::kBF16 ? 8 : 16;
  const int64_t step = 32 * elems * 4;  // at least four vectors per lane and split
  const int64_t max_splits = std::max<int64_t>(1, w.in / step);
  const int64_t want = (int64_t{4} * sms + ctas - 1) / ctas;
  return static_cast<int>(std::clamp<int64_t>(want, 1, std::min<int64_t>(max_splits, 32)));
}

cudaError_t Gemv(const DeviceLinear& w, const __nv_bfloat16* x, int rows, const float* bias,
                 int k_splits, float* partial, float* y, cudaStream_t stream, int32_t* counters,
                 int64_t num_counters, Fp8Dequant dequant, int mma_slices, int mma_stages) {
  if (rows <= 0 || w.out == 0) return cudaSuccess;
  if (rows > kGemvMaxRows || k_splits < 1 || !GemvSupports(w) ||
      (k_splits > 1 && partial == nullptr) ||
      (mma_slices != 0 && mma_slices != 1 && mma_slices != 2 && mma_slices != 4 &&
       mma_slices != 8) ||
      (mma_stages != 0 && mma_stages != 4 && mma_stages != 6 && mma_stages != 8)) {
    return cudaErrorInvalidValue;
  }
  const Plan plan = MakePlan(w, rows, k_splits, dequant, mma_slices, mma_stages);
  const int splits = plan.chunking.splits;
  // The one-row FP8 kernels reduce their splits themselves when there is a counter per output
  // block.
  const int64_t out_blocks = (w.out + plan.per_block - 1) / plan.per_block;
  const bool in_kernel = w.type == WeightType::kFP8 && rows <= 1 && splits > 1 &&
                         counters != nullptr && out_blocks <= num_counters;
  int32_t* used_counters = in_kernel ? counters : nullptr;
  cudaError_t err = w.type == WeightType::kBF16
                        ? LaunchRows<WeightType::kBF16>(w, x, rows, plan, partial, y, bias,
                                                        used_counters, dequant, stream)
                        : LaunchRows<WeightType::kFP8>(w, x, rows, plan, partial, y, bias,
                                                       used_counters, dequant, stream);
  if (err != cudaSuccess || splits == 1 || in_kernel) return err;
  const int64_t count = static_cast<int64_t>(rows) * w.out;
  const int64_t blocks = std::min<int64_t>((count + 255) / 256, 4096);
  LaunchKernel(ReduceKernel, static_cast<unsigned>(blocks), 256, 0, stream, partial, splits, count,
               w.out, bias, y);
  return cudaGetLastError();
}

}  // namespace spark::cuda
