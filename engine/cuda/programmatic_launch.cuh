// Device side of programmatic dependent launch (engine/cuda/programmatic_launch.h): the two calls
// a kernel launched through LaunchKernel makes at its start.
//
// Thread safety: device functions without state.
#pragma once

#include "engine/cuda/programmatic_launch.h"

namespace spark::cuda {

// Returns once the preceding kernels of the stream have completed and their writes are
// visible. A no-op without PDL (the launch already waited) and before sm_90.
__device__ __forceinline__ void PdlWaitForPrecedingKernels() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream be scheduled (it still waits for this one to complete
// before touching memory). A no-op before sm_90.
__device__ __forceinline__ void PdlAllowDependentLaunch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Both, as the first statement of a kernel.
__device__ __forceinline__ void PdlBegin() {
  PdlWaitForPrecedingKernels();
  PdlAllowDependentLaunch();
}

}  // namespace spark::cuda
