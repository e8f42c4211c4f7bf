// FakeController: the controller side of the shard protocol, for tests of spark-shard. A ROUTER
// bound on tcp://127.0.0.1 (ephemeral port; CURVE server with a ZAP allow-list when keys are
// given) that records every envelope, serves the rendezvous key-value store like the real broker
// (RendezvousPublish stores, RendezvousLookup is answered when the key appears or, at its timeout,
// with an error naming the ranks that have published nothing), and lets the test wait for
// conditions with bounded waits.
//
// Thread safety: all methods may be called from the test thread while the controller's own
// thread serves the socket. Ownership: owns its context, socket and thread.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::shard::testing {

struct ReceivedEnvelope {
  std::string peer;  // routing id
  spark::v1::Envelope envelope;
};

class FakeController {
 public:
  struct Options {
    uint32_t world_size = 1;
    std::optional<CurveKeyPair> keys;  // CURVE server key pair; nullopt = insecure
    std::vector<std::string> trusted;  // client public keys the ZAP handler accepts
  };

  explicit FakeController(uint32_t world_size, std::optional<CurveKeyPair> keys = std::nullopt,
                          std::vector<std::string> trusted = {})
      : FakeController(Options{world_size, std::move(keys), std::move(trusted)}) {}
  explicit FakeController(const Options& options);
  ~FakeController();
  FakeController(const FakeController&) = delete;
  FakeController& operator=(const FakeController&) = delete;

  const std::string& endpoint() const { return endpoint_; }

  std::vector<ReceivedEnvelope> Received() const;
  // ShardStatus bodies received from `rank`, in arrival order.
  std::vector<spark::v1::ShardStatus> Statuses(uint32_t rank) const;
  // The first status of `rank` in `phase`, waiting up to `timeout`.
  std::optional<spark::v1::ShardStatus> WaitForPhase(uint32_t rank, spark::v1::ShardPhase phase,
                                                     std::chrono::milliseconds timeout) const;
  // Waits until `predicate` (called under the lock, with every envelope so far) holds.
  bool WaitFor(const std::function<bool(const std::vector<ReceivedEnvelope>&)>& predicate,
               std::chrono::milliseconds timeout) const;
  std::map<std::string, std::string> Store() const;

 private:
  struct PendingLookup {
    std::string peer;
    spark::v1::RendezvousLookup lookup;
    std::chrono::steady_clock::time_point deadline;
  };

  void Run();
  void Handle(const std::string& peer, const std::string& frame);
  void Reply(const std::string& peer, spark::v1::RendezvousReply reply);
  void ExpireLookups();

  Options options_;
  ZmqContext context_;
  std::unique_ptr<ZapAuthenticator> zap_;
  std::optional<ZmqSocket> socket_;  // used by the thread only after construction
  std::string endpoint_;
  uint64_t sequence_ = 0;

  mutable std::mutex mu_;
  mutable std::condition_variable changed_;
  std::vector<ReceivedEnvelope> received_;    // guarded by mu_
  std::map<std::string, std::string> store_;  // guarded by mu_
  std::set<uint32_t> published_ranks_;        // guarded by mu_
  std::vector<PendingLookup> pending_;        // thread only
  bool stop_ = false;                         // guarded by mu_
  std::thread thread_;
};

}  // namespace spark::shard::testing
