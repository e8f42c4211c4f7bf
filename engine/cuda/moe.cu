#include "engine/cuda/moe.h"

#include <cuda_fp8.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_math.cuh"
#include "engine/cuda/moe_gemm.h"
#include "engine/cuda/moe_gemv.h"
#include "engine/cuda/moe_grouped.h"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {

struct MoeWorkspaceAccess;

namespace {

constexpr float kFp8Max = 448.0f;
constexpr float kAmaxFloor = 1e-10f;
constexpr int kMaxExpertsPerLane = 16;  // top-k kernel: E <= 512
constexpr int kMaxTopK = moe_internal::kMoeMaxPairsPerToken;
constexpr int kMaxGroups = 32;

// ---- Router ---------------------------------------------------------------------------------

// One block per (expert, TT tokens): 8 warps split H, fp32 sums reduced in a fixed order.
// logits[t, e] = Σ_h float(x[t,h]) * w[e,h]. The router weights do not come from the preceding
// kernels: each thread loads its first kHeld weight vectors (all of them for H <= 8192), then
// waits for the preceding kernels (programmatic launch), then reads x.
template <int TT>
__device__ __forceinline__ void RouterLogitsBlock(const __nv_bfloat16* __restrict__ x,
                                                  const float* __restrict__ w, int64_t tokens,
                                                  int experts, int hidden,
                                                  float* __restrict__ logits) {
  constexpr int kHeld = 8;
  constexpr int kStride = 256 * 4;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int e = blockIdx.x;
  const int64_t t0 = int64_t{blockIdx.y} * TT;
  __shared__ float partial[8][TT];
  float sum[TT];
#pragma unroll
  for (int i = 0; i < TT; ++i) sum[i] = 0.f;
  const float* wr = w + int64_t{e} * hidden;
  const int h0 = static_cast<int>(threadIdx.x) * 4;
  float4 held[kHeld];
#pragma unroll
  for (int j = 0; j < kHeld; ++j) {
    if (h0 + j * kStride < hidden)
      held[j] = __ldg(reinterpret_cast<const float4*>(wr + h0 + j * kStride));
  }
  PdlBegin();
  auto add = [&](const float4& wv, int h) {
#pragma unroll
    for (int i = 0; i < TT; ++i) {
      if (t0 + i < tokens) {
        const uint2 raw = __ldg(reinterpret_cast<const uint2*>(x + (t0 + i) * hidden + h));
        const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
        const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
        sum[i] += __low2float(a) * wv.x + __high2float(a) * wv.y + __low2float(b) * wv.z +
                  __high2float(b) * wv.w;
      }
    }
  };
#pragma unroll
  for (int j = 0; j < kHeld; ++j) {
    if (h0 + j * kStride < hidden) add(held[j], h0 + j * kStride);
  }
  for (int h = h0 + kHeld * kStride; h < hidden; h += kStride) {
    add(__ldg(reinterpret_cast<const float4*>(wr + h)), h);
  }
#pragma unroll
  for (int i = 0; i < TT; ++i) {
    float s = sum[i];
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) partial[warp][i] = s;
  }
  __syncthreads();
  if (threadIdx.x < TT && t0 + threadIdx.x < tokens) {
    float s = 0.f;
    for (int wi = 0; wi < 8; ++wi) s += partial[wi][threadIdx.x];
    logits[(t0 + threadIdx.x) * experts + e] = s;
  }
}

template <int TT>
__global__ void __launch_bounds__(256)
    RouterLogitsKernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w,
                       int64_t tokens, int experts, int hidden, float* __restrict__ logits) {
  RouterLogitsBlock<TT>(x, w, tokens, experts, hidden, logits);
}

struct TopKArgs {
  int experts, top_k, n_group, topk_group;
  int shared;  // shared expert slots appended to every token's row (ids experts.., weight 1)
  bool norm_topk_prob, softmax;
  float scaling;
};

// (value, index) max with ties to the lower index; carries a payload.
__device__ __forceinline__ void WarpArgMax(float& v, int& i, float& payload) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, off);
    const int oi = __shfl_xor_sync(0xffffffffu, i, off);
    const float op = __shfl_xor_sync(0xffffffffu, payload, off);
    if (oi >= 0 && (i < 0 || ov > v || (ov == v && oi < i))) {
      v = ov;
      i = oi;
      payload = op;
    }
  }
}

// The warp's per-token scratch in shared memory.
struct TopKScratch {
  float group_score[kMaxGroups];
  int sel_idx[kMaxTopK];
  float sel_score[kMaxTopK];
};

