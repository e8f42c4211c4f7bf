#include "tests/engine/shard/fake_controller.h"

#include <gtest/gtest.h>

#include "proto/framing.h"

namespace spark::shard::testing {

using std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

FakeController::FakeController(const Options& options) : options_(options) {
  if (options_.keys) {
    auto zap = ZapAuthenticator::Start(context_);
    EXPECT_TRUE(zap.ok()) << zap.status().ToString();
    zap_ = std::move(zap).value();
    zap_->SetAllowed(options_.trusted);
  }
  auto socket = ZmqSocket::Create(context_, ZmqSocketType::kRouter);
  EXPECT_TRUE(socket.ok());
  if (options_.keys) {
    EXPECT_TRUE(socket->SetCurveServer(*options_.keys).ok());
  }
  EXPECT_TRUE(socket->Bind("tcp://127.0.0.1:*").ok());
  endpoint_ = socket->LastEndpoint().value();
  socket_.emplace(std::move(socket).value());
  thread_ = std::thread([this] { Run(); });
}

FakeController::~FakeController() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  thread_.join();
}

void FakeController::Run() {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
    }
    auto message = socket_->Recv(milliseconds(10));
    if (message.ok() && message->size() == 2) Handle((*message)[0], (*message)[1]);
    ExpireLookups();
  }
}

void FakeController::Handle(const std::string& peer, const std::string& frame) {
  auto decoded = proto::DecodeEnvelope(frame);
  if (!decoded.ok()) return;
  const spark::v1::Envelope& envelope = *decoded;
  {
    std::lock_guard<std::mutex> lock(mu_);
    received_.push_back({peer, envelope});
    if (envelope.has_rendezvous_publish() && envelope.rendezvous_publish().has_kv()) {
      store_[envelope.rendezvous_publish().kv().key()] = envelope.rendezvous_publish().kv().value();
      published_ranks_.insert(envelope.rendezvous_publish().rank());
    }
  }
  changed_.notify_all();
  if (envelope.has_rendezvous_publish()) {
    // A publish may complete pending lookups.
    ExpireLookups();
  } else if (envelope.has_rendezvous_lookup()) {
    pending_.push_back(
        {peer, envelope.rendezvous_lookup(),
         SteadyClock::now() + milliseconds(envelope.rendezvous_lookup().timeout_ms())});
    ExpireLookups();
  }
}

void FakeController::ExpireLookups() {
  const auto now = SteadyClock::now();
  for (auto it = pending_.begin(); it != pending_.end();) {
    spark::v1::RendezvousReply reply;
    reply.set_key(it->lookup.key());
    bool answer = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto found = store_.find(it->lookup.key());
      if (found != store_.end()) {
        reply.set_found(true);
        reply.set_value(found->second);
        answer = true;
      } else if (now >= it->deadline) {
        std::string missing;
        for (uint32_t r = 0; r < options_.world_size; ++r) {
          if (published_ranks_.count(r) == 0)
            missing += (missing.empty() ? "" : ", ") + std::to_string(r);
        }
        reply.set_error(
            "not published within " + std::to_string(it->lookup.timeout_ms()) +
            " ms; ranks that have not published: " + (missing.empty() ? "none" : missing));
        answer = true;
      }
    }
    if (answer) {
      Reply(it->peer, std::move(reply));
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
}

void FakeController::Reply(const std::string& peer, spark::v1::RendezvousReply reply) {
  spark::v1::Envelope envelope;
  envelope.set_sender_id("controller");
  envelope.set_sequence(++sequence_);
  envelope.set_sender_incarnation(42);
  *envelope.mutable_rendezvous_reply() = std::move(reply);
  socket_->Send({peer, proto::EncodeEnvelope(envelope)}).IgnoreError();
}

std::vector<ReceivedEnvelope> FakeController::Received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return received_;
}

std::vector<spark::v1::ShardStatus> FakeController::Statuses(uint32_t rank) const {
  std::vector<spark::v1::ShardStatus> out;
  for (const ReceivedEnvelope& r : Received()) {
    if (r.envelope.has_shard_status() && r.envelope.shard_status().rank() == rank) {
      out.push_back(r.envelope.shard_status());
    }
  }
  return out;
}

bool FakeController::WaitFor(
    const std::function<bool(const std::vector<ReceivedEnvelope>&)>& predicate,
    milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, timeout, [&] { return predicate(received_); });
}

std::optional<spark::v1::ShardStatus> FakeController::WaitForPhase(uint32_t rank,
                                                                   spark::v1::ShardPhase phase,
                                                                   milliseconds timeout) const {
  std::optional<spark::v1::ShardStatus> found;
  WaitFor(
      [&](const std::vector<ReceivedEnvelope>& all) {
        for (const ReceivedEnvelope& r : all) {
          if (r.envelope.has_shard_status() && r.envelope.shard_status().rank() == rank &&
              r.envelope.shard_status().phase() == phase) {
            found = r.envelope.shard_status();
            return true;
          }
        }
        return false;
      },
      timeout);
  return found;
}

std::map<std::string, std::string> FakeController::Store() const {
  std::lock_guard<std::mutex> lock(mu_);
  return store_;
}

}  // namespace spark::shard::testing
