#include "engine/cuda/attention_mma.h"

#include <cuda_fp8.h>

#include <atomic>
#include <cmath>
#include <cstdint>

#include "engine/cuda/attention_tile.cuh"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

using mma::CpAsync16;
using mma::CpAsyncCommit;
using mma::CpAsyncWait;
using mma::LdMatrixX4;
using mma::LdMatrixX4Trans;
using mma::Mma;
using mma::SmemAddr;

constexpr int kHd = 128;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kAttentionRowsPerTile;  // 16: the mma's M
constexpr int kKeyTile = 64;                  // 16 keys per warp
constexpr int kRowBytes = kHd * 2;            // one BF16 row of Q, K or V
constexpr int kChunks = kRowBytes / 16;       // 16-byte chunks per row
constexpr int kQBytes = kRows * kRowBytes;
constexpr int kTileBytes = kKeyTile * kRowBytes;
constexpr int kStageBytes = 2 * kTileBytes;  // K then V
constexpr int kSmemBytes = kQBytes + 2 * kStageBytes;
// FP8 E4M3 cache: the raw tiles (128 bytes per key) are copied in two stages at the start of the
// stage area, and converted into one BF16 K/V tile pair at its second half before each tile's
// mma work.
constexpr int kRawRowBytes = kHd;
constexpr int kRawChunks = kRawRowBytes / 16;
constexpr int kRawTileBytes = kKeyTile * kRawRowBytes;
constexpr int kRawStageBytes = 2 * kRawTileBytes;
static_assert(2 * kRawStageBytes <= kStageBytes, "raw FP8 stages fit the first BF16 stage");
constexpr int kDTiles = kHd / 8;  // n8 tiles of the output
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// The cross-warp merge after the loop reuses the stage area.
static_assert(kWarps * kRows * (kHd + 2) * 4 <= 2 * kStageBytes, "merge area");

// Byte offset of 16-byte chunk `c` of row `r` in a tile of kRowBytes rows: the chunk index is
// XORed with the row's low three bits, so the eight rows an ldmatrix reads hit distinct banks.
__device__ __forceinline__ int Swizzle(int r, int c) {
  return r * kRowBytes + ((c ^ (r & 7)) << 4);
}

__device__ __forceinline__ uint32_t PackBf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Eight FP8 E4M3 values (one 8-byte half of a raw chunk) as eight BF16 values.
__device__ __forceinline__ uint4 Fp8x8ToBf16(uint2 raw) {
  const __nv_fp8x2_storage_t* q2 = reinterpret_cast<const __nv_fp8x2_storage_t*>(&raw);
  uint32_t out[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(q2[e], __NV_E4M3)));
    out[e] = PackBf16(f.x, f.y);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// TC: the cache element type (__nv_bfloat16, or __nv_fp8_e4m3 converted to BF16 in shared
