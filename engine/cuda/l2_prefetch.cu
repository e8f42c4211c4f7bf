#include "engine/cuda/l2_prefetch.h"

#include <algorithm>
#include <cstdint>

namespace spark::cuda {
namespace {

constexpr int kThreads = 32;
// Blocks at most: enough to spread the chunks over every SM's copy engine.
constexpr int64_t kMaxBlocks = 512;

__device__ __forceinline__ void PrefetchChunk(const uint8_t* p, uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(p), "r"(bytes) : "memory");
#else
  for (uint32_t off = 0; off < bytes; off += 128) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p + off));
  }
#endif
}

// One thread per chunk of kL2PrefetchChunkBytes; consecutive chunks go to consecutive blocks
// (so to different SMs' copy engines), grid-stride.
__global__ void __launch_bounds__(kThreads) L2PrefetchKernel(L2PrefetchPlan plan) {
  const int64_t total = plan.first_chunk[plan.count];
  for (int64_t c = int64_t{threadIdx.x} * gridDim.x + blockIdx.x; c < total;
       c += int64_t{gridDim.x} * kThreads) {
    const L2Chunk chunk = L2PrefetchChunkAt(plan, c);
    PrefetchChunk(chunk.data, static_cast<uint32_t>(chunk.bytes));
  }
}

}  // namespace

cudaError_t L2Prefetch(const L2Range* ranges, int count, cudaStream_t stream) {
  L2PrefetchPlan plan;
  if (!PlanL2Prefetch(ranges, count, &plan)) return cudaErrorInvalidValue;
  if (plan.count == 0) return cudaSuccess;
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(plan.chunks(), kMaxBlocks));
  L2PrefetchKernel<<<blocks, kThreads, 0, stream>>>(plan);
  return cudaGetLastError();
}

cudaError_t L2Prefetcher::Create(int64_t budget_bytes, L2Prefetcher* out) {
  *out = L2Prefetcher();
  if (budget_bytes <= 0) return cudaSuccess;
  L2Prefetcher p;
  cudaError_t err = cudaStreamCreateWithFlags(&p.stream_, cudaStreamNonBlocking);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&p.fork_, cudaEventDisableTiming);
  if (err == cudaSuccess) err = cudaEventCreateWithFlags(&p.join_, cudaEventDisableTiming);
  if (err != cudaSuccess) return err;  // p releases what it made
  p.budget_bytes_ = budget_bytes;
  *out = std::move(p);
  return cudaSuccess;
}

L2Prefetcher& L2Prefetcher::operator=(L2Prefetcher&& other) noexcept {
  if (this != &other) {
    Reset();
    stream_ = std::exchange(other.stream_, nullptr);
    fork_ = std::exchange(other.fork_, nullptr);
    join_ = std::exchange(other.join_, nullptr);
    budget_bytes_ = std::exchange(other.budget_bytes_, 0);
    forked_ = std::exchange(other.forked_, false);
  }
  return *this;
}

void L2Prefetcher::Reset() {
  if (stream_ != nullptr) {
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }
  if (fork_ != nullptr) cudaEventDestroy(fork_);
  if (join_ != nullptr) cudaEventDestroy(join_);
  stream_ = nullptr;
  fork_ = join_ = nullptr;
  budget_bytes_ = 0;
  forked_ = false;
}

cudaError_t L2Prefetcher::Prefetch(cudaStream_t main, std::initializer_list<L2Range> ranges) {
  if (!enabled()) return cudaSuccess;
  if (ranges.size() > static_cast<size_t>(kL2PrefetchMaxRanges)) return cudaErrorInvalidValue;
  L2Range clipped[kL2PrefetchMaxRanges];
  int count = 0;
  int64_t left = budget_bytes_;
  for (const L2Range& r : ranges) {
    if (left <= 0) break;
    if (r.data == nullptr || r.bytes <= 0) continue;
    clipped[count] = {r.data, std::min(r.bytes, left)};
    left -= clipped[count].bytes;
    ++count;
  }
  if (count == 0) return cudaSuccess;
  cudaError_t err = cudaEventRecord(fork_, main);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(stream_, fork_, 0);
  // From here the side stream follows `main` (and joins a capture of it): Join must follow, even
  // when the prefetch itself fails to launch.
  if (err == cudaSuccess) forked_ = true;
  if (err == cudaSuccess) err = L2Prefetch(clipped, count, stream_);
  return err;
}

void L2Prefetcher::Forget() { forked_ = false; }

cudaError_t L2Prefetcher::Join(cudaStream_t main) {
  if (!forked_) return cudaSuccess;
  cudaError_t err = cudaEventRecord(join_, stream_);
  if (err == cudaSuccess) err = cudaStreamWaitEvent(main, join_, 0);
  if (err == cudaSuccess) forked_ = false;
  return err;
}

}  // namespace spark::cuda