// One warp selects token t's experts: the exact selection of engine/cpu/kernels.h RouteToken.
// Each lane holds kPerLane experts (lane + 32 j): the smallest count that covers E keeps the
// selection loops short (4 for 128 experts). Logits are read through L2 (they may come from
// other blocks of the same kernel).
template <int kPerLane>
__device__ __forceinline__ void TopKWarp(const float* __restrict__ logits,
                                         const float* __restrict__ bias, int64_t t,
                                         const TopKArgs& a, int32_t* __restrict__ ids,
                                         float* __restrict__ weights, TopKScratch& scratch) {
  const int lane = threadIdx.x & 31;
  const float* l = logits + t * a.experts;
  float s[kPerLane], c[kPerLane];
  float mx = -INFINITY;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    s[j] = e < a.experts ? __ldcg(l + e) : -INFINITY;
    mx = fmaxf(mx, s[j]);
  }
  if (a.softmax) {
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    float sum = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      s[j] = e < a.experts ? expf(s[j] - mx) : 0.f;
      sum += s[j];
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) s[j] /= sum;
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) s[j] = 1.0f / (1.0f + expf(-s[j]));
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int e = lane + 32 * j;
    c[j] = e < a.experts ? (bias != nullptr ? s[j] + bias[e] : s[j]) : 0.f;
  }
  if (a.n_group > 1) {
    const int per = a.experts / a.n_group;
    const int take = per < 2 ? per : 2;
    for (int g = 0; g < a.n_group; ++g) {
      float total = 0.f;
      int first = -1;
      for (int r = 0; r < take; ++r) {
        float v = -INFINITY, pay = 0.f;
        int idx = -1;
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const int e = lane + 32 * j;
          if (e / per == g && e < a.experts && e != first &&
              (idx < 0 || c[j] > v || (c[j] == v && e < idx))) {
            v = c[j];
            idx = e;
            pay = c[j];
          }
        }
        WarpArgMax(v, idx, pay);
        first = idx;
        total += pay;
      }
      if (lane == 0) scratch.group_score[g] = total;
    }
    __syncwarp();
    unsigned keep_mask = 0;  // bit g: group kept
    for (int r = 0; r < a.topk_group; ++r) {
      float v = -INFINITY, pay = 0.f;
      int idx = -1;
      if (lane < a.n_group && !((keep_mask >> lane) & 1u)) {
        v = scratch.group_score[lane];
        idx = lane;
      }
      WarpArgMax(v, idx, pay);
      keep_mask |= 1u << idx;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < a.experts && !((keep_mask >> (e / per)) & 1u)) c[j] = 0.f;
    }
  }
  unsigned taken = 0;  // bit j: expert lane + 32 j selected
  for (int r = 0; r < a.top_k; ++r) {
    float v = -INFINITY, pay = 0.f;
    int idx = -1;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int e = lane + 32 * j;
      if (e < a.experts && !((taken >> j) & 1u) &&
          (idx < 0 || c[j] > v || (c[j] == v && e < idx))) {
        v = c[j];
        idx = e;
        pay = s[j];
      }
    }
    WarpArgMax(v, idx, pay);
    if ((idx & 31) == lane) taken |= 1u << (idx >> 5);
    if (lane == 0) {
      scratch.sel_idx[r] = idx;
      scratch.sel_score[r] = pay;
    }
  }
  __syncwarp();
  if (lane == 0) {
    int* si = scratch.sel_idx;
    float* ss = scratch.sel_score;
    for (int i = 1; i < a.top_k; ++i) {  // ascending expert index
      const int ki = si[i];
      const float ks = ss[i];
      int j = i - 1;
      while (j >= 0 && si[j] > ki) {
        si[j + 1] = si[j];
        ss[j + 1] = ss[j];
        --j;
      }
      si[j + 1] = ki;
      ss[j + 1] = ks;
    }
    float sum = 0.f;
    for (int i = 0; i < a.top_k; ++i) sum += ss[i];
    const float denom = sum + 1e-20f;
    const int64_t row = t * (a.top_k + a.shared);
    for (int i = 0; i < a.top_k; ++i) {
      float w = ss[i];
      if (a.norm_topk_prob) w = w / denom;
      ids[row + i] = si[i];
      weights[row + i] = w * a.scaling;
    }
    for (int i = 0; i < a.shared; ++i) {
      ids[row + a.top_k + i] = a.experts + i;
      weights[row + a.top_k + i] = 1.0f;
    }
  }
}

// One warp per token, four tokens per block.
template <int kPerLane>
__global__ void TopKKernel(const float* __restrict__ logits, const float* __restrict__ bias,
                           int64_t tokens, TopKArgs a, int32_t* __restrict__ ids,
                           float* __restrict__ weights) {
  PdlBegin();
  const int warp = threadIdx.x >> 5;
  const int64_t t = int64_t{blockIdx.x} * (blockDim.x / 32) + warp;
  __shared__ TopKScratch scratch[4];
  if (t < tokens) TopKWarp<kPerLane>(logits, bias, t, a, ids, weights, scratch[warp]);
}

// The whole block selects token t's experts at once for sigmoid scoring without expert groups
// (GLM-4): every expert's rank (the choices c greater than its own, ties to the lower index)
// comes from one pass over c in shared memory, the experts of rank < top_k take the output slots
// in ascending index order. The same choice and the same weights, bit for bit, as TopKWarp (the
// same score expressions, the selected scores summed in ascending index order), in a few hundred
// cycles instead of top_k rounds of warp reductions and a one-lane sort. Every thread of the
// block calls it; it ends with a barrier.
constexpr int kTopKBlockMaxExperts = kMaxExpertsPerLane * 32;

struct TopKBlockScratch {
  float score[kTopKBlockMaxExperts];
  float choice[kTopKBlockMaxExperts];
  unsigned chosen_mask[kTopKBlockMaxExperts / 32];  // bit e % 32 of word e / 32: chosen
  int selected[kMaxTopK];                           // expert ids, ascending
};

__device__ __forceinline__ bool TopKBlockSupports(const TopKArgs& a) {
  return !a.softmax && a.n_group <= 1 && a.experts <= kTopKBlockMaxExperts;
}

