// DataClient: a DEALER on rank 0's data plane (engine/shard/leader_loop.h), as the controller
// has: sends GenerateRequest / CancelRequest envelopes and collects the TokenChunks that come
// back, per request id, with bounded waits.
//
// Thread safety: one thread. Ownership: owns its ZMQ context and socket.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::shard::testing {

class DataClient {
 public:
  // `keys` and `server_key`: a CURVE client toward a CURVE server (nullptr = insecure).
  explicit DataClient(const std::string& endpoint, const CurveKeyPair* keys = nullptr,
                      const std::string& server_key = "");

  // Queues one envelope; a peer that never completes the handshake may make this fail.
  Status Send(spark::v1::Envelope envelope);
  void Generate(const spark::v1::GenerateRequest& request);
  void Cancel(const std::string& request_id);

  // The next chunk of `request_id` (others are kept for later), or nullopt after `timeout`.
  std::optional<spark::v1::TokenChunk> Next(const std::string& request_id,
                                            std::chrono::milliseconds timeout);
  // Every chunk of `request_id` up to the final one (empty when none came in time).
  std::vector<spark::v1::TokenChunk> Collect(const std::string& request_id,
                                             std::chrono::milliseconds timeout);

 private:
  ZmqContext context_;
  std::optional<ZmqSocket> socket_;
  uint64_t sequence_ = 0;
  std::vector<spark::v1::TokenChunk> queued_;
};

}  // namespace spark::shard::testing
