#include "controller/data_plane.h"

#include <cstdio>
#include <vector>

#include "common/log.h"
#include "proto/framing.h"

namespace spark::controller {

bool IsFinalChunk(const spark::v1::TokenChunk& chunk) {
  return chunk.finish_reason() != spark::v1::FINISH_REASON_UNSPECIFIED &&
         chunk.finish_reason() != spark::v1::FINISH_REASON_NONE;
}

Result<std::unique_ptr<DataPlaneClient>> DataPlaneClient::Connect(
    ZmqContext& context, const std::string& endpoint, const CurveKeyPair* own_keys,
    const std::string& server_public_key, EnvelopeSequencer& sequencer, uint64_t generation) {
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket, ZmqSocket::Create(context, ZmqSocketType::kDealer));
  // Unique per controller process: a restarted controller must not collide with the routing id
  // of its predecessor's connection, which the shard's ROUTER may not have dropped yet.
  char routing_id[32];
  std::snprintf(routing_id, sizeof(routing_id), "controller-%016llx",
                static_cast<unsigned long long>(sequencer.incarnation()));
  SPARK_RETURN_IF_ERROR(socket.SetRoutingId(routing_id));
  SPARK_RETURN_IF_ERROR(socket.SetMaxMessageBytes(proto::kMaxBodyBytes + 1024));
  SPARK_RETURN_IF_ERROR(socket.SetSendHighWaterMark(100000));
  SPARK_RETURN_IF_ERROR(socket.SetRecvHighWaterMark(100000));
  if (own_keys != nullptr) {
    if (!IsValidCurveKey(server_public_key)) {
      return FailedPrecondition(
          "the rank-0 agent registered no valid CURVE public key, so its data plane cannot be "
          "reached securely; check the agent's keys (agent.pub) or run with --insecure");
    }
    SPARK_RETURN_IF_ERROR(socket.SetCurveClient(*own_keys, server_public_key));
  }
  if (Status st = socket.Connect(endpoint); !st.ok()) {
    return Status(st.code(), "cannot connect to the rank-0 data plane at " + endpoint + ": " +
                                 st.message() +
                                 "; set the agent's --data-listen to an address the controller "
                                 "can reach");
  }
  std::unique_ptr<DataPlaneClient> client(new DataPlaneClient(std::move(socket), sequencer));
  client->endpoint_ = endpoint;
  client->generation_ = generation;
  return client;
}

Status DataPlaneClient::Send(const spark::v1::GenerateRequest& request, ChunkHandler handler) {
  if (!closed_.ok()) return closed_;
  if (handlers_.count(request.request_id())) {
    return AlreadyExists("request id " + request.request_id() + " is already in flight");
  }
  spark::v1::Envelope envelope;
  *envelope.mutable_generate_request() = request;
  sequencer_.Stamp(envelope, generation_);
  SPARK_RETURN_IF_ERROR(socket_.Send({proto::EncodeEnvelope(envelope)}));
  handlers_[request.request_id()] = std::move(handler);
  return Status::Ok();
}

Status DataPlaneClient::Cancel(const std::string& request_id, const std::string& reason) {
  if (!closed_.ok()) return closed_;
  spark::v1::Envelope envelope;
  envelope.mutable_cancel_request()->set_request_id(request_id);
  envelope.mutable_cancel_request()->set_reason(reason);
  sequencer_.Stamp(envelope, generation_);
  return socket_.Send({proto::EncodeEnvelope(envelope)});
}

void DataPlaneClient::OnReadable() {
  for (int i = 0; i < 1024 && closed_.ok(); ++i) {
    Result<std::optional<ZmqMessage>> message = socket_.TryRecv();
    if (!message.ok()) {
      SPARK_LOG(WARN).With("endpoint", endpoint_).With("error", message.status())
          << "data plane receive failed";
      return;
    }
    if (!message->has_value()) return;
    for (const std::string& frame : **message) {
      Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frame);
      if (!envelope.ok()) {
        SPARK_LOG(WARN).With("endpoint", endpoint_).With("error", envelope.status())
            << "dropped an undecodable data-plane frame";
        continue;
      }
      if (!envelope->has_token_chunk()) {
        SPARK_LOG(WARN)
                .With("endpoint", endpoint_)
                .With("message", std::string(proto::BodyName(*envelope)))
            << "dropped an unexpected data-plane message";
        continue;
      }
      spark::v1::TokenChunk& chunk = *envelope->mutable_token_chunk();
      auto it = handlers_.find(chunk.request_id());
      if (it == handlers_.end()) continue;  // cancelled or failed already
      if (IsFinalChunk(chunk)) {
        ChunkHandler handler = std::move(it->second);
        handlers_.erase(it);
        handler(std::move(chunk));
      } else {
        ChunkHandler handler = it->second;  // a copy: the handler may end the client
        handler(std::move(chunk));
      }
      if (!closed_.ok()) return;
    }
  }
}

void DataPlaneClient::FailAll(const Status& status) {
  closed_ = status.ok() ? Unavailable("data plane closed") : status;
  std::map<std::string, ChunkHandler> handlers;
  handlers.swap(handlers_);
  for (auto& [id, handler] : handlers) handler(closed_);
}

}  // namespace spark::controller
