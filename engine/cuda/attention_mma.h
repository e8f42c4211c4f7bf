// Tensor-core (mma.sync BF16) variant of PagedAttention (engine/cuda/attention.h) for head_dim
// 128 over a BF16 or FP8 E4M3 cache (converted to BF16 in shared memory) without tree masks: the
// same batch, tiles, splits and outputs, computed
// FlashAttention-2 style. A block takes one tile of 16 (token, head) rows of one kv head (for a
// decode step: the q heads that share the kv head) and one split; its four warps take 16 keys
// each of every 64-key tile (K and V copied to shared memory with cp.async, double-buffered,
// block tables resolved per key), compute S = Q K^T and O += P V with mma.sync m16n8k16 (P
// rounded to BF16, fp32 accumulators, online softmax in fp32 per warp) and merge their partial
// softmax states at the end. Where the CUDA-core kernel spends its time on fp32 dot products
// (12 query heads per kv head do 48 FLOPs per cached element), this one streams the cache.
//
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/attention.h"

namespace spark::cuda {

// Shared memory of one block (Q tile plus two stages of K and V tiles).
int64_t AttentionMmaSmemBytes();

// True when the tensor-core kernel serves this shape and batch within `max_smem_bytes`.
bool AttentionMmaSupports(const AttentionBatch& batch, const AttentionShape& shape,
                          int64_t max_smem_bytes);

// PagedAttention's contract (split_keys as there); cudaErrorInvalidValue when
// !AttentionMmaSupports.
// The main pass only: with splits > 1 the caller merges partial_o / partial_ml (PagedAttention
// does).
cudaError_t PagedAttentionMma(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                              const AttentionBatch& batch, const AttentionShape& shape, int splits,
                              int split_keys, float* partial_o, float* partial_ml,
                              __nv_bfloat16* out, int64_t max_smem_bytes, cudaStream_t stream);

}  // namespace spark::cuda
