#include "engine/cuda/attention.h"

#include <cuda_fp8.h>

#include <cmath>

#include "engine/cuda/attention_mma.h"
#include "engine/cuda/attention_tile.cuh"
#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = kAttentionRowsPerTile / kWarps;
constexpr int kKeyTile = 32;
static_assert(kKeyTile == kAttentionSplitKeyTile, "split boundaries on key tiles");

template <int HD>
struct Smem {
  static constexpr int kKStride = HD + 1;  // padded: lane j reads key j without bank conflicts
  static constexpr int64_t kBytes =
      (static_cast<int64_t>(kAttentionRowsPerTile) * HD + kKeyTile * kKStride + kKeyTile * HD) * 4;
};

// Eight cached elements as one load: 16 bytes of BF16 or 8 bytes of FP8 E4M3.
template <class TC>
struct CacheVec;
template <>
struct CacheVec<__nv_bfloat16> {
  using Raw = uint4;
  static __device__ __forceinline__ void ToFloat(const Raw& raw, float* out) {
    const __nv_bfloat16* b = reinterpret_cast<const __nv_bfloat16*>(&raw);
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = __bfloat162float(b[e]);
  }
};
template <>
struct CacheVec<__nv_fp8_e4m3> {
  using Raw = uint2;
  static __device__ __forceinline__ void ToFloat(const Raw& raw, float* out) {
    const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
      out[2 * e] = f.x;
      out[2 * e + 1] = f.y;
    }
  }
};

