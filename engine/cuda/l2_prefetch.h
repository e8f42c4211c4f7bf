// L2Prefetch: asks the device to pull byte ranges of device memory (weights that a later kernel
// of the same step reads) into its L2 cache. A batch-1 decode step spends about a quarter of each
// layer in latency-bound kernels (norms, RoPE, attention over a short context, the router) that
// leave the memory bandwidth idle; a prefetch launched beside them on a second stream moves the
// next GEMV's first weight bytes into L2 meanwhile (CudaBackendOptions::l2_prefetch_percent).
//
// A hint only: nothing is written, no completion is signalled, results never depend on it. Each
// range is prefetched from its first 16-byte boundary to its last (sm_90 and later:
// cp.async.bulk.prefetch.L2 in chunks of kL2PrefetchChunkBytes; earlier devices:
// prefetch.global.L2 per 128-byte line). The kernel returns once every chunk is requested.
// Raw device pointers; stream-ordered; the caller keeps the memory alive until the stream passes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <utility>

#include "engine/cuda/l2_prefetch_plan.h"

namespace spark::cuda {

// Prefetches up to kL2PrefetchMaxRanges ranges (empty ones are skipped); cudaErrorInvalidValue
// for a negative count or size, or more ranges than that.
cudaError_t L2Prefetch(const L2Range* ranges, int count, cudaStream_t stream);

// Prefetches on a side stream forked from a main stream, so they run beside the main stream's
// next kernels: each Prefetch waits for the work queued on `main` so far, then prefetches the
// first budget_bytes of its ranges (taken in order); Join makes `main` wait for every prefetch
// since the last Join (a capture of `main` into a CUDA graph must Join before it ends). Disabled
// (budget 0, the default-constructed state): both do nothing.
// Owns its stream and events (RAII, move-only). Single owner thread.
class L2Prefetcher {
 public:
  L2Prefetcher() = default;
  // budget_bytes <= 0 gives a disabled prefetcher.
  static cudaError_t Create(int64_t budget_bytes, L2Prefetcher* out);
  L2Prefetcher(L2Prefetcher&& other) noexcept { *this = std::move(other); }
  L2Prefetcher& operator=(L2Prefetcher&& other) noexcept;
  L2Prefetcher(const L2Prefetcher&) = delete;
  L2Prefetcher& operator=(const L2Prefetcher&) = delete;
  ~L2Prefetcher() { Reset(); }

  bool enabled() const { return budget_bytes_ > 0; }
  int64_t budget_bytes() const { return budget_bytes_; }
  cudaError_t Prefetch(cudaStream_t main, std::initializer_list<L2Range> ranges);
  cudaError_t Join(cudaStream_t main);
  // After a capture of `main` has ended (also a failed one): its forks went with the graph, so
  // nothing is left to join (a later Join would wait on an event recorded outside any capture).
  void Forget();

 private:
  void Reset();

  cudaStream_t stream_ = nullptr;
  cudaEvent_t fork_ = nullptr;
  cudaEvent_t join_ = nullptr;
  int64_t budget_bytes_ = 0;
  bool forked_ = false;  // a Prefetch since the last Join
};

}  // namespace spark::cuda
