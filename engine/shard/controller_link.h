// ControllerLink: a shard's connection to spark-controller's agent-plane ROUTER (a DEALER with
// routing id `shard/<deployment>/<generation>/<rank>`, see docs/control-plane.md).
//
// The shard sends ShardStatus and rendezvous messages through it and receives RendezvousReply
// answers. Every envelope is stamped by the shard's EnvelopeStamper. Send only queues (ZMQ
// delivers in the background and reconnects by itself if the controller restarts); Close() flushes
// what is queued, waiting at most its linger time, which is how a shard makes sure its last
// status leaves before the process exits. The link has a ZMQ context of its own, so that closing
// it never waits on the shard's other sockets (the watchdog closes it while the engine thread is
// stuck in a collective).
//
// Security: with `keys` set the DEALER is a CURVE client (the agent's key pair, the controller's
// public key); without, plain TCP (--insecure).
//
// Thread safety: all methods may be called from any thread; sends are serialised internally and
// lookups are served one at a time. Ownership: owns its context and socket; the stamper is
// borrowed and must outlive the link.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "common/status.h"
#include "common/zmq.h"
#include "engine/shard/envelope_stamper.h"
#include "spark.pb.h"

namespace spark::shard {

struct ControllerLinkOptions {
  std::string endpoint;               // "tcp://HOST:PORT" of the controller's agent plane
  std::string routing_id;             // "shard/<deployment>/<generation>/<rank>"
  std::optional<CurveKeyPair> keys;   // own (agent's) key pair; nullopt = insecure
  std::string controller_public_key;  // Z85; required with keys
  std::chrono::milliseconds reply_margin{5000};  // extra wait for a reply beyond its timeout
};

class ControllerLink {
 public:
  static Result<std::unique_ptr<ControllerLink>> Connect(const ControllerLinkOptions& options,
                                                         EnvelopeStamper* stamper);
  // Close(kDefaultLinger).
  ~ControllerLink();
  ControllerLink(const ControllerLink&) = delete;
  ControllerLink& operator=(const ControllerLink&) = delete;

  static constexpr std::chrono::milliseconds kDefaultLinger{2000};

  // Stamps and queues one envelope. FailedPrecondition after Close(); Unavailable when the queue
  // is full.
  Status Send(spark::v1::Envelope envelope);

  // Sends `lookup` and waits for the RendezvousReply about its key, up to lookup.timeout_ms plus
  // the reply margin. Unavailable when the controller does not answer in that time (names the
  // endpoint); other messages that arrive meanwhile are logged and dropped.
  Result<spark::v1::RendezvousReply> Lookup(const spark::v1::RendezvousLookup& lookup);

  // Waits up to `linger` for queued envelopes to be sent, then closes the socket and its context.
  // Idempotent.
  void Close(std::chrono::milliseconds linger);

  const std::string& endpoint() const { return options_.endpoint; }
  EnvelopeStamper& stamper() { return *stamper_; }

 private:
  ControllerLink(ControllerLinkOptions options, EnvelopeStamper* stamper)
      : options_(std::move(options)), stamper_(stamper) {}
  void LogUnexpected(const spark::v1::Envelope& envelope);

  const ControllerLinkOptions options_;
  EnvelopeStamper* stamper_;
  std::mutex lookup_mu_;  // one lookup at a time
  std::mutex mu_;         // guards context_ and socket_
  std::unique_ptr<ZmqContext> context_;
  std::optional<ZmqSocket> socket_;
};

}  // namespace spark::shard
