// WatchedCommunicator: a Communicator decorator that runs every collective of the wrapped one
// inside a Watchdog scope, so a collective that hangs (a peer stopped, a network black hole) is
// caught by the shard's watchdog even when the transport's own timeout does not fire.
//
// Thread safety: as Communicator, one thread. Ownership: borrows the communicator and watchdog.
#pragma once

#include "engine/comm/communicator.h"
#include "engine/shard/watchdog.h"

namespace spark::shard {

class WatchedCommunicator final : public engine::Communicator {
 public:
  WatchedCommunicator(engine::Communicator* inner, Watchdog* watchdog)
      : inner_(inner), watchdog_(watchdog) {}

  int rank() const override { return inner_->rank(); }
  int world_size() const override { return inner_->world_size(); }
  Status AllReduceSum(float* data, size_t count) override {
    Watchdog::Scope scope = watchdog_->Watch("AllReduceSum");
    return inner_->AllReduceSum(data, count);
  }
  Status AllGather(const float* in, size_t count, float* out) override {
    Watchdog::Scope scope = watchdog_->Watch("AllGather");
    return inner_->AllGather(in, count, out);
  }
  Status Broadcast(void* data, size_t bytes, int root) override {
    Watchdog::Scope scope = watchdog_->Watch("Broadcast");
    return inner_->Broadcast(data, bytes, root);
  }
  Status Barrier() override {
    Watchdog::Scope scope = watchdog_->Watch("Barrier");
    return inner_->Barrier();
  }

 private:
  engine::Communicator* inner_;
  Watchdog* watchdog_;
};

}  // namespace spark::shard
