#include "tests/agent/fake_controller.h"

#include <algorithm>
#include <random>

#include "proto/framing.h"

namespace spark::agent::testing {

Result<std::unique_ptr<FakeController>> FakeController::Start(Options options) {
  std::unique_ptr<FakeController> c(new FakeController());
  c->options_ = options;
  c->ack_registrations_ = options.ack_registrations;
  c->ack_heartbeats_ = options.ack_heartbeats;
  std::random_device device;
  c->incarnation_ = (static_cast<uint64_t>(device()) << 32) | device();
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket, ZmqSocket::Create(c->context_, ZmqSocketType::kRouter));
  try {
    socket.raw().set(zmq::sockopt::router_handover, 1);
  } catch (const zmq::error_t& e) {
    return Internal(e.what());
  }
  if (options.curve) {
    SPARK_ASSIGN_OR_RETURN(c->zap_, ZapAuthenticator::Start(c->context_));
    c->zap_->SetAllowed(options.trusted);
    SPARK_RETURN_IF_ERROR(socket.SetCurveServer(options.keys));
  }
  SPARK_RETURN_IF_ERROR(socket.Bind(options.endpoint));
  SPARK_ASSIGN_OR_RETURN(c->endpoint_, socket.LastEndpoint());
  c->socket_.emplace(std::move(socket));
  c->thread_ = std::thread([raw = c.get()] { raw->Serve(); });
  return c;
}

FakeController::~FakeController() { Stop(); }

void FakeController::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  socket_.reset();
  zap_.reset();
}

int64_t FakeController::zap_rejected() const { return zap_ ? zap_->rejected() : 0; }

void FakeController::Send(const std::string& routing_id, spark::v1::Envelope envelope) {
  std::lock_guard<std::mutex> lock(mu_);
  outbox_.emplace_back(routing_id, std::move(envelope));
}

void FakeController::SendNow(const std::string& routing_id, spark::v1::Envelope envelope) {
  envelope.set_sender_id("controller");
  envelope.set_sender_incarnation(incarnation_);
  envelope.set_sequence(sequence_++);
  socket_->Send({routing_id, proto::EncodeEnvelope(envelope)}).IgnoreError();
}

void FakeController::Serve() {
  Poller poller;
  poller.AddSocket(*socket_, [this] {
    while (true) {
      Result<std::optional<ZmqMessage>> m = socket_->TryRecv();
      if (!m.ok() || !m->has_value()) return;
      const ZmqMessage& frames = **m;
      if (frames.size() < 2) continue;
      for (size_t i = 1; i < frames.size(); ++i) {
        Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frames[i]);
        if (!envelope.ok()) continue;
        Received r{*envelope, frames[0], socket_->last_peer_user_id(),
                   std::chrono::steady_clock::now()};
        {
          std::lock_guard<std::mutex> lock(mu_);
          received_.push_back(r);
        }
        cv_.notify_all();
        Handle(r);
      }
    }
  });
  while (!stop_) {
    std::vector<std::pair<std::string, spark::v1::Envelope>> outbox;
    {
      std::lock_guard<std::mutex> lock(mu_);
      outbox.swap(outbox_);
    }
    for (auto& [id, envelope] : outbox) SendNow(id, std::move(envelope));
    poller.PollOnce(std::chrono::milliseconds(5)).status().IgnoreError();
  }
}

void FakeController::Handle(const Received& r) {
  const spark::v1::Envelope& e = r.envelope;
  if (e.has_node_registration()) {
    if (!ack_registrations_) return;
    if (std::find(registered_.begin(), registered_.end(), r.routing_id) == registered_.end()) {
      registered_.push_back(r.routing_id);
    }
    spark::v1::Envelope ack;
    ack.mutable_registration_ack()->set_node_id(1);
    ack.mutable_registration_ack()->set_heartbeat_interval_ms(options_.heartbeat_interval_ms);
    SendNow(r.routing_id, ack);
  } else if (e.has_heartbeat()) {
    const bool known =
        std::find(registered_.begin(), registered_.end(), r.routing_id) != registered_.end();
    if (!known && options_.reject_unknown_heartbeats) {
      spark::v1::Envelope error;
      error.mutable_error()->set_code(spark::v1::ERROR_CODE_NOT_FOUND);
      error.mutable_error()->set_message("unknown node; register first");
      error.mutable_error()->set_in_reply_to_sequence(e.sequence());
      SendNow(r.routing_id, error);
      return;
    }
    if (!known || !ack_heartbeats_) return;
    spark::v1::Envelope ack;
    ack.mutable_heartbeat_ack()->set_acked_sequence(e.sequence());
    SendNow(r.routing_id, ack);
  }
}

std::vector<Received> FakeController::received() const {
  std::lock_guard<std::mutex> lock(mu_);
  return received_;
}

size_t FakeController::received_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return received_.size();
}

std::optional<Received> FakeController::WaitFor(const std::function<bool(const Received&)>& match,
                                                std::chrono::milliseconds timeout,
                                                size_t from) const {
  std::unique_lock<std::mutex> lock(mu_);
  std::optional<Received> found;
  cv_.wait_for(lock, timeout, [&] {
    for (size_t i = from; i < received_.size(); ++i) {
      if (match(received_[i])) {
        found = received_[i];
        return true;
      }
    }
    return false;
  });
  return found;
}

std::vector<Received> FakeController::Bodies(spark::v1::Envelope::BodyCase body_case,
                                             size_t from) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<Received> out;
  for (size_t i = from; i < received_.size(); ++i) {
    if (received_[i].envelope.body_case() == body_case) out.push_back(received_[i]);
  }
  return out;
}

spark::v1::Envelope AssignmentEnvelope(const spark::v1::ShardAssignment& assignment) {
  spark::v1::Envelope e;
  e.set_generation(assignment.generation());
  *e.mutable_shard_assignment() = assignment;
  return e;
}

spark::v1::Envelope StopEnvelope(const std::string& deployment, uint64_t generation, uint32_t rank,
                                 uint32_t grace_ms) {
  spark::v1::Envelope e;
  e.set_generation(generation);
  spark::v1::StopShard* s = e.mutable_stop_shard();
  s->set_deployment(deployment);
  s->set_generation(generation);
  s->set_rank(rank);
  s->set_grace_period_ms(grace_ms);
  s->set_reason("test");
  return e;
}

}  // namespace spark::agent::testing