__device__ void TopKBlock(const float* __restrict__ logits, const float* __restrict__ bias,
                          int64_t t, const TopKArgs& a, int32_t* __restrict__ ids,
                          float* __restrict__ weights, TopKBlockScratch& sc) {
  const float* l = logits + t * a.experts;
  for (int e = threadIdx.x; e < a.experts; e += blockDim.x) {
    const float score = 1.0f / (1.0f + expf(-__ldcg(l + e)));
    sc.score[e] = score;
    sc.choice[e] = bias != nullptr ? score + bias[e] : score;
  }
  __syncthreads();
  // Whole warps cover [0, experts rounded up to 32), so every ballot has all its lanes.
  const int span = (a.experts + 31) & ~31;
  for (int e = threadIdx.x; e < span; e += blockDim.x) {
    bool chosen = false;
    if (e < a.experts) {
      const float c = sc.choice[e];
      int rank = 0;
      for (int j = 0; j < a.experts && rank < a.top_k; ++j) {
        const float o = sc.choice[j];
        rank += (o > c || (o == c && j < e)) ? 1 : 0;
      }
      chosen = rank < a.top_k;
    }
    const unsigned mask = __ballot_sync(0xffffffffu, chosen);
    if ((threadIdx.x & 31) == 0) sc.chosen_mask[e >> 5] = mask;
  }
  __syncthreads();
  for (int e = threadIdx.x; e < a.experts; e += blockDim.x) {
    const unsigned mask = sc.chosen_mask[e >> 5];
    if ((mask >> (e & 31)) & 1u) {
      int slot = __popc(mask & ((1u << (e & 31)) - 1u));
      for (int w = 0; w < (e >> 5); ++w) slot += __popc(sc.chosen_mask[w]);
      // Exactly top_k ranks are below top_k for finite choices; NaN logits must not write past.
      if (slot < a.top_k) sc.selected[slot] = e;
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.f;
    for (int i = 0; i < a.top_k; ++i) sum += sc.score[sc.selected[i]];
    const float denom = sum + 1e-20f;
    const int64_t row = t * (a.top_k + a.shared);
    for (int i = 0; i < a.top_k; ++i) {
      float w = sc.score[sc.selected[i]];
      if (a.norm_topk_prob) w = w / denom;
      ids[row + i] = sc.selected[i];
      weights[row + i] = w * a.scaling;
    }
    for (int i = 0; i < a.shared; ++i) {
      ids[row + a.top_k + i] = a.experts + i;
      weights[row + a.top_k + i] = 1.0f;
    }
  }
  __syncthreads();
}

// Router logits and top-k in one launch for up to kRouterTopKMaxTokens tokens: one block per
// expert computes its logits (RouterLogitsBlock), and the last block to finish (an arrival
// counter, zero on entry and left zero) selects every token's experts: the whole block per token
// where TopKBlock applies, else one warp per token.
constexpr int kRouterTopKMaxTokens = 8;

template <int kPerLane>
__global__ void __launch_bounds__(256)
    RouterTopKKernel(const __nv_bfloat16* __restrict__ x, const float* __restrict__ w,
                     int64_t tokens, int hidden, const float* __restrict__ bias, TopKArgs a,
                     float* __restrict__ logits, int32_t* __restrict__ counter,
                     int32_t* __restrict__ ids, float* __restrict__ weights) {
  RouterLogitsBlock<kRouterTopKMaxTokens>(x, w, tokens, a.experts, hidden, logits);
  __shared__ bool last;
  __threadfence();  // this block's logits, visible before its arrival is counted
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1) == static_cast<int>(gridDim.x) - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  if (TopKBlockSupports(a)) {
    __shared__ TopKBlockScratch block_scratch;
    for (int64_t t = 0; t < tokens; ++t) TopKBlock(logits, bias, t, a, ids, weights, block_scratch);
  } else {
    __shared__ TopKScratch scratch[kRouterTopKMaxTokens];
    const int warp = threadIdx.x >> 5;
    if (warp < tokens) TopKWarp<kPerLane>(logits, bias, warp, a, ids, weights, scratch[warp]);
  }
  if (threadIdx.x == 0) *counter = 0;
}

// ---- Permutation ------------------------------------------------------------------------------

// One block: pairs sorted by expert, each expert's segment padded to block_m rows (-1 = pad).
__global__ void PermuteKernel(const int32_t* __restrict__ ids, int pairs, int experts, int block_m,
                              int32_t* __restrict__ sorted_pairs,
                              int32_t* __restrict__ mblock_expert, int32_t* __restrict__ num_rows) {
  PdlBegin();
  extern __shared__ int perm_smem[];
  int* counts = perm_smem;          // [E]
  int* offsets = counts + experts;  // [E]
  int* cursor = offsets + experts;  // [E]
  __shared__ int total;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    counts[e] = 0;
    cursor[e] = 0;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) atomicAdd(&counts[ids[p]], 1);
  __syncthreads();
  if (threadIdx.x < 32) {
    const int lane = threadIdx.x;
    int carry = 0;
    for (int base = 0; base < experts; base += 32) {
      const int e = base + lane;
      const int padded = e < experts ? (counts[e] + block_m - 1) / block_m * block_m : 0;
      int incl = padded;
      for (int off = 1; off < 32; off <<= 1) {
        const int o = __shfl_up_sync(0xffffffffu, incl, off);
        if (lane >= off) incl += o;
      }
      if (e < experts) offsets[e] = carry + incl - padded;
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
    if (lane == 0) {
      total = carry;
      *num_rows = carry;
    }
  }
  __syncthreads();
  for (int r = threadIdx.x; r < total; r += blockDim.x) sorted_pairs[r] = -1;
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    const int padded = (counts[e] + block_m - 1) / block_m * block_m;
    for (int r = offsets[e]; r < offsets[e] + padded; r += block_m) mblock_expert[r / block_m] = e;
  }
  __syncthreads();
  for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
    const int e = ids[p];
    sorted_pairs[offsets[e] + atomicAdd(&cursor[e], 1)] = p;
  }
}

// ---- FP8 quantisation -----------------------------------------------------------------------

__device__ __forceinline__ uint8_t ToE4M3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}

__global__ void QuantRowKernel(const __nv_bfloat16* __restrict__ x, int64_t cols,
                               uint8_t* __restrict__ q, float* __restrict__ scales,
                               const int32_t* __restrict__ rows_device) {
  PdlBegin();
  const int64_t row = blockIdx.x;
  if (rows_device != nullptr && row >= *rows_device) return;
  const __nv_bfloat16* xr = x + row * cols;
  float amax = 0.f;
#pragma unroll 4
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    amax = fmaxf(amax, fabsf(__bfloat162float(xr[i])));
  __shared__ float warp_max[32];
  for (int off = 16; off > 0; off >>= 1)
    amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, off));
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = amax;
  __syncthreads();
  if (threadIdx.x < 32) {
    float m = threadIdx.x < (blockDim.x >> 5) ? warp_max[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threadIdx.x == 0) warp_max[0] = m;
  }
  __syncthreads();
  const float scale = fmaxf(warp_max[0], kAmaxFloor) / kFp8Max;
  if (threadIdx.x == 0) scales[row] = scale;
  uint8_t* qr = q + row * cols;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
    qr[i] = ToE4M3(__bfloat162float(xr[i]) / scale);
}

