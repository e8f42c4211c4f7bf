#include "engine/shard/controller_link.h"

#include <utility>

#include "common/log.h"
#include "proto/framing.h"

namespace spark::shard {
namespace {

using SteadyClock = std::chrono::steady_clock;

// How long one receive slice holds the socket; other threads' sends wait at most this long.
constexpr std::chrono::milliseconds kReceiveSlice{20};

}  // namespace

Result<std::unique_ptr<ControllerLink>> ControllerLink::Connect(
    const ControllerLinkOptions& options, EnvelopeStamper* stamper) {
  if (options.endpoint.empty()) {
    return InvalidArgument("no controller endpoint; pass --controller tcp://HOST:PORT");
  }
  if (options.keys && !IsValidCurveKey(options.controller_public_key)) {
    return InvalidArgument(
        "the controller's public key is not a 40-character Z85 CURVE key; check "
        "controller.pub in the keys directory");
  }
  std::unique_ptr<ControllerLink> link(new ControllerLink(options, stamper));
  link->context_ = std::make_unique<ZmqContext>();
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket,
                         ZmqSocket::Create(*link->context_, ZmqSocketType::kDealer));
  SPARK_RETURN_IF_ERROR(socket.SetRoutingId(options.routing_id));
  SPARK_RETURN_IF_ERROR(socket.SetSendHighWaterMark(100000));
  if (options.keys) {
    SPARK_RETURN_IF_ERROR(socket.SetCurveClient(*options.keys, options.controller_public_key));
  }
  Status connected = socket.Connect(options.endpoint);
  if (!connected.ok()) {
    return connected.WithContext("connecting to the controller at " + options.endpoint +
                                 " (check --controller)");
  }
  link->socket_.emplace(std::move(socket));
  return link;
}

ControllerLink::~ControllerLink() { Close(kDefaultLinger); }

Status ControllerLink::Send(spark::v1::Envelope envelope) {
  stamper_->Stamp(envelope);
  std::string frame = proto::EncodeEnvelope(envelope);
  std::lock_guard<std::mutex> lock(mu_);
  if (!socket_) return FailedPrecondition("the controller link is closed");
  return socket_->Send({std::move(frame)});
}

Result<spark::v1::RendezvousReply> ControllerLink::Lookup(
    const spark::v1::RendezvousLookup& lookup) {
  std::lock_guard<std::mutex> lookup_lock(lookup_mu_);
  spark::v1::Envelope request;
  *request.mutable_rendezvous_lookup() = lookup;
  SPARK_RETURN_IF_ERROR(Send(std::move(request)));
  const auto deadline =
      SteadyClock::now() + std::chrono::milliseconds(lookup.timeout_ms()) + options_.reply_margin;
  while (SteadyClock::now() < deadline) {
    Result<ZmqMessage> message = DeadlineExceeded("");
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!socket_) return FailedPrecondition("the controller link is closed");
      message = socket_->Recv(kReceiveSlice);
    }
    if (!message.ok()) {
      if (message.status().code() == StatusCode::kDeadlineExceeded) continue;
      return message.status().WithContext("receiving from the controller");
    }
    if (message->size() != 1) {
      SPARK_LOG(WARN).With("frames", message->size()) << "dropped a controller message";
      continue;
    }
    Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope((*message)[0]);
    if (!envelope.ok()) {
      SPARK_LOG(WARN).With("status", envelope.status()) << "dropped an undecodable frame";
      continue;
    }
    if (envelope->has_rendezvous_reply() && envelope->rendezvous_reply().key() == lookup.key()) {
      return envelope->rendezvous_reply();
    }
    LogUnexpected(*envelope);
  }
  return Unavailable("the controller at " + options_.endpoint +
                     " did not answer the rendezvous lookup of key '" + lookup.key() + "' within " +
                     std::to_string(lookup.timeout_ms()) + " ms + " +
                     std::to_string(options_.reply_margin.count()) +
                     " ms; check that spark-controller runs there and trusts this node's key");
}

void ControllerLink::LogUnexpected(const spark::v1::Envelope& envelope) {
  if (envelope.has_error()) {
    SPARK_LOG(WARN).With("code", static_cast<int>(envelope.error().code()))
        << "controller error: " << envelope.error().message();
  } else if (envelope.has_rendezvous_reply() && !envelope.rendezvous_reply().error().empty()) {
    SPARK_LOG(WARN).With("key", envelope.rendezvous_reply().key())
        << "rendezvous error: " << envelope.rendezvous_reply().error();
  } else {
    SPARK_LOG(DEBUG).With("body", proto::BodyName(envelope)) << "ignored a controller message";
  }
}

void ControllerLink::Close(std::chrono::milliseconds linger) {
  std::lock_guard<std::mutex> lock(mu_);
  if (socket_) {
    try {
      socket_->raw().set(zmq::sockopt::linger, static_cast<int>(linger.count()));
    } catch (const zmq::error_t& e) {
      SPARK_LOG(WARN) << "cannot set linger on the controller socket: " << e.what();
    }
    socket_.reset();
  }
  // Terminating the context waits (up to the linger) until the queued messages are sent.
  context_.reset();
}

}  // namespace spark::shard
