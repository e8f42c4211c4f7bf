// Paged causal GQA attention over the KV cache, for prefill chunks and decode steps alike.
//
// The batch is a list of chunks; chunk c has len[c] query tokens at positions start[c] ..
// start[c] + len[c] - 1, stored from row offset[c] of q / out, and its K/V (already written for
// positions 0 .. start[c] + len[c] - 1) in the blocks block_tables[c * max_blocks + i]. Query head
// h reads kv head h / (q_heads / kv_heads). scores = (q . k) * scale, masked causally, softmax in
// fp32 with the online (running max / sum) formulation over key tiles, so memory is linear in
// the sequence length. Work is split into tiles of 16 (token, head) rows of one kv head and,
// when `splits` > 1, along the keys (split-K for long contexts with few queries): each split
// writes an unnormalised partial result and AttentionCombine merges them.
//
// Tree chunks (speculative verification): a chunk with a tree mask stores its tokens' K/V at
// positions start .. start + len - 1 in chunk order like any chunk, but token i sees the keys
// before `start` and, among the chunk's own keys, only those its mask row marks (its ancestors
// and itself) instead of every earlier one.
//
// q / out: [tokens, q_heads * head_dim] BF16. Cache layout (one layer): [num_blocks][kv_heads]
// [block_tokens][head_dim] of shape.cache_dtype (BF16 or FP8 E4M3, converted to fp32 on load).
// head_dim in {16, 32, 64, 128, 256}.
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/kv_dtype.h"

namespace spark::cuda {

constexpr int kAttentionRowsPerTile = 16;

struct AttentionBatch {
  const int32_t* start = nullptr;         // [chunks]
  const int32_t* len = nullptr;           // [chunks]
  const int32_t* offset = nullptr;        // [chunks]
  const int32_t* block_tables = nullptr;  // [chunks, max_blocks]
  int max_blocks = 0;
  // Work tiles: (chunk, first row) pairs; rows of a chunk are token-major, head-minor within the
  // kv head's group: row r -> token r / group, q head kv_head * group + r % group.
  const int2* tiles = nullptr;
  int num_tiles = 0;
  int total_tokens = 0;
  // Tree masks (nullptr = every chunk causal): tree_mask_offset[c] is -1 for a causal chunk, else
  // the first word of chunk c's masks in tree_masks, one row of ceil(len[c] / 32) words per
  // token; bit j of token i's row set = chunk token j is visible to token i (j <= i).
  const int32_t* tree_mask_offset = nullptr;  // [chunks]
  const uint32_t* tree_masks = nullptr;
};

struct AttentionShape {
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int block_tokens = 16;
  float scale = 1.f;
  KvCacheDtype cache_dtype = KvCacheDtype::kBf16;
  // The tensor-core kernel (engine/cuda/attention_mma.h) where it applies: head_dim 128, no tree
  // masks, its shared memory within max_smem_bytes; else the CUDA-core kernel.
  bool tensor_cores = false;
};

// Keys per split are `split_keys` (a multiple of 32) when splits > 1; split_keys 0 divides each
// chunk's own keys evenly among the splits (in multiples of 32), so one launch shape serves every
// context length (CUDA graphs); splits left without keys contribute nothing. partial_o: [splits,
// total_tokens * q_heads, head_dim] fp32 and partial_ml: [splits, total_tokens * q_heads, 2]
// (running max, sum); both unused when splits == 1. max_smem_bytes caps the shared memory of a
// block (the kernel needs (3 * 16 + 32) * head_dim * 4 bytes + padding).
cudaError_t PagedAttention(const __nv_bfloat16* q, const void* k_cache, const void* v_cache,
                           const AttentionBatch& batch, const AttentionShape& shape, int splits,
                           int split_keys, float* partial_o, float* partial_ml, __nv_bfloat16* out,
                           int64_t max_smem_bytes, cudaStream_t stream);

// Shared memory one attention block needs for a head_dim.
int64_t AttentionSmemBytes(int head_dim);

}  // namespace spark::cuda