// kTree: the batch carries tree masks (a separate instantiation, so causal batches run the
// unchanged kernel). TC: the cache element type.
template <int HD, bool kTree, class TC>
__global__ void __launch_bounds__(kWarps * 32)
    PagedAttentionKernel(const __nv_bfloat16* __restrict__ q, const TC* __restrict__ kc,
                         const TC* __restrict__ vc, AttentionBatch batch, AttentionShape shape,
                         int splits, int split_keys, float* __restrict__ partial_o,
                         float* __restrict__ partial_ml, __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  constexpr int kDpl = (HD + 31) / 32;  // output dims per lane
  extern __shared__ float smem[];
  float* qs = smem;                                // [16][HD]
  float* ks = qs + kAttentionRowsPerTile * HD;     // [32][HD + 1]
  float* vs = ks + kKeyTile * Smem<HD>::kKStride;  // [32][HD]

  const AttentionTileWork work = AttentionTileFor(batch, shape, splits, split_keys);
  const int chunk = work.chunk;
  const int row_begin = work.row_begin;
  const int row_end = work.row_end;
  const int g = blockIdx.y;
  const int split = blockIdx.z;
  const int group = work.group;
  const int start = work.start;
  const int len = work.len;
  const int offset = work.offset;
  const int key_begin = work.key_begin;
  const int key_end = work.key_end;
  const int* table = work.table;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  // Tree chunks: token t's visibility row of the chunk's own keys starts at masks + t * words.
  const int mask_offset = kTree ? batch.tree_mask_offset[chunk] : -1;
  const uint32_t* masks = mask_offset >= 0 ? batch.tree_masks + mask_offset : nullptr;
  const int mask_words = (len + 31) >> 5;

  // Query rows into shared memory (fp32).
  for (int idx = threadIdx.x; idx < kAttentionRowsPerTile * HD; idx += blockDim.x) {
    const int r = idx / HD;
    const int d = idx - r * HD;
    const int row = row_begin + r;
    float v = 0.f;
    if (row < row_end) {
      const int token = row / group;
      const int head = g * group + row % group;
      v = __bfloat162float(
          q[(static_cast<int64_t>(offset + token) * shape.q_heads + head) * HD + d]);
    }
    qs[idx] = v;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kDpl];
  int qpos[kRowsPerWarp];
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.f;
#pragma unroll
    for (int dd = 0; dd < kDpl; ++dd) o[i][dd] = 0.f;
    const int row = row_begin + warp * kRowsPerWarp + i;
    qpos[i] = row < row_end ? start + row / group : -1;
  }

  // K/V tiles are prefetched into registers one tile ahead (raw elements, 8 per load), so the
  // global loads of tile i + 1 overlap the arithmetic on tile i.
  using Vec = CacheVec<TC>;
  using Raw = typename Vec::Raw;
  constexpr int kVecPerKey = HD / 8;
  constexpr int kVecs = kKeyTile * kVecPerKey;
  constexpr int kVecIters = (kVecs + kWarps * 32 - 1) / (kWarps * 32);
  Raw kreg[kVecIters], vreg[kVecIters];
  auto prefetch = [&](int kt) {
#pragma unroll
    for (int it = 0; it < kVecIters; ++it) {
      const int idx = threadIdx.x + it * kWarps * 32;
      const int j = idx / kVecPerKey;
      const int d0 = (idx - j * kVecPerKey) * 8;
      const int key = kt + j;
      kreg[it] = Raw{};
      vreg[it] = Raw{};
      if (idx < kVecs && key < key_end) {
        const int block = table[key / shape.block_tokens];
        const int off = key % shape.block_tokens;
        const int64_t base =
            ((static_cast<int64_t>(block) * shape.kv_heads + g) * shape.block_tokens + off) * HD +
            d0;
        kreg[it] = __ldg(reinterpret_cast<const Raw*>(kc + base));
        vreg[it] = __ldg(reinterpret_cast<const Raw*>(vc + base));
      }
    }
  };
  if (key_begin < key_end) prefetch(key_begin);

  for (int kt = key_begin; kt < key_end; kt += kKeyTile) {
    __syncthreads();  // previous tile fully consumed (and qs written on the first pass)
#pragma unroll
    for (int it = 0; it < kVecIters; ++it) {
      const int idx = threadIdx.x + it * kWarps * 32;
      if (idx >= kVecs) continue;
      const int j = idx / kVecPerKey;
      const int d0 = (idx - j * kVecPerKey) * 8;
      float kf[8], vf[8];
      Vec::ToFloat(kreg[it], kf);
      Vec::ToFloat(vreg[it], vf);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        ks[j * Smem<HD>::kKStride + d0 + e] = kf[e];
        vs[j * HD + d0 + e] = vf[e];
      }
    }
    if (kt + kKeyTile < key_end) prefetch(kt + kKeyTile);
    __syncthreads();

    // Scores of this lane's key for the warp's rows.
    float s[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) s[i] = 0.f;
    const float* krow = ks + lane * Smem<HD>::kKStride;
    const float* qw = qs + warp * kRowsPerWarp * HD;
#pragma unroll 8
    for (int d = 0; d < HD; ++d) {
      const float kd = krow[d];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) s[i] += qw[i * HD + d] * kd;
    }
    const int key = kt + lane;
    float p[kRowsPerWarp];
#pragma unroll
    for (int i = 0; i < kRowsPerWarp; ++i) {
      bool valid = key < key_end && key <= qpos[i];
      if (kTree && valid && masks != nullptr && key >= start) {
        const int j = key - start;
        const uint32_t word = __ldg(masks + (qpos[i] - start) * mask_words + (j >> 5));
        valid = ((word >> (j & 31)) & 1u) != 0;
      }
      const float score = valid ? s[i] * shape.scale : -INFINITY;
      const float m_new = fmaxf(m[i], WarpMax(score));
      float alpha = 1.f;
      if (m_new == -INFINITY) {
        p[i] = 0.f;
      } else {
        p[i] = valid ? expf(score - m_new) : 0.f;
        alpha = m[i] == -INFINITY ? 0.f : expf(m[i] - m_new);
      }
      l[i] = l[i] * alpha + WarpSum(p[i]);
      m[i] = m_new;
#pragma unroll
      for (int dd = 0; dd < kDpl; ++dd) o[i][dd] *= alpha;
    }
