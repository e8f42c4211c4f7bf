// Communicator: the collectives that tensor parallelism needs, behind one interface.
// Implementations: GlooCommunicator (CPU backend, engine/comm/gloo_communicator.h) and
// NcclCommunicator (CUDA backend). Every rank of a group must call the same collectives in the
// same order with the same sizes.
//
// Thread safety: one thread per communicator (the rank's engine thread).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/status.h"

namespace spark::engine {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  // In-place sum over all ranks.
  virtual Status AllReduceSum(float* data, size_t count) = 0;
  // Concatenates every rank's `count` floats in rank order into `out` (world_size * count).
  virtual Status AllGather(const float* in, size_t count, float* out) = 0;
  // Copies `bytes` from `root` to every rank.
  virtual Status Broadcast(void* data, size_t bytes, int root) = 0;
  virtual Status Barrier() = 0;

  // CUDA graph capture of a step's device collectives (CudaBackend's decode graphs): true when
  // the collectives on device pointers are stream-ordered with no host wait, so that they can
  // be recorded into a graph. The caller brackets the capture with SetCapturing(true / false)
  // (nothing is watched then: the recorded operations have not run) and calls
  // WatchReplay(op) after each launch of the graph, so the replay's collectives are watched as
  // one operation named `op`.
  virtual bool SupportsGraphCapture() const { return false; }
  virtual void SetCapturing(bool /*capturing*/) {}
  virtual Status WatchReplay(const char* /*op*/) { return Status::Ok(); }
};

// KeyValueStore: the rendezvous store a group uses to exchange addresses. The controller serves
// one for a cluster; LocalKeyValueStore serves ranks of one machine. Thread-safe.
class KeyValueStore {
 public:
  virtual ~KeyValueStore() = default;
  virtual Status Set(const std::string& key, const std::string& value) = 0;
  // Blocks until `key` exists or `timeout_ms` passes (DeadlineExceeded naming the key).
  virtual Result<std::string> Get(const std::string& key, int64_t timeout_ms) = 0;
};

}  // namespace spark::engine
