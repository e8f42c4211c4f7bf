#include "engine/bench/thread_tp_group.h"

#include <string>
#include <utility>

namespace spark::bench {
namespace {

// Builds the rank and agrees with every rank on readiness. Returns the rank's own error, or
// FailedPrecondition when only another rank failed (that rank's status says why).
Result<RankParts> SetUpRank(int rank, int tp, const RankFactory& factory) {
  RankParts parts;
  Status own = factory(rank, tp, &parts);
  if (own.ok() && parts.backend == nullptr) own = Internal("the rank factory made no backend");
  if (tp > 1 && parts.comm != nullptr) {
    float ready = own.ok() ? 1.0f : 0.0f;
    SPARK_RETURN_IF_ERROR(parts.comm->AllReduceSum(&ready, 1));
    if (own.ok() && ready != static_cast<float>(tp)) {
      return FailedPrecondition("rank " + std::to_string(rank) +
                                ": another rank of the group failed to start");
    }
  } else if (tp > 1 && own.ok()) {
    own = Internal("the rank factory made no communicator");
  }
  if (!own.ok()) return own.WithContext("tensor-parallel rank " + std::to_string(rank));
  return parts;
}

}  // namespace

Result<std::unique_ptr<ThreadTpGroup>> ThreadTpGroup::Create(int tp_size, RankFactory factory) {
  if (tp_size < 1) {
    return InvalidArgument("tensor-parallel size must be >= 1, got " + std::to_string(tp_size));
  }
  std::unique_ptr<ThreadTpGroup> group(new ThreadTpGroup());
  group->tp_size_ = tp_size;
  group->worker_status_ = std::make_unique<std::vector<Status>>(tp_size);
  std::vector<Status>* statuses = group->worker_status_.get();
  for (int r = 1; r < tp_size; ++r) {
    group->workers_.emplace_back([r, tp_size, factory, statuses] {
      Result<RankParts> parts = SetUpRank(r, tp_size, factory);
      if (!parts.ok()) {
        (*statuses)[r] = parts.status();
        return;
      }
      (*statuses)[r] = engine::RunTpWorker(parts->backend.get(), parts->comm.get());
      parts->backend.reset();
      parts->comm.reset();
    });
  }
  Result<RankParts> mine = SetUpRank(0, tp_size, factory);
  if (!mine.ok()) {
    for (std::thread& t : group->workers_) t.join();
    group->workers_.clear();
    group->shut_down_ = true;
    Status first = mine.status();
    // Prefer the rank that failed on its own over "another rank failed".
    if (first.code() == StatusCode::kFailedPrecondition) {
      for (const Status& s : *statuses) {
        if (!s.ok() && s.code() != StatusCode::kFailedPrecondition) return s;
      }
    }
    return first;
  }
  group->rank0_ = std::move(mine).value();
  if (tp_size > 1) {
    group->leader_ = std::make_unique<engine::TpLeaderBackend>(group->rank0_.backend.get(),
                                                               group->rank0_.comm.get());
  }
  return group;
}

ThreadTpGroup::~ThreadTpGroup() { Shutdown().IgnoreError(); }

engine::Backend* ThreadTpGroup::backend() {
  return leader_ ? static_cast<engine::Backend*>(leader_.get()) : rank0_.backend.get();
}

Status ThreadTpGroup::Shutdown() {
  if (shut_down_) return Status::Ok();
  shut_down_ = true;
  Status first = Status::Ok();
  if (leader_) first = leader_->Stop();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  for (const Status& s : *worker_status_) {
    if (first.ok() && !s.ok()) first = s;
  }
  leader_.reset();
  rank0_.sampler.reset();
  rank0_.backend.reset();
  rank0_.comm.reset();
  return first;
}

}  // namespace spark::bench
