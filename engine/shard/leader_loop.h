// LeaderLoop: rank 0's serving loop. It owns the data-plane ROUTER (docs/control-plane.md flow 5)
// and the continuous-batching Scheduler, and interleaves on one thread:
//   - draining the data-plane socket (non-blocking): GenerateRequest -> Scheduler::AddRequest,
//     CancelRequest -> Scheduler::Cancel;
//   - Scheduler::Step while there is work, streaming the tokens each step produced as one
//     TokenChunk per request (logprobs when asked; the last chunk carries the finish reason,
//     usage and timings). When a step's logits stayed on the device (GPU sampling), its chunks
//     go out during the next step, right after that step's forward pass is issued, so sending
//     overlaps the GPU's work; a step that leaves no work behind sends its own at once;
//   - TpLeaderBackend::KeepAlive when idle, every `keepalive`, so the workers' op timeout never
//     fires;
//   - with speculative decoding on, the scheduler's SpeculativeStats to `on_speculative_stats`
//     about every `stats_interval` while they change (spark-shard sends them to the controller).
// A request the shard cannot serve (bad parameters, unknown tokens, a duplicate or unknown
// request id, prompt logprobs) is answered with one TokenChunk whose finish reason is ERROR and
// whose error_message says why and what to change. When a chunk cannot be delivered (the peer is
// gone) the request is cancelled.
//
// Run() returns OK after `stop_fd` became readable: every live request got a final CANCELLED
// chunk and the workers were stopped. It returns the engine's error when a step or keepalive
// fails (a collective failed: the group is broken); live requests then get an ERROR chunk.
// Steps and keepalives run inside watchdog scopes when a watchdog is given.
//
// Security: with `server_keys` the ROUTER is a CURVE server (the agent's key pair) whose ZAP
// handler admits only `allowed_client_keys` (the controller's public key).
//
// Thread safety: Create and Run on the engine thread (rank 0's), which owns the backend.
// Ownership: borrows backend, leader, watchdog and stamper; owns its ZMQ context and socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/zmq.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/scheduler.h"
#include "engine/runtime/speculative.h"
#include "engine/runtime/tp_engine.h"
#include "engine/shard/envelope_stamper.h"
#include "engine/shard/watchdog.h"
#include "spark.pb.h"

namespace spark::shard {

struct LeaderLoopOptions {
  std::string bind_endpoint;                     // "tcp://HOST:PORT" or "tcp://HOST:*"
  std::optional<CurveKeyPair> server_keys;       // nullopt = insecure
  std::vector<std::string> allowed_client_keys;  // Z85 public keys (the controller's)
  engine::SchedulerOptions scheduler;
  std::chrono::milliseconds keepalive{1000};
  // With speculative decoding on: called on the engine thread with the scheduler's counters
  // (cumulative) at most every `stats_interval` while they change, and once more after they
  // stopped changing. Null = never.
  std::function<void(const engine::SpeculativeStats&)> on_speculative_stats;
  std::chrono::milliseconds stats_interval{1000};
};

class LeaderLoop {
 public:
  // `backend`: what the scheduler drives (the TpLeaderBackend when tp > 1, else the local
  // backend); `leader`: the TpLeaderBackend or nullptr when tp == 1; `watchdog` may be nullptr.
  static Result<std::unique_ptr<LeaderLoop>> Create(engine::Backend* backend,
                                                    engine::TpLeaderBackend* leader,
                                                    Watchdog* watchdog, EnvelopeStamper* stamper,
                                                    const LeaderLoopOptions& options);
  ~LeaderLoop();
  LeaderLoop(const LeaderLoop&) = delete;
  LeaderLoop& operator=(const LeaderLoop&) = delete;

  // The bound endpoint with its port resolved ("tcp://10.0.0.5:40123"; wildcard host as bound).
  const std::string& bound_endpoint() const { return bound_endpoint_; }

  Status Run(int stop_fd);

  // Requests in flight (for tests and logs).
  size_t live_requests() const { return live_.size(); }

 private:
  using SteadyClock = std::chrono::steady_clock;
  struct Live;

  LeaderLoop() = default;
  void DrainSocket();
  void HandleFrame(const std::string& peer, const std::string& frame);
  void HandleGenerate(const std::string& peer, const spark::v1::GenerateRequest& request);
  void HandleCancel(const std::string& peer, const spark::v1::CancelRequest& cancel);
  void OnOutput(const engine::TokenOutput& output);
  // Sends the chunks the last step produced and drops finished requests.
  void FlushChunks();
  // Sends one envelope to `peer`; false when it cannot be delivered.
  bool SendTo(const std::string& peer, spark::v1::Envelope envelope);
  void SendError(const std::string& peer, const std::string& request_id,
                 const std::string& message);
  // Final chunk with `reason` for every live request, then forgets them.
  void FinishAll(spark::v1::FinishReason reason, const std::string& message);
  Status KeepAlive();
  // Hands the speculative counters to options_.on_speculative_stats when they changed and the
  // interval passed.
  void MaybeReportSpeculativeStats();

  engine::Backend* backend_ = nullptr;
  engine::TpLeaderBackend* leader_ = nullptr;
  Watchdog* watchdog_ = nullptr;
  EnvelopeStamper* stamper_ = nullptr;
  LeaderLoopOptions options_;
  std::string bound_endpoint_;

  // Destroyed in reverse order: socket, authenticator, context.
  std::unique_ptr<ZmqContext> context_;
  std::unique_ptr<ZapAuthenticator> zap_;
  std::optional<ZmqSocket> socket_;
  std::unique_ptr<engine::Scheduler> scheduler_;

  std::map<uint64_t, std::unique_ptr<Live>> live_;  // by engine request id
  std::map<std::string, uint64_t> by_request_id_;   // wire request id -> engine id
  std::vector<uint64_t> touched_;                   // requests with output in the current step
  uint64_t next_engine_id_ = 1;
  SteadyClock::time_point step_started_;
  int64_t reported_verify_steps_ = 0;  // SpeculativeStats::verify_steps last reported
  SteadyClock::time_point next_stats_report_{};
};

}  // namespace spark::shard