// memory).
template <class TC>
__global__ void __launch_bounds__(kThreads)
    PagedAttentionMmaKernel(const __nv_bfloat16* __restrict__ q, const TC* __restrict__ kc,
                            const TC* __restrict__ vc, AttentionBatch batch, AttentionShape shape,
                            int splits, int split_keys, float* __restrict__ partial_o,
                            float* __restrict__ partial_ml, __nv_bfloat16* __restrict__ out) {
  PdlBegin();
  extern __shared__ __align__(128) uint8_t smem[];
  uint8_t* qs = smem;
  uint8_t* stages = smem + kQBytes;

  const AttentionTileWork work = AttentionTileFor(batch, shape, splits, split_keys);
  const int row_begin = work.row_begin;
  const int row_end = work.row_end;
  const int g = blockIdx.y;
  const int split = blockIdx.z;
  const int group = work.group;
  const int start = work.start;
  const int offset = work.offset;
  const int key_begin = work.key_begin;
  const int key_end = work.key_end;
  const int* table = work.table;
  const int bt = shape.block_tokens;
  const int tid = threadIdx.x;
  const int warp = tid >> 5;
  const int lane = tid & 31;

  constexpr bool kFp8 = sizeof(TC) == 1;
  // K and V rows of the tile at `kt` into stage `s` (BF16: swizzled, ready for ldmatrix; FP8:
  // raw rows); keys past key_end are zero-filled.
  auto load_tile = [&](int s, int kt) {
    constexpr int chunks = kFp8 ? kRawChunks : kChunks;
    constexpr int elems = 16 / sizeof(TC);
    const uint32_t kdst = SmemAddr(stages + s * (kFp8 ? kRawStageBytes : kStageBytes));
    const uint32_t vdst = kdst + (kFp8 ? kRawTileBytes : kTileBytes);
    for (int i = tid; i < kKeyTile * chunks; i += kThreads) {
      const int j = i / chunks;
      const int c = i - j * chunks;
      const int key = kt + j;
      const bool valid = key < key_end;
      int64_t src = 0;
      if (valid) {
        const int block = __ldg(table + key / bt);
        src =
            ((static_cast<int64_t>(block) * shape.kv_heads + g) * bt + key % bt) * kHd + c * elems;
      }
      const int dst = kFp8 ? j * kRawRowBytes + c * 16 : Swizzle(j, c);
      CpAsync16(kdst + dst, kc + src, valid);
      CpAsync16(vdst + dst, vc + src, valid);
    }
  };
  // FP8: the raw tile of stage `s` into the BF16 tile pair (zeros stay zeros).
  uint8_t* converted = stages + kStageBytes;
  auto convert_tile = [&](int s) {
    const uint8_t* raw = stages + s * kRawStageBytes;
    for (int i = tid; i < 2 * kKeyTile * kRawChunks; i += kThreads) {
      const int which = i / (kKeyTile * kRawChunks);  // 0: K, 1: V
      const int rest = i - which * kKeyTile * kRawChunks;
      const int j = rest / kRawChunks;
      const int c = rest - j * kRawChunks;
      const uint4 v =
          *reinterpret_cast<const uint4*>(raw + which * kRawTileBytes + j * kRawRowBytes + c * 16);
      uint8_t* dst = converted + which * kTileBytes;
      *reinterpret_cast<uint4*>(dst + Swizzle(j, 2 * c)) = Fp8x8ToBf16(make_uint2(v.x, v.y));
      *reinterpret_cast<uint4*>(dst + Swizzle(j, 2 * c + 1)) = Fp8x8ToBf16(make_uint2(v.z, v.w));
    }
  };
  if (key_begin < key_end) load_tile(0, key_begin);
  CpAsyncCommit();

  // The tile's query rows into shared memory (zeros past row_end).
  for (int i = tid; i < kRows * kChunks; i += kThreads) {
    const int r = i / kChunks;
    const int c = i - r * kChunks;
    const int row = row_begin + r;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (row < row_end) {
      const int token = row / group;
      const int head = g * group + row % group;
      v = __ldg(reinterpret_cast<const uint4*>(
          q + (static_cast<int64_t>(offset + token) * shape.q_heads + head) * kHd + c * 8));
    }
    *reinterpret_cast<uint4*>(qs + Swizzle(r, c)) = v;
  }
  __syncthreads();
  uint32_t qa[kHd / 16][4];
#pragma unroll
  for (int ks = 0; ks < kHd / 16; ++ks) {
    const int r = lane & 15;
    const int c = ks * 2 + (lane >> 4);
    LdMatrixX4(SmemAddr(qs + Swizzle(r, c)), qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3]);
  }

  // This thread's accumulator rows: r0 = lane / 4 (c0, c1) and r0 + 8 (c2, c3).
  const int r0 = lane >> 2;
  int qpos[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int row = row_begin + r0 + 8 * h;
    qpos[h] = row < row_end ? start + row / group : -1;
  }
  float o[kDTiles][4];
