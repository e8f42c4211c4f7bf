#include "engine/runtime/local_tp_group.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <string>
#include <utility>

namespace spark::engine {
namespace {

std::string UniquePrefix(const std::string& base) {
  static std::atomic<uint64_t> counter{0};
  auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return base + "/local-tp-" + std::to_string(now) + "-" + std::to_string(counter.fetch_add(1));
}

}  // namespace

struct LocalTpGroup::Shared {
  LocalKeyValueStore store;
  std::vector<Status> rank_status;  // one slot per rank, written by that rank only
};

namespace {

struct RankParts {
  std::unique_ptr<GlooCommunicator> comm;
  std::unique_ptr<CpuBackend> backend;
};

// Joins the group, loads the rank's slice and builds its backend, then agrees with every rank on
// readiness. Returns the rank's own error, or FailedPrecondition when only another rank failed
// (that rank's status says why).
Result<RankParts> SetUpRank(int rank, const LocalTpGroupOptions& options, KeyValueStore* store,
                            const GlooOptions& gloo) {
  RankParts parts;
  const int tp = options.tp_size;
  if (tp > 1) {
    SPARK_ASSIGN_OR_RETURN(parts.comm, GlooCommunicator::Create(rank, tp, store, gloo));
  }
  LoadOptions load = options.load;
  load.tp_rank = rank;
  load.tp_size = tp;
  Result<ModelWeights> weights = LoadModelWeights(options.model_dir, load);
  Status own = weights.status();
  CpuBackendOptions cpu = options.cpu;
  if (cpu.threads == 0) {
    cpu.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / tp);
  }
  if (own.ok()) {
    Result<std::unique_ptr<CpuBackend>> backend =
        CpuBackend::Create(std::move(weights).value(), parts.comm.get(), cpu);
    if (backend.ok()) {
      parts.backend = std::move(backend).value();
    } else {
      own = backend.status();
    }
  }
  if (tp > 1) {
    float ready = own.ok() ? 1.0f : 0.0f;
    SPARK_RETURN_IF_ERROR(parts.comm->AllReduceSum(&ready, 1));
    if (own.ok() && ready != static_cast<float>(tp)) {
      return FailedPrecondition("rank " + std::to_string(rank) +
                                ": another rank of the group failed to start");
    }
  }
  if (!own.ok()) return own.WithContext("tensor-parallel rank " + std::to_string(rank));
  return parts;
}

}  // namespace

Result<std::unique_ptr<LocalTpGroup>> LocalTpGroup::Create(const LocalTpGroupOptions& options) {
  if (options.tp_size < 1) {
    return InvalidArgument("tensor-parallel size must be >= 1, got " +
                           std::to_string(options.tp_size));
  }
  std::unique_ptr<LocalTpGroup> group(new LocalTpGroup());
  group->tp_size_ = options.tp_size;
  group->shared_ = std::make_unique<Shared>();
  group->shared_->rank_status.resize(options.tp_size);
  GlooOptions gloo = options.gloo;
  gloo.prefix = UniquePrefix(gloo.prefix);
  Shared* shared = group->shared_.get();

  for (int rank = 1; rank < options.tp_size; ++rank) {
    group->workers_.emplace_back([shared, rank, options, gloo] {
      Result<RankParts> parts = SetUpRank(rank, options, &shared->store, gloo);
      if (!parts.ok()) {
        shared->rank_status[rank] = parts.status();
        return;
      }
      shared->rank_status[rank] = RunTpWorker(parts->backend.get(), parts->comm.get());
      parts->backend.reset();  // before its communicator
    });
  }

  Result<RankParts> parts = SetUpRank(0, options, &shared->store, gloo);
  if (!parts.ok()) {
    for (auto& t : group->workers_) t.join();
    group->workers_.clear();
    group->shut_down_ = true;
    // Prefer the error of the rank that actually failed over "another rank failed".
    Status first = parts.status();
    if (first.code() == StatusCode::kFailedPrecondition) {
      for (const Status& s : shared->rank_status) {
        if (!s.ok() && s.code() != StatusCode::kFailedPrecondition) return s;
      }
    }
    return first;
  }
  group->comm_ = std::move(parts->comm);
  group->local_ = std::move(parts->backend);
  if (options.tp_size > 1) {
    group->leader_ = std::make_unique<TpLeaderBackend>(group->local_.get(), group->comm_.get());
  }
  return group;
}

LocalTpGroup::~LocalTpGroup() { Shutdown().IgnoreError(); }

Backend* LocalTpGroup::backend() {
  if (leader_) return leader_.get();
  return local_.get();
}

const ModelConfig& LocalTpGroup::config() const { return local_->config(); }

Status LocalTpGroup::KeepAlive() { return leader_ ? leader_->KeepAlive() : Status::Ok(); }

Status LocalTpGroup::Shutdown() {
  if (shut_down_) return Status::Ok();
  shut_down_ = true;
  Status result = leader_ ? leader_->Stop() : Status::Ok();
  for (auto& t : workers_) t.join();
  workers_.clear();
  for (const Status& s : shared_->rank_status) {
    if (result.ok() && !s.ok()) result = s;
  }
  leader_.reset();
  local_.reset();
  comm_.reset();
  return result;
}

}  // namespace spark::engine