// One warp per 1x128 group.
__global__ void QuantGroupKernel(const __nv_bfloat16* __restrict__ x, int64_t rows, int64_t cols,
                                 uint8_t* __restrict__ q, float* __restrict__ scales,
                                 const int32_t* __restrict__ rows_device) {
  PdlBegin();
  const int lane = threadIdx.x & 31;
  const int64_t groups_per_row = cols / 128;
  const int64_t gid = int64_t{blockIdx.x} * (blockDim.x / 32) + (threadIdx.x >> 5);
  const int64_t row = gid / groups_per_row;
  if (row >= rows || (rows_device != nullptr && row >= *rows_device)) return;
  const int64_t off = row * cols + (gid % groups_per_row) * 128 + lane * 4;
  const uint2 raw = *reinterpret_cast<const uint2*>(x + off);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  const float v[4] = {__low2float(a), __high2float(a), __low2float(b), __high2float(b)};
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float scale = fmaxf(amax, kAmaxFloor) / kFp8Max;
  if (lane == 0) scales[gid] = scale;
  const uint32_t packed = uint32_t{ToE4M3(v[0] / scale)} | (uint32_t{ToE4M3(v[1] / scale)} << 8) |
                          (uint32_t{ToE4M3(v[2] / scale)} << 16) |
                          (uint32_t{ToE4M3(v[3] / scale)} << 24);
  *reinterpret_cast<uint32_t*>(q + off) = packed;
}

// ---- Combine ----------------------------------------------------------------------------------

__device__ __forceinline__ float4 Load4(const float* p) {
  return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ float4 Load4(const __nv_bfloat16* p) {
  const uint2 raw = *reinterpret_cast<const uint2*>(p);
  const __nv_bfloat162 a = *reinterpret_cast<const __nv_bfloat162*>(&raw.x);
  const __nv_bfloat162 b = *reinterpret_cast<const __nv_bfloat162*>(&raw.y);
  return make_float4(__low2float(a), __high2float(a), __low2float(b), __high2float(b));
}
__device__ __forceinline__ void Store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
__device__ __forceinline__ void Store4(__nv_bfloat16* p, float4 v) {
  __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y);
  __nv_bfloat162 b = __floats2bfloat162_rn(v.z, v.w);
  uint2 raw;
  raw.x = *reinterpret_cast<uint32_t*>(&a);
  raw.y = *reinterpret_cast<uint32_t*>(&b);
  *reinterpret_cast<uint2*>(p) = raw;
}

// out[t] = (Σ_j pair_out[t*k + j]) (+ addend[t]), j in ascending expert order.
template <class T>
__global__ void CombineKernel(const float* __restrict__ pair_out, int64_t tokens, int top_k,
                              int hidden, const T* __restrict__ addend, T* __restrict__ out) {
  PdlBegin();
  const int64_t quads = int64_t{hidden} / 4;
  const int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  if (i >= tokens * quads) return;
  const int64_t t = i / quads;
  const int64_t h = (i % quads) * 4;
  float4 sum = make_float4(0.f, 0.f, 0.f, 0.f);
  for (int j = 0; j < top_k; ++j) {
    const float4 v = Load4(pair_out + (t * top_k + j) * hidden + h);
    sum.x += v.x;
    sum.y += v.y;
    sum.z += v.z;
    sum.w += v.w;
  }
  if (addend != nullptr) {
    const float4 a = Load4(addend + t * hidden + h);
    sum.x += a.x;
    sum.y += a.y;
    sum.z += a.z;
    sum.w += a.w;
  }
  Store4(out + t * hidden + h, sum);
}

bool SameShape(const MoeShape& a, const MoeShape& b) {
  return a.num_experts == b.num_experts && a.hidden == b.hidden && a.inter == b.inter &&
         a.top_k == b.top_k && a.shared_experts == b.shared_experts;
}

}  // namespace

// ---- Shape --------------------------------------------------------------------------------------

Status MoeShape::Validate(MoeWeightFormat format) const {
  const std::string what =
      "MoE layer (E=" + std::to_string(num_experts) + ", H=" + std::to_string(hidden) +
      ", Im=" + std::to_string(inter) + ", top-" + std::to_string(top_k) +
      (shared_experts > 0 ? " + " + std::to_string(shared_experts) + " shared" : std::string()) +
      ", " + MoeWeightFormatName(format) + "): ";
  if (num_experts <= 0 || hidden <= 0 || inter <= 0 || top_k <= 0)
    return InvalidArgument(what + "experts, hidden, intermediate size and top_k must be positive");
  if (num_experts > 32 * kMaxExpertsPerLane)
    return Unimplemented(what + "more than 512 routed experts are not supported yet");
  if (top_k > kMaxTopK || top_k > num_experts)
    return InvalidArgument(what + "top_k must be at most min(32, experts)");
  if (shared_experts < 0 || pairs_per_token() > kMaxTopK)
    return InvalidArgument(what + "top_k plus the fused shared experts must be at most 32");
  if (n_group < 1 || n_group > kMaxGroups || num_experts % n_group != 0 || topk_group < 1 ||
      topk_group > n_group)
    return InvalidArgument(what +
                           "n_group must divide the experts (at most 32 groups) and "
                           "topk_group must be in 1..n_group");
  if (hidden % 16 != 0 || inter % 16 != 0)
    return Unimplemented(what +
                         "hidden and intermediate sizes must be multiples of 16; pick a "
                         "tensor-parallel size that keeps Im/tp a multiple of 16");
  if (format == MoeWeightFormat::kFp8Block && (hidden % 128 != 0 || inter % 128 != 0))
    return InvalidArgument(what +
                           "128x128 block FP8 needs hidden and Im/tp to be multiples of "
                           "128 (a block would straddle ranks); use a smaller tp size");
  return Status::Ok();
}