#pragma unroll
  for (int t = 0; t < kDTiles; ++t) o[t][0] = o[t][1] = o[t][2] = o[t][3] = 0.f;
  float m[2] = {-INFINITY, -INFINITY};  // running max of the scaled scores, log2 units
  float l[2] = {0.f, 0.f};
  const float scale_log2 = shape.scale * kLog2e;

  int stage = 0;
  for (int kt = key_begin; kt < key_end; kt += kKeyTile) {
    if (kt + kKeyTile < key_end) load_tile(stage ^ 1, kt + kKeyTile);
    CpAsyncCommit();
    CpAsyncWait<1>();
    __syncthreads();
    if constexpr (kFp8) {
      convert_tile(stage);
      __syncthreads();
    }
    const uint8_t* ks_tile = kFp8 ? converted : stages + stage * kStageBytes;
    const uint8_t* vs_tile = ks_tile + kTileBytes;

    // S = Q K^T over this warp's 16 keys: two n8 tiles.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < kHd / 16; ++ks) {
      const int j = warp * 16 + (lane & 7) + ((lane >> 4) << 3);
      const int c = ks * 2 + ((lane >> 3) & 1);
      uint32_t b00, b01, b10, b11;
      LdMatrixX4(SmemAddr(ks_tile + Swizzle(j, c)), b00, b01, b10, b11);
      Mma<false>(s[0], qa[ks], b00, b01);
      Mma<false>(s[1], qa[ks], b10, b11);
    }

    // Masks and the online softmax of rows r0 (h = 0) and r0 + 8 (h = 1).
    float p[2][4];
    float alpha[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int key = kt + warp * 16 + n * 8 + 2 * (lane & 3) + e;
          const bool valid = key < key_end && key <= qpos[h];
          float& v = s[n][2 * h + e];
          v = valid ? v * scale_log2 : -INFINITY;
          mx = fmaxf(mx, v);
        }
      }
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      alpha[h] = m_new == -INFINITY ? 1.f : (m[h] == -INFINITY ? 0.f : exp2f(m[h] - m_new));
      float sum = 0.f;
#pragma unroll
      for (int n = 0; n < 2; ++n) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float v = s[n][2 * h + e];
          const float pv = v == -INFINITY ? 0.f : exp2f(v - m_new);
          p[n][2 * h + e] = pv;
          sum += pv;
        }
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      sum += __shfl_xor_sync(0xffffffffu, sum, 2);
      l[h] = l[h] * alpha[h] + sum;
      m[h] = m_new;
    }
#pragma unroll
    for (int t = 0; t < kDTiles; ++t) {
      o[t][0] *= alpha[0];
      o[t][1] *= alpha[0];
      o[t][2] *= alpha[1];
      o[t][3] *= alpha[1];
    }

    // O += P V: P (16 rows x this warp's 16 keys) as the A fragment, V^T fragments by
    // ldmatrix.trans.
    const uint32_t pa[4] = {PackBf16(p[0][0], p[0][1]), PackBf16(p[0][2], p[0][3]),
                            PackBf16(p[1][0], p[1][1]), PackBf16(p[1][2], p[1][3])};
#pragma unroll
    for (int dn = 0; dn < kDTiles / 2; ++dn) {
      const int j = warp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
      const int c = dn * 2 + (lane >> 4);
      uint32_t b0, b1, b2, b3;
      LdMatrixX4Trans(SmemAddr(vs_tile + Swizzle(j, c)), b0, b1, b2, b3);
      Mma<false>(o[2 * dn], pa, b0, b1);
      Mma<false>(o[2 * dn + 1], pa, b2, b3);
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
    stage ^= 1;
  }
  CpAsyncWait<0>();
  __syncthreads();

  // Merge the four warps' softmax states: [warp][row][kHd] outputs, then [warp][row] (m, l).
  float* mo = reinterpret_cast<float*>(stages);
  float* mml = mo + kWarps * kRows * kHd;
