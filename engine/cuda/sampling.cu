#include "engine/cuda/programmatic_launch.cuh"
#include "engine/cuda/sampling.h"

#include <curand_kernel.h>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <cfloat>
#include <cmath>

namespace spark::cuda {
namespace {

constexpr int kThreads = 1024;

// Monotonic map of a float to an unsigned key: a < b  <=>  Key(a) < Key(b) (finite and inf).
__device__ __forceinline__ uint32_t Key(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

struct MaxIdx {
  float v;
  int32_t i;
};

// Higher value first, then the lower id (the CPU's order).
struct MaxIdxOp {
  __device__ __forceinline__ MaxIdx operator()(const MaxIdx& a, const MaxIdx& b) const {
    if (a.v != b.v) return a.v > b.v ? a : b;
    return a.i < b.i ? a : b;
  }
};

using ReduceIdx = cub::BlockReduce<MaxIdx, kThreads>;
using ReduceDouble = cub::BlockReduce<double, kThreads>;
using ReduceInt = cub::BlockReduce<int32_t, kThreads>;
using ScanDouble = cub::BlockScan<double, kThreads>;

union TempStorage {
  typename ReduceIdx::TempStorage idx;
  typename ReduceDouble::TempStorage dbl;
  typename ReduceInt::TempStorage integer;
  typename ScanDouble::TempStorage scan;
};

struct Shared {
  TempStorage temp;
  MaxIdx best;
  double dsum;
  int32_t isum;
  int32_t token;
};

// Block-wide helpers: every thread gets the result.
__device__ MaxIdx BlockArgmax(MaxIdx v, Shared& sh) {
  MaxIdx r = ReduceIdx(sh.temp.idx).Reduce(v, MaxIdxOp());
  if (threadIdx.x == 0) sh.best = r;
  __syncthreads();
  r = sh.best;
  __syncthreads();
  return r;
}

__device__ double BlockSumDouble(double v, Shared& sh) {
  double r = ReduceDouble(sh.temp.dbl).Sum(v);
  if (threadIdx.x == 0) sh.dsum = r;
  __syncthreads();
  r = sh.dsum;
  __syncthreads();
  return r;
}

__device__ int32_t BlockSumInt(int32_t v, Shared& sh) {
  int32_t r = ReduceInt(sh.temp.integer).Sum(v);
  if (threadIdx.x == 0) sh.isum = r;
  __syncthreads();
  r = sh.isum;
  __syncthreads();
  return r;
}

// The survivors of top-k (keys above k_key, plus ties at k_key with an id below k_tie_bound),
// top-p (keys >= p_key) and min-p (weight >= min_p, the argmax always).
struct Filter {
  bool use_top_k = false;
  uint32_t k_key = 0;
  int32_t k_tie_bound = 0;
  uint32_t p_key = 0;
  float min_p = 0.0f;
  int32_t argmax = 0;
  float max_logit = 0.0f;

  __device__ __forceinline__ bool TopK(int32_t i, uint32_t key) const {
    if (!use_top_k) return true;
    return key > k_key || (key == k_key && i < k_tie_bound);
  }
  __device__ __forceinline__ double Weight(float v) const {
    return exp(static_cast<double>(v) - static_cast<double>(max_logit));
  }
  // Weight of token i if it survives every filter, else 0.
  __device__ __forceinline__ double Kept(int32_t i, float v) const {
    const uint32_t key = Key(v);
    if (!TopK(i, key) || key < p_key) return 0.0;
    const double w = Weight(v);
    if (min_p > 0.0f && i != argmax && w < static_cast<double>(min_p)) return 0.0;
    return w;
  }
};

__global__ void __launch_bounds__(kThreads)
    SampleKernel(float* logits, int32_t vocab, const SampleRowParams* params,
                 const int32_t* rep_tokens, const int32_t* out_tokens, const int32_t* out_counts,
                 SampleRowResult* results) {
  PdlBegin();
  __shared__ Shared sh;
  const int64_t row = blockIdx.x;
  float* l = logits + row * vocab;
  const SampleRowParams p = params[row];
  const int tid = threadIdx.x;

  // 1. Penalties (the id lists are distinct, so no two threads touch one logit).
  if (p.repetition_penalty != 1.0f) {
    const float rp = p.repetition_penalty;
    for (int32_t j = p.rep_begin + tid; j < p.rep_end; j += kThreads) {
      const int32_t t = rep_tokens[j];
      if (t < 0 || t >= vocab) continue;
      const float v = l[t];
      l[t] = v > 0.0f ? v / rp : v * rp;
    }
    __syncthreads();
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (int32_t j = p.out_begin + tid; j < p.out_end; j += kThreads) {
      const int32_t t = out_tokens[j];
      if (t < 0 || t >= vocab) continue;
      l[t] -= p.frequency_penalty * static_cast<float>(out_counts[j]) + p.presence_penalty;
    }
    __syncthreads();
  }

  // 2. Temperature.
  const bool greedy = p.temperature == 0.0f;
  if (!greedy && p.temperature != 1.0f) {
    const float inv_t = 1.0f / p.temperature;
    for (int32_t i = tid; i < vocab; i += kThreads) l[i] *= inv_t;
    __syncthreads();
  }

  // Argmax (lowest id on ties) and log-sum-exp.
  MaxIdx local{-INFINITY, vocab};
  for (int32_t i = tid; i < vocab; i += kThreads) local = MaxIdxOp()(local, MaxIdx{l[i], i});
  const MaxIdx best = BlockArgmax(local, sh);
  const int32_t argmax = best.i < vocab ? best.i : 0;
  const float max_logit = l[argmax];
  double lse = max_logit;
  if (isfinite(max_logit)) {
    double s = 0.0;
    for (int32_t i = tid; i < vocab; i += kThreads) {
      s += exp(static_cast<double>(l[i]) - static_cast<double>(max_logit));
    }
    lse = static_cast<double>(max_logit) + log(BlockSumDouble(s, sh));
  }

  int32_t token = argmax;
  if (!greedy && isfinite(max_logit)) {
    Filter f;
    f.argmax = argmax;
    f.max_logit = max_logit;
    f.k_tie_bound = vocab;
    // 3. Top-k: the k-th largest key, bit by bit.
    if (p.top_k > 0 && p.top_k < vocab) {
      uint32_t k_key = 0;
      for (int bit = 31; bit >= 0; --bit) {
        const uint32_t cand = k_key | (1u << bit);
        int32_t c = 0;
        for (int32_t i = tid; i < vocab; i += kThreads) c += Key(l[i]) >= cand;
        if (BlockSumInt(c, sh) >= p.top_k) k_key = cand;
      }
      int32_t gt = 0;
      int32_t eq = 0;
      for (int32_t i = tid; i < vocab; i += kThreads) {
        const uint32_t k = Key(l[i]);
        gt += k > k_key;
        eq += k == k_key;
      }
      const int32_t need = p.top_k - BlockSumInt(gt, sh);
      if (BlockSumInt(eq, sh) > need) {
        // Keep the `need` tied tokens with the lowest ids: the largest id bound that admits no
        // more than `need` of them.
        int32_t bound = 0;
        for (int bit = 30; bit >= 0; --bit) {
          const int64_t cand = static_cast<int64_t>(bound) | (int64_t{1} << bit);
          if (cand > vocab) continue;
          int32_t c = 0;
          for (int32_t i = tid; i < cand; i += kThreads) c += Key(l[i]) == k_key;
          if (BlockSumInt(c, sh) <= need) bound = static_cast<int32_t>(cand);
        }
        f.k_tie_bound = bound;
      }
      f.use_top_k = true;
      f.k_key = k_key;
    }
    // 4. Top-p over the top-k survivors: the largest key whose mass at or above it reaches
    // top_p of their total.
    if (p.top_p < 1.0f) {
      auto mass_ge = [&](uint32_t threshold) {
        double s = 0.0;
        for (int32_t i = tid; i < vocab; i += kThreads) {
          const float v = l[i];
          const uint32_t k = Key(v);
          if (k >= threshold && f.TopK(i, k)) s += f.Weight(v);
        }
        return BlockSumDouble(s, sh);
      };
      const double target = static_cast<double>(p.top_p) * mass_ge(0);
      uint32_t p_key = 0;
      for (int bit = 31; bit >= 0; --bit) {
        const uint32_t cand = p_key | (1u << bit);
        if (mass_ge(cand) >= target) p_key = cand;
      }
      f.p_key = p_key;
    }
    // 5. Min-p.
    f.min_p = p.min_p;

    // 6. Draw: survivors in id order, each thread a contiguous range.
    const int32_t per = (vocab + kThreads - 1) / kThreads;
    const int32_t begin = min(vocab, tid * per);
    const int32_t end = min(vocab, begin + per);
    double part = 0.0;
    int32_t last_kept = -1;
    for (int32_t i = begin; i < end; ++i) {
      const double w = f.Kept(i, l[i]);
      part += w;
      if (w > 0.0) last_kept = i;
    }
    double before = 0.0;
    double total = 0.0;
    ScanDouble(sh.temp.scan).ExclusiveSum(part, before, total);
    __syncthreads();
    MaxIdx last{static_cast<float>(last_kept), last_kept};
    const MaxIdx last_all = BlockArgmax(last, sh);  // largest kept id: the fallback
    curandStatePhilox4_32_10_t rng;
    curand_init(p.seed, 0, p.draw * 4, &rng);
    const double u = (1.0 - curand_uniform_double(&rng)) * total;  // [0, total)
    if (tid == 0) sh.token = last_all.i >= 0 ? last_all.i : argmax;
    __syncthreads();
    if (part > 0.0 && u >= before && u < before + part) {
      double c = before;
      for (int32_t i = begin; i < end; ++i) {
        c += f.Kept(i, l[i]);
        if (u < c) {
          sh.token = i;
          break;
        }
      }
    }
    __syncthreads();
    token = sh.token;
  }

  // Logprobs; the top list picks, n times, the best token ranked after the previous pick.
  SampleRowResult* out = results + row;
  if (tid == 0) {
    out->token = token;
    out->logprob = static_cast<float>(static_cast<double>(l[token]) - lse);
  }
  const int n = min(min(p.top_logprobs, kMaxSampleTopLogprobs), vocab);
  float prev_v = INFINITY;
  int32_t prev_i = -1;
  for (int k = 0; k < n; ++k) {
    MaxIdx cand{-INFINITY, vocab};
    for (int32_t i = tid; i < vocab; i += kThreads) {
      const float v = l[i];
      if (v < prev_v || (v == prev_v && i > prev_i)) cand = MaxIdxOp()(cand, MaxIdx{v, i});
    }
    const MaxIdx pick = BlockArgmax(cand, sh);
    if (pick.i >= vocab) break;
    if (tid == 0) {
      out->top_tokens[k] = pick.i;
      out->top_logprobs[k] = static_cast<float>(static_cast<double>(pick.v) - lse);
    }
    prev_v = pick.v;
    prev_i = pick.i;
  }
}

}  // namespace

cudaError_t SampleRows(float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
                       const int32_t* rep_tokens, const int32_t* out_tokens,
                       const int32_t* out_counts, SampleRowResult* results, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT32_MAX || rows > INT32_MAX) return cudaErrorInvalidValue;
  LaunchKernel(SampleKernel, static_cast<unsigned>(rows), kThreads, 0, stream, logits,
               static_cast<int32_t>(vocab), params, rep_tokens, out_tokens, out_counts, results);
  return cudaGetLastError();
}

namespace {

struct GreedyPartial {
  float max_logit;  // of the block's slice, and its lowest id
  int32_t id;
  double sum;  // sum of exp(l - max_logit) over the slice
};

constexpr int kGreedyThreads = 256;

__global__ void __launch_bounds__(kGreedyThreads)
    GreedyPartialKernel(const float* __restrict__ logits, int32_t vocab,
                        GreedyPartial* __restrict__ partials) {
  PdlBegin();
  using Reduce = cub::BlockReduce<MaxIdx, kGreedyThreads>;
  using ReduceD = cub::BlockReduce<double, kGreedyThreads>;
  __shared__ union {
    typename Reduce::TempStorage idx;
    typename ReduceD::TempStorage dbl;
  } temp;
  __shared__ MaxIdx best;
  const int64_t row = blockIdx.y;
  const float* l = logits + row * vocab;
  const int32_t per =
      (vocab + static_cast<int32_t>(gridDim.x) - 1) / static_cast<int32_t>(gridDim.x);
  const int32_t begin = min(vocab, static_cast<int32_t>(blockIdx.x) * per);
  const int32_t end = min(vocab, begin + per);
  MaxIdx local{-INFINITY, vocab};
  for (int32_t i = begin + static_cast<int32_t>(threadIdx.x); i < end; i += kGreedyThreads) {
    local = MaxIdxOp()(local, MaxIdx{l[i], i});
  }
  const MaxIdx reduced = Reduce(temp.idx).Reduce(local, MaxIdxOp());
  if (threadIdx.x == 0) best = reduced;
  __syncthreads();
  const MaxIdx b = best;
  double s = 0.0;
  if (isfinite(b.v)) {
    for (int32_t i = begin + static_cast<int32_t>(threadIdx.x); i < end; i += kGreedyThreads) {
      s += exp(static_cast<double>(l[i]) - static_cast<double>(b.v));
    }
  }
  const double total = ReduceD(temp.dbl).Sum(s);
  if (threadIdx.x == 0) partials[row * gridDim.x + blockIdx.x] = GreedyPartial{b.v, b.i, total};
}

// One warp per row.
__global__ void GreedyCombineKernel(const float* __restrict__ logits, int32_t vocab, int blocks,
                                    const GreedyPartial* __restrict__ partials,
                                    SampleRowResult* __restrict__ results) {
  PdlBegin();
  const int64_t row = blockIdx.x;
  const int lane = threadIdx.x;
  const GreedyPartial* p = partials + row * blocks;
  MaxIdx best{-INFINITY, vocab};
  for (int b = lane; b < blocks; b += 32) best = MaxIdxOp()(best, MaxIdx{p[b].max_logit, p[b].id});
  for (int off = 16; off > 0; off >>= 1) {
    const MaxIdx other{__shfl_xor_sync(0xffffffffu, best.v, off),
                       __shfl_xor_sync(0xffffffffu, best.i, off)};
    best = MaxIdxOp()(best, other);
  }
  const int32_t argmax = best.i < vocab ? best.i : 0;
  const float max_logit = logits[row * vocab + argmax];
  double s = 0.0;
  if (isfinite(max_logit)) {
    for (int b = lane; b < blocks; b += 32) {
      if (isfinite(p[b].max_logit)) {
        s += p[b].sum * exp(static_cast<double>(p[b].max_logit) - static_cast<double>(max_logit));
      }
    }
  }
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) {
    const double lse = isfinite(max_logit) ? static_cast<double>(max_logit) + log(s) : max_logit;
    results[row].token = argmax;
    results[row].logprob = static_cast<float>(static_cast<double>(max_logit) - lse);
  }
}

}  // namespace