// ---- Workspace ----------------------------------------------------------------------------------

Result<MoeWorkspace> MoeWorkspace::Create(const MoeShape& shape, MoeWeightFormat format,
                                          int64_t max_tokens, const MoeConfigTable* table) {
  SPARK_RETURN_IF_ERROR(shape.Validate(format));
  if (max_tokens <= 0) return InvalidArgument("MoE workspace: max_tokens must be positive");
  MoeWorkspace w;
  w.shape_ = shape;
  w.format_ = format;
  w.max_tokens_ = max_tokens;
  const int64_t e = shape.num_experts, h = shape.hidden, im = shape.inter;
  const int64_t pairs = max_tokens * shape.pairs_per_token();
  // Sized for every compiled block_m: the same workspace serves any table (capped or not).
  const MoeScratchSizes scratch =
      table != nullptr ? table->ScratchFor(format, shape.gemm_experts(), shape.hidden, shape.inter,
                                           shape.pairs_per_token(), max_tokens)
                       : MoeScratchFor(shape.gemm_experts(), shape.hidden, shape.inter,
                                       shape.pairs_per_token(), max_tokens);
  w.max_mblocks_ = scratch.max_mblocks;
  w.max_rows_ = scratch.max_rows;
  const bool fp8 = format != MoeWeightFormat::kBf16;
  const bool block = format == MoeWeightFormat::kFp8Block;
  const int64_t split_floats = scratch.split_partial_floats;
  struct Slot {
    void** ptr;
    int64_t bytes;
  };
  const Slot slots[] = {
      {reinterpret_cast<void**>(&w.logits_), max_tokens * e * 4},
      {reinterpret_cast<void**>(&w.topk_ids_), pairs * 4},
      {reinterpret_cast<void**>(&w.topk_weights_), pairs * 4},
      {reinterpret_cast<void**>(&w.sorted_pairs_), w.max_rows_ * 4},
      {reinterpret_cast<void**>(&w.mblock_expert_), w.max_mblocks_ * 4},
      {reinterpret_cast<void**>(&w.num_rows_), 4},
      {&w.x_q_, fp8 ? max_tokens * h : 0},
      {reinterpret_cast<void**>(&w.x_scale_), fp8 ? max_tokens * (block ? h / 128 : 1) * 4 : 0},
      {reinterpret_cast<void**>(&w.inter_), w.max_rows_ * im * 2},
      {&w.inter_q_, fp8 ? w.max_rows_ * im : 0},
      {reinterpret_cast<void**>(&w.inter_scale_),
       fp8 ? w.max_rows_ * (block ? im / 128 : 1) * 4 : 0},
      {reinterpret_cast<void**>(&w.out_pairs_), pairs * h * 4},
      {reinterpret_cast<void**>(&w.split_partials_), split_floats * 4},
      {reinterpret_cast<void**>(&w.split_counters_), scratch.split_counters * 4},
      {reinterpret_cast<void**>(&w.route_counter_), 4},
  };
  int64_t total = 0;
  for (const Slot& s : slots) total += (s.bytes + 255) / 256 * 256;
  void* base = nullptr;
  cudaError_t err = cudaMalloc(&base, static_cast<size_t>(total));
  if (err != cudaSuccess) {
    return ResourceExhausted("MoE workspace for " + std::to_string(max_tokens) + " tokens needs " +
                             std::to_string(total) + " bytes of GPU memory: " +
                             cudaGetErrorString(err) + "; lower the batch token limit");
  }
  w.base_ = base;
  w.bytes_ = total;
  auto* p = static_cast<char*>(base);
  for (const Slot& s : slots) {
    *s.ptr = s.bytes > 0 ? p : nullptr;
    p += (s.bytes + 255) / 256 * 256;
  }
  w.split_partial_floats_ = split_floats;
  w.split_counter_count_ = scratch.split_counters;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemset(w.split_counters_, 0, scratch.split_counters * 4));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemset(w.route_counter_, 0, 4));
  return std::move(w);
}

MoeWorkspace::MoeWorkspace(MoeWorkspace&& other) noexcept { *this = std::move(other); }

MoeWorkspace& MoeWorkspace::operator=(MoeWorkspace&& other) noexcept {
  if (this != &other) {
    Release();
    shape_ = other.shape_;
    format_ = other.format_;
    max_tokens_ = std::exchange(other.max_tokens_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
    max_split_k_ = other.max_split_k_;
    for (int i = 0; i < 5; ++i) events_[i] = std::exchange(other.events_[i], nullptr);
    timing_ = std::exchange(other.timing_, false);
    last_plan_ = other.last_plan_;
    base_ = std::exchange(other.base_, nullptr);
    logits_ = other.logits_;
    topk_ids_ = other.topk_ids_;
    topk_weights_ = other.topk_weights_;
    expert_counts_ = other.expert_counts_;
    sorted_pairs_ = other.sorted_pairs_;
    mblock_expert_ = other.mblock_expert_;
    num_rows_ = other.num_rows_;
    x_q_ = other.x_q_;
    x_scale_ = other.x_scale_;
    inter_ = other.inter_;
    inter_q_ = other.inter_q_;
    inter_scale_ = other.inter_scale_;
    out_pairs_ = other.out_pairs_;
    split_partials_ = other.split_partials_;
    split_counters_ = other.split_counters_;
    route_counter_ = other.route_counter_;
    split_partial_floats_ = other.split_partial_floats_;
    split_counter_count_ = other.split_counter_count_;
    max_rows_ = other.max_rows_;
    max_mblocks_ = other.max_mblocks_;
  }
  return *this;
}

MoeWorkspace::~MoeWorkspace() { Release(); }

void MoeWorkspace::Release() {
  if (base_ != nullptr) cudaFree(base_);
  base_ = nullptr;
  for (cudaEvent_t& e : events_) {
    if (e != nullptr) cudaEventDestroy(e);
    e = nullptr;
  }
  timing_ = false;
}

Status MoeWorkspace::SetPhaseTiming(bool on) {
  if (on && events_[0] == nullptr) {
    for (cudaEvent_t& e : events_) SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
  }
  timing_ = on;
  return Status::Ok();
}

Result<MoePhaseTimes> MoeWorkspace::PhaseTimes() const {
  if (!timing_) return FailedPrecondition("MoE phase timing is off; call SetPhaseTiming(true)");
  SPARK_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(events_[4]));
  float ms[4];
  for (int i = 0; i < 4; ++i)
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms[i], events_[i], events_[i + 1]));
  return MoePhaseTimes{ms[0], ms[1], ms[2], ms[3]};
}

