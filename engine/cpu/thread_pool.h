// ThreadPool: a fixed set of worker threads for the CPU kernels' data parallelism.
//
// ParallelFor splits an index range into chunks and runs them on the workers and the calling
// thread, returning when every chunk is done. A ParallelFor issued from inside a chunk (nested)
// runs inline on the calling worker. Which thread runs which chunk is unspecified, so kernels
// must make each chunk's result independent of the thread that computes it (they do: no
// reductions across chunks), which keeps results bitwise reproducible for any thread count.
//
// Thread safety: ParallelFor may be called from one thread at a time (the owner); concurrent
// callers are serialised. Ownership: the pool owns and joins its threads (RAII).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace spark::engine {

class ThreadPool {
 public:
  // `threads` = total parallelism including the calling thread; <= 0 means
  // std::thread::hardware_concurrency(). threads == 1 runs everything inline.
  explicit ThreadPool(int threads);
  ~ThreadPool();

  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Calls fn(begin, end) on disjoint chunks covering [0, n). Chunks hold at least `grain` indices
  // (except the last); blocks until all chunks finished.
  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  void WorkerLoop();
  void RunChunks();

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises ParallelFor callers
  std::mutex mu_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  uint64_t generation_ = 0;  // guarded by mu_
  bool stop_ = false;        // guarded by mu_
  int active_ = 0;           // workers still inside the current job; guarded by mu_

  // The current job (written under mu_ before generation_ changes).
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_ = 1;
  std::atomic<int64_t> next_{0};
};

}  // namespace spark::engine
