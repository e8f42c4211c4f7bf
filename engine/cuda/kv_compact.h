// KvCompact: moves entries inside the paged KV cache (speculative decoding keeps the accepted
// path of a verified tree and drops the rest; engine/runtime/backend.h KeepCacheEntries).
//
// The cache is `matrices` matrices (K and V of every layer: matrix m starts at base + m *
// matrix_elems elements), each [num_blocks][kv_heads][block_tokens][head_dim] elements of
// `elem_bytes` bytes (2: BF16, 1: FP8). Slots are
// block * block_tokens + offset, as the cache writes use them. For every matrix and kv head, the
// moves (src[i], dst[i]) = (moves[2 * i], moves[2 * i + 1]) run in order i = 0, 1, ..., so a move
// may read a slot that an earlier move wrote (compaction downwards: dst[i] <= src[i] and both
// ascending). Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

cudaError_t KvCompact(void* base, int elem_bytes, int matrices, int64_t matrix_elems, int kv_heads,
                      int block_tokens, int head_dim, const int64_t* moves, int count,
                      cudaStream_t stream);

}  // namespace spark::cuda
