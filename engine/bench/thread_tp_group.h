// ThreadTpGroup: a tensor-parallel group whose ranks are threads of this process, for any
// backend and communicator (CPU + Gloo, CUDA + NCCL with one GPU per rank).
//
// Create() runs `factory(rank)` on rank r's thread (rank 0 on the calling thread); the factory
// joins the communicator and builds the rank's backend. Then every rank agrees (one all-reduce)
// that all ranks are ready; a rank that failed makes Create() fail with its error. Workers then
// run RunTpWorker until Shutdown(); rank 0's backend, wrapped in a TpLeaderBackend, is what
// backend() returns (with one rank: the backend itself, no threads).
//
// Thread safety: backend() and Shutdown() belong to the thread that called Create(). The rank-0
// backend must be used on that thread (its CUDA device stays current there).
// Ownership: the group owns the threads, communicators and backends.
#pragma once

#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/batch_sampler.h"
#include "engine/runtime/tp_engine.h"

namespace spark::bench {

struct RankParts {
  std::unique_ptr<engine::Communicator> comm;  // nullptr with one rank
  std::unique_ptr<engine::Backend> backend;    // borrows comm
  // Rank 0, optional: samples every decode step as serving does (the CUDA backend's GPU
  // sampler, on the backend's device logits). Destroyed before the backend.
  std::unique_ptr<engine::BatchSampler> sampler;
};

// Builds rank `rank`'s communicator (when tp_size > 1) and backend into `parts`, on that rank's
// thread. On an error after the communicator exists, leave it in `parts`: the rank then still
// takes part in the readiness agreement, so the other ranks fail at once instead of timing out.
using RankFactory = std::function<Status(int rank, int tp_size, RankParts* parts)>;

class ThreadTpGroup {
 public:
  static Result<std::unique_ptr<ThreadTpGroup>> Create(int tp_size, RankFactory factory);
  ~ThreadTpGroup();
  ThreadTpGroup(const ThreadTpGroup&) = delete;
  ThreadTpGroup& operator=(const ThreadTpGroup&) = delete;

  engine::Backend* backend();
  // Rank 0's sampler (RankParts::sampler), or nullptr.
  engine::BatchSampler* sampler() { return rank0_.sampler.get(); }
  int tp_size() const { return tp_size_; }
  // Stops and joins the workers; the first error of any rank. Idempotent.
  Status Shutdown();

 private:
  ThreadTpGroup() = default;

  int tp_size_ = 1;
  RankParts rank0_;  // the workers' parts live (and die) on their own threads
  std::unique_ptr<std::vector<Status>> worker_status_;  // slot r written by worker r at its end
  std::unique_ptr<engine::TpLeaderBackend> leader_;
  std::vector<std::thread> workers_;
  bool shut_down_ = false;
};

}  // namespace spark::bench
