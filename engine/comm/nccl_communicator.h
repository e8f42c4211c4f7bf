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
// One-shot all-reduce (NcclOptions::one_shot_max_bytes): an fp32 device all-reduce of at most
// that many bytes runs as ncclAllGather into a scratch buffer ([world, count]) and a sum over the
// ranks in rank order (RankOrderSum): one step of the network instead of a ring's reduce-scatter
// and all-gather, at world times the bytes, for the small messages of decode steps (a token's
// hidden state: tens of KB). Every rank gets the same bits; they may differ from ncclAllReduce's
// in the last place (another summation order). With one_shot_max_bytes = -1 Create measures both
// at kAllReduceCalibrationBytes (all_reduce_timings(), the slower rank's time counts) and keeps
// the one-shot path up to the largest size from which down both sizes it won.
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
#include <vector>

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
  // fp32 device all-reduces of at most this many bytes run one-shot (all-gather + rank-order
  // sum); 0 = never, -1 = measured at Create (see the contract above); at most
  // kOneShotMaxBytesLimit.
  int64_t one_shot_max_bytes = 0;
};

// Largest one-shot limit accepted (its scratch buffer holds world times the limit).
inline constexpr int64_t kOneShotMaxBytesLimit = int64_t{16} << 20;

// Message sizes the one-shot calibration times (bytes of fp32 data).
inline constexpr int64_t kAllReduceCalibrationBytes[] = {4 << 10, 16 << 10, 64 << 10, 256 << 10,
                                                         1 << 20};

// One calibrated size: mean microseconds per all-reduce, the slowest rank's.
struct AllReduceTiming {
  int64_t bytes = 0;
  double nccl_us = 0;
  double one_shot_us = 0;
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
  // The one-shot limit in force (bytes; 0 = never) and, when it was measured, the timings.
  int64_t one_shot_max_bytes() const;
  const std::vector<AllReduceTiming>& all_reduce_timings() const;
  // Device all-reduces enqueued since Create by each method (the calibration's not counted).
  int64_t one_shot_all_reduces() const;
  int64_t nccl_all_reduces() const;
  // OK while the group works; afterwards the Status that broke it.
  Status health() const;
  cudaStream_t stream() const;
  int device() const;

 private:
  struct Impl;
  explicit NcclCommunicator(std::unique_ptr<Impl> impl);
  // Times ncclAllReduce and the one-shot path at kAllReduceCalibrationBytes (every rank) and sets
  // the one-shot limit from the slowest rank's times.
  Status CalibrateOneShot();
  std::unique_ptr<Impl> impl_;
};

}  // namespace spark::engine
