// DataPlaneClient: the controller's connection to the rank-0 shard of one run (a DEALER to the
// shard's data-plane ROUTER; CURVE client with the controller's key pair and the rank-0 agent's
// public key, or plain TCP with --insecure).
//
// Send() issues a GenerateRequest and registers a handler that receives every TokenChunk of that
// request in order. The last call of a handler is either a chunk whose finish_reason is not NONE
// or an error Status (FailAll: the run ended, the controller stops); after it the handler is
// dropped. Cancel() sends a CancelRequest; the shard then finishes the request with CANCELLED.
//
// Handlers run on the owner thread inside OnReadable/FailAll and may call back into the client
// (Send, Cancel, FailAll), including FailAll from within a handler: the client never touches a
// handler map it is iterating.
//
// Thread safety: used by the controller's owner thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "common/status.h"
#include "common/zmq.h"
#include "controller/agent_plane.h"
#include "spark.pb.h"

namespace spark::controller {

using ChunkHandler = std::function<void(Result<spark::v1::TokenChunk>)>;

// True for a chunk that ends its request.
bool IsFinalChunk(const spark::v1::TokenChunk& chunk);

class DataPlaneClient {
 public:
  // Connects (asynchronously: messages queue until the connection is up). `own_keys` nullptr means
  // insecure; otherwise `server_public_key` is the rank-0 agent's CURVE key.
  static Result<std::unique_ptr<DataPlaneClient>> Connect(
      ZmqContext& context, const std::string& endpoint, const CurveKeyPair* own_keys,
      const std::string& server_public_key, EnvelopeSequencer& sequencer, uint64_t generation);

  ZmqSocket& socket() { return socket_; }
  const std::string& endpoint() const { return endpoint_; }

  Status Send(const spark::v1::GenerateRequest& request, ChunkHandler handler);
  Status Cancel(const std::string& request_id, const std::string& reason);
  bool Has(const std::string& request_id) const { return handlers_.count(request_id) > 0; }
  size_t pending() const { return handlers_.size(); }

  // Drains the socket and dispatches chunks.
  void OnReadable();
  // Ends every pending request with `status`; later sends fail with it too.
  void FailAll(const Status& status);

 private:
  DataPlaneClient(ZmqSocket socket, EnvelopeSequencer& sequencer)
      : socket_(std::move(socket)), sequencer_(sequencer) {}

  ZmqSocket socket_;
  EnvelopeSequencer& sequencer_;
  std::string endpoint_;
  uint64_t generation_ = 0;
  std::map<std::string, ChunkHandler> handlers_;
  Status closed_;  // not OK once FailAll ran
};

}  // namespace spark::controller
