// LocalTpGroup: a tensor-parallel group of CPU backends whose ranks are threads of this process.
//
// Create() starts tp_size - 1 worker threads. Every rank (rank 0 on the calling thread) joins a
// GlooCommunicator over loopback through a shared LocalKeyValueStore, loads its own slice of the
// checkpoint with LoadModelWeights(tp_rank), creates its CpuBackend, and then all ranks agree
// (one all-reduce) that every rank is ready; a rank that failed makes Create() fail with its error.
// The workers then run RunTpWorker; rank 0's backend, wrapped in a TpLeaderBackend, is what
// backend() returns for a Scheduler (with tp_size 1 it is the CpuBackend itself, no threads).
//
// Used by `spark-model logits/generate --tp N`, tests and the embedded demo; multi-process and
// multi-node groups (spark-shard) use the same TpLeaderBackend / RunTpWorker pieces.
//
// Thread safety: backend(), KeepAlive() and Shutdown() belong to the thread that called Create().
// Ownership: the group owns the threads, communicators and backends; Shutdown() (or the
// destructor) stops and joins the workers.
#pragma once

#include <filesystem>
#include <memory>
#include <thread>
#include <vector>

#include "common/status.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/loader.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/tp_engine.h"

namespace spark::engine {

struct LocalTpGroupOptions {
  std::filesystem::path model_dir;
  int tp_size = 1;
  LoadOptions load;       // tp_rank / tp_size are set per rank
  CpuBackendOptions cpu;  // threads 0 = hardware threads / tp_size per rank (at least 1)
  GlooOptions gloo;       // loopback; the prefix is made unique per group
};

class LocalTpGroup {
 public:
  static Result<std::unique_ptr<LocalTpGroup>> Create(const LocalTpGroupOptions& options);
  ~LocalTpGroup();
  LocalTpGroup(const LocalTpGroup&) = delete;
  LocalTpGroup& operator=(const LocalTpGroup&) = delete;

  // Rank 0's view of the group: Forward runs on every rank; logits are full-vocabulary.
  Backend* backend();
  const ModelConfig& config() const;
  int tp_size() const { return tp_size_; }
  // Keeps idle workers from timing out (see TpLeaderBackend::KeepAlive).
  Status KeepAlive();
  // Stops and joins the workers; returns the first error of any rank. Idempotent.
  Status Shutdown();

 private:
  struct Shared;
  LocalTpGroup() = default;

  int tp_size_ = 1;
  std::unique_ptr<Shared> shared_;  // store and per-rank results; outlives the joined workers
  std::unique_ptr<GlooCommunicator> comm_;
  std::unique_ptr<CpuBackend> local_;
  std::unique_ptr<TpLeaderBackend> leader_;
  std::vector<std::thread> workers_;
  bool shut_down_ = false;
};

}  // namespace spark::engine
