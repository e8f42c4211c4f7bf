// Test doubles for the controller: agents and shards as DEALER sockets speaking the wire proto,
// a rank-0 data plane (ROUTER) that answers GenerateRequests, a temporary directory, and Sync
// for the controller's callback APIs.
//
// Thread safety: FakeAgent/FakeShard are used by the test thread only; FakeDataPlane answers on
// its own thread and its accessors are synchronised.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "common/status.h"
#include "common/zmq.h"
#include "spark.pb.h"
#include "tests/common/temp_dir.h"

namespace spark::controller::testing {

using ::spark::testing::TempDir;

using BodyCase = spark::v1::Envelope::BodyCase;

// A DEALER peer of the controller's agent plane with a given routing id (= sender id).
class FakePeer {
 public:
  FakePeer(ZmqContext& context, std::string routing_id, std::string endpoint,
           const CurveKeyPair* keys = nullptr, const std::string& server_key = "");
  virtual ~FakePeer() = default;

  // Sends an envelope with this peer's sender id, incarnation and next sequence.
  uint64_t Send(spark::v1::Envelope envelope, uint64_t generation = 0);
  // The next message of `body` (others are kept for later waits); nullopt after `timeout`.
  std::optional<spark::v1::Envelope> WaitFor(
      BodyCase body, std::chrono::milliseconds timeout = std::chrono::seconds(5));
  // True when no message of `body` arrives within `timeout` (others are kept).
  bool NothingOf(BodyCase body, std::chrono::milliseconds timeout);
  // Drops every message received so far.
  void Clear();
  // Reconnects to another endpoint (a restarted controller), with a new incarnation when asked.
  void Reconnect(const std::string& endpoint, bool new_incarnation);

  const std::string& routing_id() const { return routing_id_; }
  uint64_t incarnation() const { return incarnation_; }

 private:
  void Open(const std::string& endpoint);
  void Pump(std::chrono::milliseconds timeout);

  ZmqContext& context_;
  std::string routing_id_;
  const CurveKeyPair* keys_;
  std::string server_key_;
  std::optional<ZmqSocket> socket_;
  uint64_t incarnation_;
  uint64_t sequence_ = 0;
  std::deque<spark::v1::Envelope> inbox_;
};

class FakeAgent : public FakePeer {
 public:
  FakeAgent(ZmqContext& context, std::string node, std::string endpoint,
            std::string boot_id = "boot-1", const CurveKeyPair* keys = nullptr,
            const std::string& server_key = "");

  const std::string& node() const { return node_; }
  void set_boot_id(std::string boot_id) { boot_id_ = std::move(boot_id); }
  void set_preflight_failure(std::string check) { preflight_failure_ = std::move(check); }
  // GPUs the registration reports; with any, the node registers with the CUDA backend.
  void set_gpus(std::vector<spark::v1::GpuInfo> gpus) { gpus_ = std::move(gpus); }

  // Registers (with the shards given) and waits for the RegistrationAck.
  std::optional<spark::v1::Envelope> Register(std::vector<spark::v1::ShardSummary> shards = {});
  // Sends a heartbeat listing `shards` (default: the shards this fake runs, see Status) and
  // waits for its ack (nullopt if none came: e.g. an Error instead).
  std::optional<spark::v1::Envelope> Heartbeat(
      std::optional<std::vector<spark::v1::ShardSummary>> shards = std::nullopt);
  void SendHeartbeatNoWait(
      std::optional<std::vector<spark::v1::ShardSummary>> shards = std::nullopt);
  // The shards this fake runs: every assignment reported in a live phase, until reported FAILED
  // or STOPPED (or Forget).
  std::vector<spark::v1::ShardSummary> Running() const;
  void Forget() { running_.clear(); }
  // Reports a shard status of `assignment` as the agent (and tracks it, see Running).
  void Status(const spark::v1::ShardAssignment& assignment, spark::v1::ShardPhase phase,
              const std::string& data_endpoint = "", std::optional<int> signal = std::nullopt,
              std::optional<int> exit_status = std::nullopt, int pid = 0,
              uint64_t generation_override = 0);

 private:
  std::string node_;
  std::string boot_id_;
  std::string preflight_failure_;
  std::vector<spark::v1::GpuInfo> gpus_;
  std::map<std::string, spark::v1::ShardSummary> running_;
};

// Calls `call` with a completion callback and waits (10 s at most, a test failure beyond) for the
// value it is given: the controller's asynchronous APIs (Deploy, Undeploy, ...) made synchronous.
template <typename T>
T Sync(const std::function<void(std::function<void(T)>)>& call) {
  auto promise = std::make_shared<std::promise<T>>();
  std::future<T> future = promise->get_future();
  call([promise](T value) { promise->set_value(std::move(value)); });
  EXPECT_EQ(future.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  return future.get();
}

// The summary an agent reports for a shard of `assignment`.
spark::v1::ShardSummary Summary(const spark::v1::ShardAssignment& assignment,
                                spark::v1::ShardPhase phase, const std::string& data_endpoint = "",
                                int pid = 1000);

class FakeShard : public FakePeer {
 public:
  FakeShard(ZmqContext& context, const std::string& deployment, uint64_t generation, uint32_t rank,
            std::string endpoint);
  void Publish(const std::string& key, const std::string& value);
  void Lookup(const std::string& key, uint32_t timeout_ms);

 private:
  std::string deployment_;
  uint64_t generation_;
  uint32_t rank_;
};

// A rank-0 data plane: answers each GenerateRequest with two chunks (tokens 11, then 12 with
// FINISH_REASON_LENGTH), or with an ERROR chunk when failing.
class FakeDataPlane {
 public:
  explicit FakeDataPlane(ZmqContext& context);
  ~FakeDataPlane();
  const std::string& endpoint() const { return endpoint_; }
  void set_fail(bool fail) { fail_ = fail; }
  // Records requests without answering them.
  void set_silent(bool silent) { silent_ = silent; }
  std::vector<spark::v1::GenerateRequest> requests() const;

 private:
  void Run();
  ZmqSocket socket_;
  std::string endpoint_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> fail_{false};
  std::atomic<bool> silent_{false};
  mutable std::mutex mu_;
  std::vector<spark::v1::GenerateRequest> requests_;
  std::thread thread_;
};

}  // namespace spark::controller::testing
