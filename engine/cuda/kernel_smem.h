// Raising a kernel's dynamic shared-memory limit above the default 48 KB, once per kernel and
// device: cudaFuncSetAttribute is a host call that need not repeat on every launch, and a launch
// inside a CUDA graph capture should not make it. The first launch of a kernel comes from an
// eager step (prefill, or a test), before any decode graph is captured.
//
// Thread safety: safe from any thread (a mutex guards the record of limits set).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace spark::cuda {

// Lets `kernel` launch with `bytes` of dynamic shared memory on the current device: a no-op up to
// 48 KB and for a kernel already allowed as much; otherwise cudaFuncSetAttribute's error, if any.
cudaError_t AllowDynamicSmem(const void* kernel, size_t bytes);

template <class Kernel>
cudaError_t AllowDynamicSmem(Kernel* kernel, size_t bytes) {
  return AllowDynamicSmem(reinterpret_cast<const void*>(kernel), bytes);
}

}  // namespace spark::cuda
