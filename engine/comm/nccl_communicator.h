// NcclCommunicator: the Communicator of the CUDA backend, over NCCL (one CUDA device per rank).
//
// Create() joins a group of `world` ranks: rank 0 makes the NCCL unique id and publishes it in a
// KeyValueStore under `prefix`; every rank records that it joined and initialises a
// non-blocking communicator (ncclConfig_t::blocking = 0), polling it until it is ready or
// `init_timeout_ms` passes. On the deadline the pending communicator is aborted and Create()
// fails with DeadlineExceeded naming the ranks that never joined.
//
// Collectives: AllReduceSum / AllGather / Broadcast take device pointers (enqueued on stream(),
// stream-ordered, returning before they complete) or host pointers (staged through a device
// buffer; the call returns when the result is in host memory). AllGather on device memory and
// Barrier also wait for completion, so a collective that failed or hung surfaces on the host at
// least once per step. Every enqueued collective is tracked by a watchdog thread: one that has not
// completed after `op_timeout_ms` (a peer died or desynchronised), or an asynchronous NCCL error
// (ncclCommGetAsyncError), aborts the communicator (ncclCommAbort, which also releases the
// kernels waiting on the stream). From then on every call returns the Status naming the
// operation and the cause (DeadlineExceeded or Unavailable); the group must be recreated.
//
// Thread safety: one thread per communicator (its rank's engine loop); the watchdog thread is
// internal. Ownership: the communicator owns its NCCL communicator, its staging buffer, its
// watchdog thread and (unless NcclOptions::stream is given) its stream. `store` is used during
// Create() only.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "common/status.h"
#include "engine/comm/communicator.h"

namespace spark::engine {

struct NcclOptions {
  int device = 0;  // the CUDA device of this rank
  // Stream for every collective; nullptr = the communicator creates its own (non-blocking).
  cudaStream_t stream = nullptr;
  // Time allowed for every rank to join and for NCCL to set the group up.
  int64_t init_timeout_ms = 60000;
  // Time one collective may take from enqueue to completion before the group is aborted.
  int64_t op_timeout_ms = 60000;
  // Key prefix in the store (e.g. deployment/generation), so a stale group never mixes in.
  std::string prefix = "spark";
};

enum class DeviceDtype { kFloat32, kBFloat16 };

class NcclCommunicator final : public Communicator {
 public:
  // Errors: InvalidArgument (bad rank/world/device), DeadlineExceeded (ranks that never joined,
  // named), Internal (CUDA/NCCL failures).
  static Result<std::unique_ptr<NcclCommunicator>> Create(int rank, int world, KeyValueStore* store,
                                                          const NcclOptions& options);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int world_size() const override;
  Status AllReduceSum(float* data, size_t count) override;
  Status AllGather(const float* in, size_t count, float* out) override;
  Status Broadcast(void* data, size_t bytes, int root) override;
  Status Barrier() override;
  // Device collectives record into a graph during capture; a replay is watched like one
  // collective (op_timeout_ms from the launch).
  bool SupportsGraphCapture() const override { return true; }
  void SetCapturing(bool capturing) override;
  Status WatchReplay(const char* op) override;

  // In-place sum of `count` elements of device memory, enqueued on stream().
  Status AllReduceSumDevice(void* data, size_t count, DeviceDtype dtype);
  // Waits until every collective enqueued so far has completed (or the group was aborted).
  Status Synchronize();
  // OK while the group works; afterwards the Status that broke it.
  Status health() const;
  cudaStream_t stream() const;
  int device() const;

 private:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spark::engine