#pragma unroll
  for (int t = 0; t < kDTiles; ++t) {
    const int d = t * 8 + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float* dst = mo + (warp * kRows + r0 + 8 * h) * kHd + d;
      dst[0] = o[t][2 * h];
      dst[1] = o[t][2 * h + 1];
    }
  }
  if ((lane & 3) == 0) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      mml[(warp * kRows + r0 + 8 * h) * 2] = m[h];
      mml[(warp * kRows + r0 + 8 * h) * 2 + 1] = l[h];
    }
  }
  __syncthreads();
  for (int i = tid; i < kRows * kHd; i += kThreads) {
    const int r = i / kHd;
    const int d = i - r * kHd;
    const int row = row_begin + r;
    if (row >= row_end) continue;
    float big = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) big = fmaxf(big, mml[(w * kRows + r) * 2]);
    float total = 0.f;
    float acc = 0.f;
    if (big != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float mw = mml[(w * kRows + r) * 2];
        if (mw == -INFINITY) continue;
        const float f = exp2f(mw - big);
        total += mml[(w * kRows + r) * 2 + 1] * f;
        acc += mo[(w * kRows + r) * kHd + d] * f;
      }
    }
    const int token = offset + row / group;
    const int head = g * group + row % group;
    const int64_t grow = static_cast<int64_t>(token) * shape.q_heads + head;
    if (splits == 1) {
      out[grow * kHd + d] = __float2bfloat16(total > 0.f ? acc / total : 0.f);
    } else {
      // Unnormalised, relative to the natural-log running max, as the combine step expects.
      const int64_t prow = static_cast<int64_t>(split) * batch.total_tokens * shape.q_heads + grow;
      partial_o[prow * kHd + d] = acc;
      if (d == 0) {
        partial_ml[prow * 2] = big == -INFINITY ? -INFINITY : big * kLn2;
        partial_ml[prow * 2 + 1] = total;
      }
    }
  }
}

}  // namespace

int64_t AttentionMmaSmemBytes() { return kSmemBytes; }

bool AttentionMmaSupports(const AttentionBatch& batch, const AttentionShape& shape,
                          int64_t max_smem_bytes) {
  return shape.head_dim == kHd && batch.tree_masks == nullptr && kSmemBytes <= max_smem_bytes;
}

namespace {

// Raises the kernel's dynamic shared memory limit once per device (the first launch on a device
// comes from an eager step, before any decode graph is captured).
template <class TC>
cudaError_t EnsureSmemLimit() {
  static std::atomic<uint64_t> done{0};
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  const uint64_t bit = device < 64 ? uint64_t{1} << device : 0;
  if (bit != 0 && (done.load(std::memory_order_acquire) & bit) != 0) return cudaSuccess;
  err = cudaFuncSetAttribute(PagedAttentionMmaKernel<TC>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, kSmemBytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_release);
  return err;
}

template <class TC>
cudaError_t LaunchMma(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                      const AttentionBatch& batch, const AttentionShape& shape, int splits,
                      int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                      cudaStream_t stream) {
  const cudaError_t err = EnsureSmemLimit<TC>();
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(batch.num_tiles), static_cast<unsigned>(shape.kv_heads),
                  static_cast<unsigned>(splits));
  LaunchKernel(PagedAttentionMmaKernel<TC>, grid, kThreads, kSmemBytes, stream, q,
               static_cast<const TC*>(k_cache), static_cast<const TC*>(v_cache), batch, shape,
               splits, split_keys, partial_o, partial_ml, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t PagedAttentionMma(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                              const AttentionBatch& batch, const AttentionShape& shape, int splits,
                              int split_keys, float* partial_o, float* partial_ml,
                              __nv_bfloat16* out, int64_t max_smem_bytes, cudaStream_t stream) {
  if (!AttentionMmaSupports(batch, shape, max_smem_bytes)) return cudaErrorInvalidValue;
  if (batch.num_tiles == 0) return cudaSuccess;
  if (shape.cache_dtype == KvCacheDtype::kFp8E4m3) {
    return LaunchMma<__nv_fp8_e4m3>(q, k_cache, v_cache, batch, shape, splits, split_keys,
                                    partial_o, partial_ml, out, stream);
  }
  return LaunchMma<__nv_bfloat16>(q, k_cache, v_cache, batch, shape, splits, split_keys, partial_o,
                                  partial_ml, out, stream);
}

}  // namespace spark::cuda
