// Embedding lookup: out[t, :] = float(table[ids[t], :]) for a BF16 table [vocab, hidden].
// Raw device pointers; ids must lie in [0, vocab) (the backend validates them on the host).
// Thread safety: stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

cudaError_t EmbeddingLookup(const __nv_bfloat16* table, int64_t hidden, const int32_t* ids,
                            int64_t tokens, float* out, cudaStream_t stream);

}  // namespace spark::cuda
