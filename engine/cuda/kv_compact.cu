#include "engine/cuda/kv_compact.h"

#include <cstdint>

namespace spark::cuda {
namespace {

constexpr int kThreads = 128;

// One block per (kv head, matrix); each thread owns the same head_dim columns in every move, so
// running the moves in program order is enough (no thread reads what another writes).
// E: an unsigned integer of the element's size (the kernel only copies).
template <class E>
__global__ void __launch_bounds__(kThreads)
    KvCompactKernel(E* __restrict__ base, int64_t matrix_elems, int kv_heads, int block_tokens,
                    int head_dim, const int64_t* __restrict__ moves, int count) {
  const int head = blockIdx.x;
  E* m = base + static_cast<int64_t>(blockIdx.y) * matrix_elems;
  for (int i = 0; i < count; ++i) {
    const int64_t src = moves[2 * i];
    const int64_t dst = moves[2 * i + 1];
    const int64_t src_base =
        ((src / block_tokens * kv_heads + head) * block_tokens + src % block_tokens) * head_dim;
    const int64_t dst_base =
        ((dst / block_tokens * kv_heads + head) * block_tokens + dst % block_tokens) * head_dim;
    for (int d = threadIdx.x; d < head_dim; d += kThreads) m[dst_base + d] = m[src_base + d];
  }
}

}  // namespace

cudaError_t KvCompact(void* base, int elem_bytes, int matrices, int64_t matrix_elems, int kv_heads,
                      int block_tokens, int head_dim, const int64_t* moves, int count,
                      cudaStream_t stream) {
  if (count == 0 || matrices == 0) return cudaSuccess;
  if (base == nullptr || moves == nullptr || count < 0 || matrices < 0 || kv_heads <= 0 ||
      block_tokens <= 0 || head_dim <= 0 || (elem_bytes != 1 && elem_bytes != 2)) {
    return cudaErrorInvalidValue;
  }
  dim3 grid(static_cast<unsigned>(kv_heads), static_cast<unsigned>(matrices));
  if (elem_bytes == 2) {
    KvCompactKernel<<<grid, kThreads, 0, stream>>>(static_cast<uint16_t*>(base), matrix_elems,
                                                   kv_heads, block_tokens, head_dim, moves, count);
  } else {
    KvCompactKernel<<<grid, kThreads, 0, stream>>>(static_cast<uint8_t*>(base), matrix_elems,
                                                   kv_heads, block_tokens, head_dim, moves, count);
  }
  return cudaGetLastError();
}

}  // namespace spark::cuda