#pragma unroll 4
    for (int j = 0; j < kKeyTile; ++j) {
      float pj[kRowsPerWarp];
#pragma unroll
      for (int i = 0; i < kRowsPerWarp; ++i) pj[i] = __shfl_sync(0xffffffffu, p[i], j);
#pragma unroll
      for (int dd = 0; dd < kDpl; ++dd) {
        const int d = lane + 32 * dd;
        if (d < HD) {
          const float v = vs[j * HD + d];
#pragma unroll
          for (int i = 0; i < kRowsPerWarp; ++i) o[i][dd] += pj[i] * v;
        }
      }
    }
  }

  // Write the rows.
#pragma unroll
  for (int i = 0; i < kRowsPerWarp; ++i) {
    const int row = row_begin + warp * kRowsPerWarp + i;
    if (row >= row_end) continue;
    const int token = offset + row / group;
    const int head = g * group + row % group;
    const int64_t grow = static_cast<int64_t>(token) * shape.q_heads + head;
    if (splits == 1) {
      const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
#pragma unroll
      for (int dd = 0; dd < kDpl; ++dd) {
        const int d = lane + 32 * dd;
        if (d < HD) out[grow * HD + d] = __float2bfloat16(o[i][dd] * inv);
      }
    } else {
      const int64_t prow = static_cast<int64_t>(split) * batch.total_tokens * shape.q_heads + grow;
#pragma unroll
      for (int dd = 0; dd < kDpl; ++dd) {
        const int d = lane + 32 * dd;
        if (d < HD) partial_o[prow * HD + d] = o[i][dd];
      }
      if (lane == 0) {
        partial_ml[prow * 2] = m[i];
        partial_ml[prow * 2 + 1] = l[i];
      }
    }
  }
}

__global__ void CombineKernel(const float* __restrict__ partial_o,
                              const float* __restrict__ partial_ml, int splits, int64_t rows,
                              int hd, __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  const int64_t row = blockIdx.x;
  float big = -INFINITY;
  for (int s = 0; s < splits; ++s) big = fmaxf(big, partial_ml[(s * rows + row) * 2]);
  float total = 0.f;
  for (int s = 0; s < splits; ++s) {
    const float ms = partial_ml[(s * rows + row) * 2];
    if (ms != -INFINITY) total += partial_ml[(s * rows + row) * 2 + 1] * expf(ms - big);
  }
  const float inv = total > 0.f ? 1.f / total : 0.f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < splits; ++s) {
      const float ms = partial_ml[(s * rows + row) * 2];
      if (ms != -INFINITY) acc += partial_o[(s * rows + row) * hd + d] * expf(ms - big);
    }
    out[row * hd + d] = __float2bfloat16(acc * inv);
  }
}

