// AgentPlane: the controller's end of the agent plane (docs/control-plane.md): one ROUTER socket
// that agents and shards connect to, with CURVE + a ZAP allow-list of trusted agent keys (or
// plain TCP with --insecure), envelope framing, and the controller's sender identity.
//
// Peers are named by their routing id: "agent/<node>" or "shard/<deployment>/<generation>/<rank>"
// (ParsePeerId). Frames that do not decode, or that come from a routing id of neither form, are
// dropped and logged here; they never reach the reconciler. With CURVE every received message
// carries the sender's authenticated public key (Inbound::peer_key).
//
// Keys (secure mode): `<keys_dir>/controller.key` is the controller's key pair;
// `<keys_dir>/trusted/*.pub` are the agents allowed to connect (re-read by ReloadTrustedKeys, so
// adding an agent needs no restart). `spark-controller keygen --keys DIR` creates the pair.
//
// Thread safety: used by the controller's owner thread only (EnvelopeSequencer is thread-safe).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "common/zmq.h"
#include "spark.pb.h"

namespace spark::controller {

// Stamps the controller's sender id, incarnation and sequence numbers on outgoing envelopes.
class EnvelopeSequencer {
 public:
  EnvelopeSequencer();  // picks a random incarnation
  uint64_t incarnation() const { return incarnation_; }
  // Sets sender_id "controller", sender_incarnation, the next sequence and `generation`.
  void Stamp(spark::v1::Envelope& envelope, uint64_t generation);

 private:
  uint64_t incarnation_;
  std::atomic<uint64_t> sequence_{0};
};

struct PeerId {
  enum class Kind { kAgent, kShard };
  Kind kind = Kind::kAgent;
  std::string node;        // kAgent
  std::string deployment;  // kShard
  uint64_t generation = 0;
  uint32_t rank = 0;
};
// "agent/<node>" or "shard/<deployment>/<generation>/<rank>"; InvalidArgument otherwise.
Result<PeerId> ParsePeerId(const std::string& routing_id);
std::string ShardRoutingId(const std::string& deployment, uint64_t generation, uint32_t rank);

struct AgentPlaneOptions {
  std::string listen = "tcp://0.0.0.0:7440";
  bool insecure = false;
  std::string keys_dir = "/etc/spark/keys";
  std::chrono::milliseconds zmtp_heartbeat{1000};  // ZMTP ping; a peer silent 3x this is dropped
};

// Reads `<keys_dir>/controller.key`; the error says how to create it.
Result<CurveKeyPair> LoadControllerKeys(const std::string& keys_dir);
// Public keys of `<keys_dir>/trusted/*.pub` (unreadable files are skipped with a warning).
std::vector<std::string> LoadTrustedKeys(const std::string& keys_dir);

class AgentPlane {
 public:
  static Result<std::unique_ptr<AgentPlane>> Create(ZmqContext& context,
                                                    const AgentPlaneOptions& options,
                                                    EnvelopeSequencer& sequencer);

  ZmqSocket& socket() { return socket_; }
  // The bound endpoint with the port resolved.
  const std::string& endpoint() const { return endpoint_; }
  // The controller's key pair (nullptr with --insecure).
  const CurveKeyPair* keys() const { return keys_ ? &*keys_ : nullptr; }
  bool insecure() const { return !keys_.has_value(); }

  // Stamps and sends `envelope` to the peer with `routing_id` (Unavailable when not connected).
  Status Send(const std::string& routing_id, spark::v1::Envelope envelope, uint64_t generation);

  struct Inbound {
    std::string routing_id;
    PeerId peer;
    std::string peer_key;  // authenticated CURVE public key; "" with --insecure
    spark::v1::Envelope envelope;
  };
  // The next valid message if one is queued (never blocks). Invalid messages are dropped (counted
  // in dropped()) and the next one is tried.
  std::optional<Inbound> TryReceive();

  // Re-reads the trusted keys directory into the ZAP allow-list (no-op with --insecure).
  void ReloadTrustedKeys();
  uint64_t dropped() const { return dropped_; }

 private:
  AgentPlane(ZmqSocket socket, EnvelopeSequencer& sequencer)
      : socket_(std::move(socket)), sequencer_(sequencer) {}

  std::unique_ptr<ZapAuthenticator> zap_;  // declared before socket_: destroyed after it
  ZmqSocket socket_;
  EnvelopeSequencer& sequencer_;
  std::optional<CurveKeyPair> keys_;
  std::string keys_dir_;
  std::string endpoint_;
  uint64_t dropped_ = 0;
};

}  // namespace spark::controller
