#include "tests/engine/shard/data_client.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <utility>

#include "proto/framing.h"

namespace spark::shard::testing {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

DataClient::DataClient(const std::string& endpoint, const CurveKeyPair* keys,
                       const std::string& server_key) {
  socket_.emplace(ZmqSocket::Create(context_, ZmqSocketType::kDealer).value());
  EXPECT_TRUE(socket_->SetRoutingId("controller-data").ok());
  if (keys != nullptr) {
    EXPECT_TRUE(socket_->SetCurveClient(*keys, server_key).ok());
  }
  EXPECT_TRUE(socket_->Connect(endpoint).ok());
}

Status DataClient::Send(spark::v1::Envelope envelope) {
  envelope.set_sender_id("controller");
  envelope.set_sequence(++sequence_);
  envelope.set_sender_incarnation(7);
  return socket_->Send({proto::EncodeEnvelope(envelope)}, milliseconds(1000));
}

void DataClient::Generate(const spark::v1::GenerateRequest& request) {
  spark::v1::Envelope envelope;
  *envelope.mutable_generate_request() = request;
  EXPECT_TRUE(Send(std::move(envelope)).ok());
}

void DataClient::Cancel(const std::string& request_id) {
  spark::v1::Envelope envelope;
  envelope.mutable_cancel_request()->set_request_id(request_id);
  envelope.mutable_cancel_request()->set_reason("test");
  EXPECT_TRUE(Send(std::move(envelope)).ok());
}

std::optional<spark::v1::TokenChunk> DataClient::Next(const std::string& request_id,
                                                      milliseconds timeout) {
  const auto until = SteadyClock::now() + timeout;
  while (true) {
    for (auto it = queued_.begin(); it != queued_.end(); ++it) {
      if (it->request_id() == request_id) {
        spark::v1::TokenChunk chunk = *it;
        queued_.erase(it);
        return chunk;
      }
    }
    const auto left = std::chrono::duration_cast<milliseconds>(until - SteadyClock::now());
    if (left.count() <= 0) return std::nullopt;
    auto message = socket_->Recv(left);
    if (!message.ok()) continue;
    auto envelope = proto::DecodeEnvelope(message->at(0));
    EXPECT_TRUE(envelope.ok());
    if (envelope.ok() && envelope->has_token_chunk()) queued_.push_back(envelope->token_chunk());
  }
}

std::vector<spark::v1::TokenChunk> DataClient::Collect(const std::string& request_id,
                                                       milliseconds timeout) {
  std::vector<spark::v1::TokenChunk> chunks;
  const auto until = SteadyClock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<milliseconds>(until - SteadyClock::now());
    auto chunk = Next(request_id, std::max(left, milliseconds(0)));
    if (!chunk) return {};
    chunks.push_back(*chunk);
    if (chunk->finish_reason() != spark::v1::FINISH_REASON_NONE) return chunks;
  }
}

}  // namespace spark::shard::testing
