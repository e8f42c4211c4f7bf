// Programmatic dependent launch (PDL; sm_90 and later, GB10's sm_121 included): a kernel launched
// with it may be scheduled while the kernel before it in the stream still runs, so that its
// launch latency and block scheduling overlap the predecessor's tail instead of following it.
// Decode steps at small batches are chains of short kernels whose gaps are a large part of the
// step; PDL removes most of them (also inside CUDA graphs, which record the programmatic edges).
//
// Contract for kernels launched through LaunchKernel: they call PdlWaitForPrecedingKernels()
// (engine/cuda/programmatic_launch.cuh), which returns once every preceding kernel of the stream
// has completed and its memory is visible, before they read anything a preceding kernel writes
// and before they write anything (a predecessor may still read it). Only data no kernel of the
// stream writes (weights, scales) may be loaded before it: the FP8 GEMV starts streaming its
// weights that way. They then call PdlAllowDependentLaunch() so that the next kernel may be
// scheduled. A kernel therefore starts only after its predecessor got past its own wait: what the
// kernels two or more launches back wrote is complete when it starts, and may be read before the
// wait through L2 (ld.global.cg, never a possibly stale L1 line); the MoE down GEMV reads the
// router's expert ids that way to start streaming the experts' weights. Both are no-ops when the
// kernel was launched without PDL and before sm_90.
//
// Whether LaunchKernel uses PDL is a per-thread setting (a backend's forward runs on its rank's
// thread): ProgrammaticLaunchScope turns it on or off for a scope; the default is off.
//
// Thread safety: the setting is thread-local; LaunchKernel is reentrant.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace spark::cuda {

namespace internal {
inline thread_local bool programmatic_launch = false;
}  // namespace internal

// Sets this thread's PDL setting for the scope's lifetime; the previous one comes back after.
class ProgrammaticLaunchScope {
 public:
  explicit ProgrammaticLaunchScope(bool on) : previous_(internal::programmatic_launch) {
    internal::programmatic_launch = on;
  }
  ~ProgrammaticLaunchScope() { internal::programmatic_launch = previous_; }
  ProgrammaticLaunchScope(const ProgrammaticLaunchScope&) = delete;
  ProgrammaticLaunchScope& operator=(const ProgrammaticLaunchScope&) = delete;

 private:
  bool previous_;
};

inline bool ProgrammaticLaunchOn() { return internal::programmatic_launch; }

// kernel<<<grid, block, smem_bytes, stream>>>(args...), with programmatic stream serialization
// when this thread's setting is on (see the contract above). Returns the launch's error.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchKernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem_bytes,
                         cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  config.attrs = attr;
  config.numAttrs = ProgrammaticLaunchOn() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace spark::cuda
