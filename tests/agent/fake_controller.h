// FakeController: a stand-in for spark-controller's agent plane in agent tests. A ROUTER socket
// (optionally a CURVE server with a ZAP allow-list) served by its own thread, speaking the wire
// protocol: it records every envelope it receives, answers NodeRegistration and Heartbeat when
// asked to, and sends whatever the test queues.
//
// Thread safety: every public method may be called from the test thread while the server thread
// runs; the socket is used only by the server thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::agent::testing {

struct Received {
  spark::v1::Envelope envelope;
  std::string routing_id;
  std::string peer_key;  // CURVE public key of the sender ("" without CURVE)
  std::chrono::steady_clock::time_point at;
};

class FakeController {
 public:
  struct Options {
    std::string endpoint = "tcp://127.0.0.1:*";
    bool curve = false;
    CurveKeyPair keys;                 // server key pair (curve)
    std::vector<std::string> trusted;  // allowed client public keys (curve)
    uint32_t heartbeat_interval_ms = 100;
    bool ack_registrations = true;
    bool ack_heartbeats = true;  // only from agents registered with this instance
    // Answer heartbeats of agents this instance never registered (a restarted controller that
    // does not know them) with an Error NOT_FOUND.
    bool reject_unknown_heartbeats = false;
  };

  static Result<std::unique_ptr<FakeController>> Start(Options options);
  ~FakeController();

  const std::string& endpoint() const { return endpoint_; }
  uint64_t incarnation() const { return incarnation_; }
  int64_t zap_rejected() const;

  void set_ack_registrations(bool on) { ack_registrations_ = on; }
  void set_ack_heartbeats(bool on) { ack_heartbeats_ = on; }

  // Queues an envelope for `routing_id`; sender_id, incarnation and sequence are filled in.
  void Send(const std::string& routing_id, spark::v1::Envelope envelope);

  std::vector<Received> received() const;
  size_t received_count() const;
  // Waits for a message at index >= `from` that matches; nullopt on timeout.
  std::optional<Received> WaitFor(const std::function<bool(const Received&)>& match,
                                  std::chrono::milliseconds timeout, size_t from = 0) const;
  // Messages at index >= `from` whose body is `body_case`.
  std::vector<Received> Bodies(spark::v1::Envelope::BodyCase body_case, size_t from = 0) const;

  // Closes the socket and stops the thread (a controller crash). Idempotent.
  void Stop();

 private:
  FakeController() = default;
  void Serve();
  void Handle(const Received& r);
  void SendNow(const std::string& routing_id, spark::v1::Envelope envelope);

  Options options_;
  ZmqContext context_;
  std::unique_ptr<ZapAuthenticator> zap_;
  std::optional<ZmqSocket> socket_;
  std::string endpoint_;
  uint64_t incarnation_ = 0;
  uint64_t sequence_ = 1;
  std::atomic<bool> ack_registrations_{true};
  std::atomic<bool> ack_heartbeats_{true};
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::vector<std::string> registered_;  // server thread only

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::vector<Received> received_;
  std::vector<std::pair<std::string, spark::v1::Envelope>> outbox_;
};

// Envelope helpers for tests.
spark::v1::Envelope AssignmentEnvelope(const spark::v1::ShardAssignment& assignment);
spark::v1::Envelope StopEnvelope(const std::string& deployment, uint64_t generation, uint32_t rank,
                                 uint32_t grace_ms);

}  // namespace spark::agent::testing
