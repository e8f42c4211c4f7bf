// ThreadCommunicatorGroup: an in-process Communicator for ranks running as threads of one test.
//
// Every collective is a real exchange between the threads: each rank publishes its buffer, a
// barrier waits for all of them, each rank reads every peer's buffer (sum in rank order, so all
// ranks get bitwise identical results), and a second barrier keeps buffers alive until every rank
// has read them.
//
// Thread safety: comm(r) is used by rank r's thread only; the group outlives the ranks' calls.
#pragma once

#include <barrier>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "engine/comm/communicator.h"

namespace spark::engine::testing {

class ThreadCommunicatorGroup {
 public:
  explicit ThreadCommunicatorGroup(int world) : world_(world), barrier_(world), slots_(world) {
    for (int r = 0; r < world; ++r) comms_.push_back(std::make_unique<Rank>(this, r));
  }

  Communicator* comm(int rank) { return comms_[rank].get(); }
  int world_size() const { return world_; }

  // Number of AllReduceSum calls made by rank 0.
  int all_reduces() const { return all_reduces_; }

 private:
  class Rank final : public Communicator {
   public:
    Rank(ThreadCommunicatorGroup* group, int rank) : group_(group), rank_(rank) {}
    int rank() const override { return rank_; }
    int world_size() const override { return group_->world_; }

    Status AllReduceSum(float* data, size_t count) override {
      if (rank_ == 0) ++group_->all_reduces_;
      group_->slots_[rank_] = data;
      group_->barrier_.arrive_and_wait();
      std::vector<float> sum(count, 0.0f);
      for (int r = 0; r < group_->world_; ++r) {
        const float* src = static_cast<const float*>(group_->slots_[r]);
        for (size_t i = 0; i < count; ++i) sum[i] += src[i];
      }
      group_->barrier_.arrive_and_wait();
      std::memcpy(data, sum.data(), count * sizeof(float));
      return Status::Ok();
    }

    Status AllGather(const float* in, size_t count, float* out) override {
      group_->slots_[rank_] = in;
      group_->barrier_.arrive_and_wait();
      for (int r = 0; r < group_->world_; ++r) {
        std::memcpy(out + r * count, group_->slots_[r], count * sizeof(float));
      }
      group_->barrier_.arrive_and_wait();
      return Status::Ok();
    }

    Status Broadcast(void* data, size_t bytes, int root) override {
      if (rank_ == root) group_->slots_[root] = data;
      group_->barrier_.arrive_and_wait();
      if (rank_ != root) std::memcpy(data, group_->slots_[root], bytes);
      group_->barrier_.arrive_and_wait();
      return Status::Ok();
    }

    Status Barrier() override {
      group_->barrier_.arrive_and_wait();
      return Status::Ok();
    }

   private:
    ThreadCommunicatorGroup* group_;
    int rank_;
  };

  int world_;
  std::barrier<> barrier_;
  std::vector<const void*> slots_;
  std::vector<std::unique_ptr<Rank>> comms_;
  int all_reduces_ = 0;
};

// Runs fn(rank, comm) on `world` threads and joins them.
template <typename Fn>
void RunRanks(ThreadCommunicatorGroup* group, Fn fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < group->world_size(); ++r) {
    threads.emplace_back([&, r] { fn(r, group->comm(r)); });
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace spark::engine::testing