bool GreedyFastPathServes(const SampleRowParams& p) {
  return p.temperature == 0.0f && p.repetition_penalty == 1.0f && p.presence_penalty == 0.0f &&
         p.frequency_penalty == 0.0f && p.top_logprobs == 0;
}

int64_t GreedyPartialBytes(int64_t rows) {
  return rows * kGreedyBlocksPerRow * static_cast<int64_t>(sizeof(GreedyPartial));
}

cudaError_t SampleGreedyRows(const float* logits, int64_t rows, int64_t vocab, void* partials,
                             SampleRowResult* results, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  if (vocab <= 0 || vocab > INT32_MAX || rows > 65535 || partials == nullptr) {
    return cudaErrorInvalidValue;
  }
  auto* parts = static_cast<GreedyPartial*>(partials);
  const dim3 grid(kGreedyBlocksPerRow, static_cast<unsigned>(rows));
  LaunchKernel(GreedyPartialKernel, grid, kGreedyThreads, 0, stream, logits,
               static_cast<int32_t>(vocab), parts);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  LaunchKernel(GreedyCombineKernel, static_cast<unsigned>(rows), 32, 0, stream, logits,
               static_cast<int32_t>(vocab), kGreedyBlocksPerRow, parts, results);
  return cudaGetLastError();
}

}  // namespace spark::cuda
