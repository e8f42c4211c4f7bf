#include "engine/cuda/rope.h"

#include <cuda_fp8.h>

#include "engine/cuda/device_math.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxHeadDim = 256;

__device__ __forceinline__ void Store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }
__device__ __forceinline__ void Store(__nv_fp8_e4m3* p, float v) { *p = __nv_fp8_e4m3(v); }

// TC: the cache element type (__nv_bfloat16 or __nv_fp8_e4m3).
template <class TC>
__global__ void QkvRopeKernel(const float* __restrict__ qkv, const int32_t* __restrict__ positions,
                              const int64_t* __restrict__ slots, QkvRopeParams p,
                              __nv_bfloat16* __restrict__ q_out, TC* __restrict__ k_cache,
                              TC* __restrict__ v_cache) {
  PdlBegin();
  __shared__ float buf[kWarps][kMaxHeadDim];
  const int64_t t = blockIdx.x;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int hd = p.head_dim;
  const int heads = p.q_heads + 2 * p.kv_heads;
  const float pos = static_cast<float>(positions[t]);
  const int half = p.rotary_dim / 2;
  const int64_t slot = slots[t];
  const int64_t block = slot / p.block_tokens;
  const int64_t offset = slot - block * p.block_tokens;
  const float* row = qkv + t * static_cast<int64_t>(heads) * hd;
  float* b = buf[warp];
  // Heads are spread over gridDim.y blocks per token (one warp per head), so a decode step's
  // single token does not walk every head in one block.
  for (int h = blockIdx.y * kWarps + warp; h < heads; h += kWarps * gridDim.y) {
    const bool is_q = h < p.q_heads;
    const bool is_k = !is_q && h < p.q_heads + p.kv_heads;
    const int local = is_q ? h : (is_k ? h - p.q_heads : h - p.q_heads - p.kv_heads);
    const float* bias = is_q ? p.q_bias : (is_k ? p.k_bias : p.v_bias);
    const float* norm = is_q ? p.q_norm : (is_k ? p.k_norm : nullptr);
    float sum_sq = 0.f;
    for (int d = lane; d < hd; d += 32) {
      float v = row[static_cast<int64_t>(h) * hd + d];
      if (bias) v += bias[static_cast<int64_t>(local) * hd + d];
      b[d] = v;
      sum_sq += v * v;
    }
    if (norm) {
      const float inv = rsqrtf(WarpSum(sum_sq) / static_cast<float>(hd) + p.eps);
      for (int d = lane; d < hd; d += 32) b[d] = norm[d] * (b[d] * inv);
    }
    __syncwarp();
    __nv_bfloat16* q_dst = is_q ? q_out + (t * p.q_heads + local) * hd : nullptr;
    TC* c_dst = is_q ? nullptr
                     : (is_k ? k_cache : v_cache) +
                           ((block * p.kv_heads + local) * p.block_tokens + offset) * hd;
    for (int d = lane; d < hd; d += 32) {
      float v = b[d];
      if (!is_q && !is_k) {
        // values are not rotated
      } else if (d < half) {
        float s, c;
        sincosf(pos * p.inv_freq[d], &s, &c);
        v = b[d] * c - b[d + half] * s;
      } else if (d < 2 * half) {
        float s, c;
        sincosf(pos * p.inv_freq[d - half], &s, &c);
        v = b[d] * c + b[d - half] * s;
      }
      if (is_q) {
        q_dst[d] = __float2bfloat16(v);
      } else {
        Store(c_dst + d, v);
      }
    }
    __syncwarp();
  }
}

}  // namespace

cudaError_t QkvRopeCacheWrite(const float* qkv, int64_t tokens, const int32_t* positions,
                              const int64_t* slots, const QkvRopeParams& params,
                              __nv_bfloat16* q_out, void* k_cache, void* v_cache,
                              cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (params.head_dim <= 0 || params.head_dim > kMaxHeadDim || params.rotary_dim % 2 != 0 ||
      params.rotary_dim > params.head_dim || params.block_tokens <= 0) {
    return cudaErrorInvalidValue;
  }
  const int heads = params.q_heads + 2 * params.kv_heads;
  const dim3 blocks(static_cast<unsigned>(tokens),
                    static_cast<unsigned>((heads + kWarps - 1) / kWarps));
  if (params.cache_dtype == KvCacheDtype::kFp8E4m3) {
    LaunchKernel(QkvRopeKernel<__nv_fp8_e4m3>, blocks, kWarps * 32, 0, stream, qkv, positions,
                 slots, params, q_out, static_cast<__nv_fp8_e4m3*>(k_cache),
                 static_cast<__nv_fp8_e4m3*>(v_cache));
  } else {
    LaunchKernel(QkvRopeKernel<__nv_bfloat16>, blocks, kWarps * 32, 0, stream, qkv, positions,
                 slots, params, q_out, static_cast<__nv_bfloat16*>(k_cache),
                 static_cast<__nv_bfloat16*>(v_cache));
  }
  return cudaGetLastError();
}

}  // namespace spark::cuda
