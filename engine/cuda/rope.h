// Attention input preparation, fused: for each token of a fused q/k/v projection output, adds
// the q/k/v biases, applies the per-head q/k RMSNorm (use_qk_norm), the partial NeoX RoPE
// (rotate_half over the first rotary_dim dims of each head, pairs (j, j + rotary_dim / 2),
// angle = float(pos) * inv_freq[j], cos/sin in fp32; dims >= rotary_dim pass through), and
// writes q as BF16 and K/V into the paged cache.
//
// qkv: [tokens, (q_heads + 2 * kv_heads) * head_dim] fp32, q heads first, then k, then v.
// Paged cache layout (one layer): [num_blocks][kv_heads][block_tokens][head_dim] of
// params.cache_dtype (BF16, or FP8 E4M3 rounded to nearest even and saturated);
// slots[t] = block * block_tokens + offset of token t. head_dim <= 256.
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/kv_dtype.h"

namespace spark::cuda {

struct QkvRopeParams {
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int rotary_dim = 0;
  const float* inv_freq = nullptr;  // [rotary_dim / 2]
  const float* q_bias = nullptr;    // [q_heads * head_dim] or nullptr
  const float* k_bias = nullptr;    // [kv_heads * head_dim] or nullptr
  const float* v_bias = nullptr;    // [kv_heads * head_dim] or nullptr
  const float* q_norm = nullptr;    // [head_dim] or nullptr (no qk norm)
  const float* k_norm = nullptr;
  float eps = 1e-6f;
  int block_tokens = 16;
  KvCacheDtype cache_dtype = KvCacheDtype::kBf16;
};

cudaError_t QkvRopeCacheWrite(const float* qkv, int64_t tokens, const int32_t* positions,
                              const int64_t* slots, const QkvRopeParams& params,
                              __nv_bfloat16* q_out, void* k_cache, void* v_cache,
                              cudaStream_t stream);

}  // namespace spark::cuda
