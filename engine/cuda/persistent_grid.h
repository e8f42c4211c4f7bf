// Grids of persistent kernels (blocks that loop over work items, pass p of block b taking item
// b + p * grid): at most every multiprocessor's resident blocks, with the items spread evenly over
// the passes so that no pass is left nearly empty.
//
// Thread safety: safe from any thread (a mutex guards the record of occupancies asked).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace spark::cuda {

// Blocks for `items` work items when `slots` blocks fit on the device at once (at least one slot
// counts): ceil(items / passes) with passes = ceil(items / slots).
int64_t BalancedPersistentGrid(int64_t items, int64_t slots);

// *blocks = the blocks of `kernel` (`threads` per block, `smem_bytes` of dynamic shared memory)
// resident on one multiprocessor of the current device: asked once per kernel, block size, shared
// memory and device (0 where the kernel cannot run, not recorded). CUDA's error when a query
// fails.
cudaError_t OccupancyPerSm(const void* kernel, int threads, size_t smem_bytes, int* blocks);

// *slots = the blocks of `kernel` (`threads` per block, no dynamic shared memory) resident on the
// current device at once: OccupancyPerSm times the multiprocessors.
cudaError_t ResidentBlocks(const void* kernel, int threads, int64_t* slots);

template <class Kernel>
cudaError_t ResidentBlocks(Kernel* kernel, int threads, int64_t* slots) {
  return ResidentBlocks(reinterpret_cast<const void*>(kernel), threads, slots);
}

}  // namespace spark::cuda