template <int HD, bool kTree, class TC>
cudaError_t LaunchAttention(const __nv_bfloat16* q, const TC* k_cache, const TC* v_cache,
                            const AttentionBatch& batch, const AttentionShape& shape, int splits,
                            int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                            int64_t max_smem_bytes, cudaStream_t stream) {
  const int64_t smem = Smem<HD>::kBytes;
  if (smem > max_smem_bytes) return cudaErrorInvalidConfiguration;
  if (smem > 48 * 1024) {
    cudaError_t err =
        cudaFuncSetAttribute(PagedAttentionKernel<HD, kTree, TC>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  dim3 grid(static_cast<unsigned>(batch.num_tiles), static_cast<unsigned>(shape.kv_heads),
            static_cast<unsigned>(splits));
  LaunchKernel(PagedAttentionKernel<HD, kTree, TC>, grid, kWarps * 32, static_cast<size_t>(smem),
               stream, q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o, partial_ml,
               out);
  return cudaGetLastError();
}

// Merges the splits' partial results into `out` (nothing to do with one split).
cudaError_t Combine(const AttentionBatch& batch, const AttentionShape& shape, int splits,
                    const float* partial_o, const float* partial_ml, __nv_bfloat16* out,
                    cudaStream_t stream) {
  if (splits == 1) return cudaSuccess;
  const int64_t rows = static_cast<int64_t>(batch.total_tokens) * shape.q_heads;
  const unsigned combine_threads = shape.head_dim < 128 ? 32 : 128;
  LaunchKernel(CombineKernel, static_cast<unsigned>(rows), combine_threads, 0, stream, partial_o,
               partial_ml, splits, rows, shape.head_dim, out);
  return cudaGetLastError();
}

template <int HD, class TC>
cudaError_t LaunchTyped(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                        const AttentionBatch& batch, const AttentionShape& shape, int splits,
                        int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                        int64_t max_smem_bytes, cudaStream_t stream) {
  const TC* kc = static_cast<const TC*>(k_cache);
  const TC* vc = static_cast<const TC*>(v_cache);
  if (batch.tree_masks != nullptr) {
    return LaunchAttention<HD, true>(q, kc, vc, batch, shape, splits, split_keys, partial_o,
                                     partial_ml, out, max_smem_bytes, stream);
  }
  return LaunchAttention<HD, false>(q, kc, vc, batch, shape, splits, split_keys, partial_o,
                                    partial_ml, out, max_smem_bytes, stream);
}

template <int HD>
cudaError_t Launch(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                   const AttentionBatch& batch, const AttentionShape& shape, int splits,
                   int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                   int64_t max_smem_bytes, cudaStream_t stream) {
  if (shape.cache_dtype == KvCacheDtype::kFp8E4m3) {
    return LaunchTyped<HD, __nv_fp8_e4m3>(q, k_cache, v_cache, batch, shape, splits, split_keys,
                                          partial_o, partial_ml, out, max_smem_bytes, stream);
  }
  return LaunchTyped<HD, __nv_bfloat16>(q, k_cache, v_cache, batch, shape, splits, split_keys,
                                        partial_o, partial_ml, out, max_smem_bytes, stream);
}

cudaError_t LaunchHeadDim(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                          const AttentionBatch& batch, const AttentionShape& shape, int splits,
                          int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                          int64_t max_smem_bytes, cudaStream_t stream) {
  switch (shape.head_dim) {
    case 16:
      return Launch<16>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                        partial_ml, out, max_smem_bytes, stream);
    case 32:
      return Launch<32>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                        partial_ml, out, max_smem_bytes, stream);
    case 64:
      return Launch<64>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                        partial_ml, out, max_smem_bytes, stream);
    case 128:
      return Launch<128>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                         partial_ml, out, max_smem_bytes, stream);
    case 256:
      return Launch<256>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                         partial_ml, out, max_smem_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

int64_t AttentionSmemBytes(int head_dim) {
  switch (head_dim) {
    case 16:
      return Smem<16>::kBytes;
    case 32:
      return Smem<32>::kBytes;
    case 64:
      return Smem<64>::kBytes;
    case 128:
      return Smem<128>::kBytes;
    case 256:
      return Smem<256>::kBytes;
    default:
      return -1;
  }
}

cudaError_t PagedAttention(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                           const AttentionBatch& batch, const AttentionShape& shape, int splits,
                           int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                           int64_t max_smem_bytes, cudaStream_t stream) {
  if (batch.num_tiles == 0) return cudaSuccess;
  if ((batch.tree_masks == nullptr) != (batch.tree_mask_offset == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (shape.kv_heads <= 0 || shape.q_heads % shape.kv_heads != 0 || splits < 1 ||
      (splits > 1 && (split_keys < 0 || split_keys % kKeyTile != 0 || partial_o == nullptr ||
                      partial_ml == nullptr))) {
    return cudaErrorInvalidValue;
  }
  cudaError_t err = cudaSuccess;
  if (shape.tensor_cores && AttentionMmaSupports(batch, shape, max_smem_bytes)) {
    err = PagedAttentionMma(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                            partial_ml, out, max_smem_bytes, stream);
  } else {
    err = LaunchHeadDim(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                        partial_ml, out, max_smem_bytes, stream);
  }
  if (err != cudaSuccess) return err;
  return Combine(batch, shape, splits, partial_o, partial_ml, out, stream);
}

}  // namespace spark::cuda