// ---- Kernel entry points ------------------------------------------------------------------------

namespace {

// Calls f(std::integral_constant<int, P>{}) with P the experts per lane TopKWarp needs for
// `experts` (4 for 128, 8 for 256, else kMaxExpertsPerLane).
template <class F>
void WithExpertsPerLane(int experts, F&& f) {
  if (experts <= 32 * 4) {
    f(std::integral_constant<int, 4>{});
  } else if (experts <= 32 * 8) {
    f(std::integral_constant<int, 8>{});
  } else {
    f(std::integral_constant<int, kMaxExpertsPerLane>{});
  }
}

bool TopKSupports(const MoeShape& shape) {
  return shape.num_experts <= 32 * kMaxExpertsPerLane && shape.pairs_per_token() <= kMaxTopK &&
         shape.n_group <= kMaxGroups && shape.top_k >= 1 && shape.shared_experts >= 0;
}

TopKArgs TopKArgsOf(const MoeShape& shape) {
  TopKArgs a;
  a.experts = shape.num_experts;
  a.top_k = shape.top_k;
  a.n_group = shape.n_group;
  a.topk_group = shape.topk_group;
  a.shared = shape.shared_experts;
  a.norm_topk_prob = shape.norm_topk_prob;
  a.softmax = shape.softmax_scoring;
  a.scaling = shape.routed_scaling_factor;
  return a;
}

}  // namespace

cudaError_t MoeTopK(const MoeShape& shape, const float* logits, const float* correction_bias,
                    int64_t tokens, int32_t* topk_ids, float* topk_weights, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (!TopKSupports(shape)) return cudaErrorInvalidValue;
  const TopKArgs a = TopKArgsOf(shape);
  const unsigned blocks = static_cast<unsigned>((tokens + 3) / 4);
  WithExpertsPerLane(shape.num_experts, [&](auto per_lane) {
    LaunchKernel(TopKKernel<decltype(per_lane)::value>, blocks, 128, 0, stream, logits,
                 correction_bias, tokens, a, topk_ids, topk_weights);
  });
  return cudaGetLastError();
}

namespace {

// fp32 router logits [tokens, E] of x.
cudaError_t RouterLogits(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                         float* logits, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const MoeShape& s = layer.shape;
  const dim3 block(256);
  if (tokens < 64) {
    const dim3 grid(s.num_experts, static_cast<unsigned>((tokens + 7) / 8));
    LaunchKernel(RouterLogitsKernel<8>, grid, block, 0, stream, x, layer.router, tokens,
                 s.num_experts, s.hidden, logits);
  } else {
    const dim3 grid(s.num_experts, static_cast<unsigned>((tokens + 31) / 32));
    LaunchKernel(RouterLogitsKernel<32>, grid, block, 0, stream, x, layer.router, tokens,
                 s.num_experts, s.hidden, logits);
  }
  return cudaGetLastError();
}

// Logits and top-k: one kernel for up to kRouterTopKMaxTokens tokens when `counter` (a zeroed
// device int) is given, else two.
cudaError_t Route(const MoeLayerDevice& layer, const MoeShape& s, const __nv_bfloat16* x,
                  int64_t tokens, float* logits, int32_t* topk_ids, float* topk_weights,
                  int32_t* counter, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (counter == nullptr || tokens > kRouterTopKMaxTokens) {
    const cudaError_t err = RouterLogits(layer, x, tokens, logits, stream);
    if (err != cudaSuccess) return err;
    return MoeTopK(s, logits, layer.router_bias, tokens, topk_ids, topk_weights, stream);
  }
  if (!TopKSupports(s)) return cudaErrorInvalidValue;
  WithExpertsPerLane(s.num_experts, [&](auto per_lane) {
    LaunchKernel(RouterTopKKernel<decltype(per_lane)::value>, static_cast<unsigned>(s.num_experts),
                 256, 0, stream, x, layer.router, tokens, s.hidden, layer.router_bias,
                 TopKArgsOf(s), logits, counter, topk_ids, topk_weights);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t MoeRoute(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                     float* logits, int32_t* topk_ids, float* topk_weights, cudaStream_t stream) {
  return Route(layer, layer.shape, x, tokens, logits, topk_ids, topk_weights, nullptr, stream);
}

cudaError_t QuantizeFp8Rows(const __nv_bfloat16* x, int64_t rows, int64_t cols, int group_cols,
                            void* q, float* scales, const int32_t* rows_device,
                            cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  auto* qb = static_cast<uint8_t*>(q);
  if (group_cols == 0) {
    LaunchKernel(QuantRowKernel, static_cast<unsigned>(rows), RowKernelThreads(cols), 0, stream, x,
                 cols, qb, scales, rows_device);
  } else if (group_cols == 128 && cols % 128 == 0) {
    const int64_t warps = rows * (cols / 128);
    LaunchKernel(QuantGroupKernel, static_cast<unsigned>((warps + 7) / 8), 256, 0, stream, x, rows,
                 cols, qb, scales, rows_device);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// The forward pass; a friend of MoeWorkspace for its buffers.
struct MoeWorkspaceAccess {
  // The GEMV path (moe_gemv.h) for a few tokens: router, gate/up, down with the combine.
  template <class T, class Mark>
  static cudaError_t RunGemv(const MoeLayerDevice& layer, const MoeShape& s, const __nv_bfloat16* x,
                             int64_t tokens, T* out, const T* addend, MoeWorkspace& w,
                             const MoeConfigTable& table, cudaStream_t stream, Mark& mark) {
    moe_internal::MoeGemvParams p;
    p.format = layer.format;
    p.tokens = tokens;
    p.pairs_per_token = s.pairs_per_token();
    p.hidden = s.hidden;
    p.inter = s.inter;
    p.ids = w.topk_ids_;
    p.weights = w.topk_weights_;
    p.tiling = table.GemvTilingFor(layer.format, tokens);
    p.tiling = moe_internal::MoeGemvResolveTiling(p);
    w.last_plan_ = MoePlan{tokens, MoeTileConfig{}, MoeTileConfig{}, true, p.tiling};
    cudaError_t err = mark(0);
    if (err != cudaSuccess) return err;
    err = Route(layer, s, x, tokens, w.logits_, w.topk_ids_, w.topk_weights_, w.route_counter_,
                stream);
    if (err != cudaSuccess || (err = mark(1)) != cudaSuccess) return err;
    err = moe_internal::MoeGemvGateUp(p, x, layer.w13, layer.w13_scale, w.inter_, stream);
    if (err != cudaSuccess || (err = mark(2)) != cudaSuccess) return err;
    err = moe_internal::MoeGemvDown(p, w.inter_, layer.w2, layer.w2_scale, addend, out, stream);
    if (err != cudaSuccess || (err = mark(3)) != cudaSuccess) return err;
    return mark(4);
  }

  // The expert-grouped path (moe_grouped.h): router, permutation into groups of
  // kMoeGroupedBlockM pairs per expert, gate/up and down on the tensor cores, combine.
  template <class T, class Mark>
  static cudaError_t RunGrouped(const MoeLayerDevice& layer, const MoeShape& s,
                                const __nv_bfloat16* x, int64_t tokens, T* out, const T* addend,
                                MoeWorkspace& w, const MoeConfigTable& table, cudaStream_t stream,
                                Mark& mark) {
    const int64_t pairs = tokens * s.pairs_per_token();
    const int bm = kMoeGroupedBlockM;
    moe_internal::MoeGroupedParams p;
    p.format = layer.format;
    p.pairs_per_token = s.pairs_per_token();
    p.hidden = s.hidden;
    p.inter = s.inter;
    p.mblocks = static_cast<int>(MoeMaxMblocks(pairs, s.gemm_experts(), bm));
    p.sorted_pairs = w.sorted_pairs_;
    p.mblock_expert = w.mblock_expert_;
    p.num_rows = w.num_rows_;
    p.weights = w.topk_weights_;
    moe_internal::MoeGemvParams gp;
    gp.tiling = table.gemv_tiling();
    const MoeGemvTiling tiling = moe_internal::MoeGemvResolveTiling(gp);
    p.warps_per_group = tiling.gate_up_k_splits;
    if (p.mblocks > w.max_mblocks_) return cudaErrorInvalidValue;
    w.last_plan_ = MoePlan{tokens, MoeTileConfig{}, MoeTileConfig{}, false, tiling, true};
    cudaError_t err = mark(0);
    if (err != cudaSuccess) return err;
    err = Route(layer, s, x, tokens, w.logits_, w.topk_ids_, w.topk_weights_, w.route_counter_,
                stream);
    if (err != cudaSuccess) return err;
    const size_t perm_smem = size_t{3} * s.gemm_experts() * sizeof(int);
    LaunchKernel(PermuteKernel, 1, 1024, perm_smem, stream, w.topk_ids_, static_cast<int>(pairs),
                 s.gemm_experts(), bm, w.sorted_pairs_, w.mblock_expert_, w.num_rows_);
    if ((err = cudaGetLastError()) != cudaSuccess || (err = mark(1)) != cudaSuccess) return err;
    err = moe_internal::MoeGroupedGateUp(p, x, layer.w13, layer.w13_scale, w.inter_, stream);
    if (err != cudaSuccess || (err = mark(2)) != cudaSuccess) return err;
    err = moe_internal::MoeGroupedDown(p, w.inter_, layer.w2, layer.w2_scale, w.out_pairs_, stream);
    if (err != cudaSuccess || (err = mark(3)) != cudaSuccess) return err;
    const int64_t quads = tokens * (s.hidden / 4);
    LaunchKernel(CombineKernel<T>, static_cast<unsigned>((quads + 255) / 256), 256, 0, stream,
                 w.out_pairs_, tokens, s.pairs_per_token(), s.hidden, addend, out);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    return mark(4);
  }

  template <class T>
  static cudaError_t Run(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                         T* out, const T* addend, MoeWorkspace& w, const MoeConfigTable& table,
                         const MoeTileConfig* forced_gate_up, const MoeTileConfig* forced_down,
                         MoeSharedSlots shared, cudaStream_t stream) {
    if (tokens < 0 || tokens > w.max_tokens_ || w.base_ == nullptr ||
        !SameShape(layer.shape, w.shape_) || layer.format != w.format_)
      return cudaErrorInvalidValue;
    // The shape this forward runs: without the shared slots the GEMMs see the routed experts
    // only (the weights' layout is unchanged; slot indices stay below E).
    MoeShape s = layer.shape;
    if (shared == MoeSharedSlots::kSkip) s.shared_experts = 0;
    if (tokens == 0) return cudaSuccess;
    const int64_t pairs = tokens * s.pairs_per_token();
    const MoeWeightFormat format = layer.format;
    const bool fp8 = format != MoeWeightFormat::kBf16;
    const bool block = format == MoeWeightFormat::kFp8Block;
    auto mark = [&](int i) {
      return w.timing_ ? cudaEventRecord(w.events_[i], stream) : cudaSuccess;
    };
    if (forced_gate_up == nullptr && forced_down == nullptr &&
        moe_internal::MoeGemvServes(table, format, s.hidden, s.inter, tokens)) {
      return RunGemv(layer, s, x, tokens, out, addend, w, table, stream, mark);
    }
    if (forced_gate_up == nullptr && forced_down == nullptr &&
        tokens <= table.grouped_max_tokens() &&
        moe_internal::MoeGroupedSupports(format, s.hidden, s.inter, table.smem_limit_bytes())) {
      return RunGrouped(layer, s, x, tokens, out, addend, w, table, stream, mark);
    }

    MoeScratchSizes scratch;
    scratch.max_rows = w.max_rows_;
    scratch.max_mblocks = w.max_mblocks_;
    scratch.split_partial_floats = w.split_partial_floats_;
    scratch.split_counters = w.split_counter_count_;
    Result<MoeLaunch> launch =
        table.PlanLaunch(format, s.gemm_experts(), s.hidden, s.inter, s.pairs_per_token(), tokens,
                         scratch, forced_gate_up, forced_down);
    if (!launch.ok()) {
      return launch.status().code() == StatusCode::kOutOfRange ? cudaErrorInvalidValue
                                                               : cudaErrorInvalidConfiguration;
    }
    const MoeTileConfig& gate_up = launch->gate_up;
    const MoeTileConfig& down = launch->down;
    const int bm = gate_up.block_m;
    const int64_t mblocks = launch->mblocks;
    w.last_plan_ = MoePlan{tokens, gate_up, down, false, {}};

    cudaError_t err = mark(0);
    if (err != cudaSuccess) return err;
    err = Route(layer, s, x, tokens, w.logits_, w.topk_ids_, w.topk_weights_, nullptr, stream);
    if (err != cudaSuccess) return err;
    const size_t perm_smem = size_t{3} * s.gemm_experts() * sizeof(int);
    LaunchKernel(PermuteKernel, 1, 1024, perm_smem, stream, w.topk_ids_, static_cast<int>(pairs),
                 s.gemm_experts(), bm, w.sorted_pairs_, w.mblock_expert_, w.num_rows_);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    if ((err = mark(1)) != cudaSuccess) return err;

    moe_internal::GemmParams g;
    g.sorted_pairs = w.sorted_pairs_;
    g.mblock_expert = w.mblock_expert_;
    g.num_rows = w.num_rows_;
    g.topk_weights = w.topk_weights_;
    g.partials = w.split_partials_;
    g.counters = w.split_counters_;
    g.top_k = s.pairs_per_token();
    g.mblocks = static_cast<int>(mblocks);

    // Gate/up.
    if (fp8) {
      err = QuantizeFp8Rows(x, tokens, s.hidden, block ? 128 : 0, w.x_q_, w.x_scale_, nullptr,
                            stream);
      if (err != cudaSuccess) return err;
    }
    g.a = fp8 ? w.x_q_ : static_cast<const void*>(x);
    g.a_scale = w.x_scale_;
    g.b = layer.w13;
    g.b_scale = layer.w13_scale;
    g.n = 2 * s.inter;
    g.k = s.hidden;
    g.gemm = MoeGemm::kGateUp;
    g.inter_out = w.inter_;
    if ((err = moe_internal::LaunchMoeGemm(format, gate_up, g, stream)) != cudaSuccess) return err;
    if ((err = mark(2)) != cudaSuccess) return err;

    // Down.
    if (fp8) {
      err = QuantizeFp8Rows(w.inter_, mblocks * bm, s.inter, block ? 128 : 0, w.inter_q_,
                            w.inter_scale_, w.num_rows_, stream);
      if (err != cudaSuccess) return err;
    }
    g.a = fp8 ? w.inter_q_ : static_cast<const void*>(w.inter_);
    g.a_scale = w.inter_scale_;
    g.b = layer.w2;
    g.b_scale = layer.w2_scale;
    g.n = s.hidden;
    g.k = s.inter;
    g.gemm = MoeGemm::kDown;
    g.inter_out = nullptr;
    g.pair_out = w.out_pairs_;
    if ((err = moe_internal::LaunchMoeGemm(format, down, g, stream)) != cudaSuccess) return err;
    if ((err = mark(3)) != cudaSuccess) return err;

    const int64_t quads = tokens * (s.hidden / 4);
    LaunchKernel(CombineKernel<T>, static_cast<unsigned>((quads + 255) / 256), 256, 0, stream,
                 w.out_pairs_, tokens, s.pairs_per_token(), s.hidden, addend, out);
    if ((err = cudaGetLastError()) != cudaSuccess) return err;
    return mark(4);
  }
};

cudaError_t MoeForward(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                       __nv_bfloat16* out, const __nv_bfloat16* addend, MoeWorkspace& workspace,
                       const MoeConfigTable& table, cudaStream_t stream) {
  return MoeWorkspaceAccess::Run(layer, x, tokens, out, addend, workspace, table, nullptr, nullptr,
                                 MoeSharedSlots::kRun, stream);
}

cudaError_t MoeForward(const MoeLayerDevice& layer, const __nv_bfloat16* x, int64_t tokens,
                       float* out, const float* addend, MoeWorkspace& workspace,
                       const MoeConfigTable& table, cudaStream_t stream, MoeSharedSlots shared) {
  return MoeWorkspaceAccess::Run(layer, x, tokens, out, addend, workspace, table, nullptr, nullptr,
                                 shared, stream);
}

cudaError_t MoeForwardWithConfigs(const MoeLayerDevice& layer, const __nv_bfloat16* x,
                                  int64_t tokens, float* out, MoeWorkspace& workspace,
                                  const MoeConfigTable& table, const MoeTileConfig& gate_up,
                                  const MoeTileConfig& down, cudaStream_t stream) {
  return MoeWorkspaceAccess::Run<float>(layer, x, tokens, out, nullptr, workspace, table, &gate_up,
                                        &down, MoeSharedSlots::kRun, stream);
}

}  // namespace spark::cuda
