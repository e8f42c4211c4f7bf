#include "tests/controller/core/fakes.h"

#include <random>

#include "common/check.h"
#include "proto/framing.h"

namespace spark::controller::testing {

using std::chrono::milliseconds;

namespace {

uint64_t RandomIncarnation() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng() | 1;
}

}  // namespace

FakePeer::FakePeer(ZmqContext& context, std::string routing_id, std::string endpoint,
                   const CurveKeyPair* keys, const std::string& server_key)
    : context_(context),
      routing_id_(std::move(routing_id)),
      keys_(keys),
      server_key_(server_key),
      incarnation_(RandomIncarnation()) {
  Open(endpoint);
}

void FakePeer::Open(const std::string& endpoint) {
  socket_.reset();
  Result<ZmqSocket> socket = ZmqSocket::Create(context_, ZmqSocketType::kDealer);
  SPARK_CHECK(socket.ok()) << socket.status().ToString();
  SPARK_CHECK(socket->SetRoutingId(routing_id_).ok());
  if (keys_ != nullptr) {
    SPARK_CHECK(socket->SetCurveClient(*keys_, server_key_).ok());
  }
  SPARK_CHECK(socket->Connect(endpoint).ok());
  socket_.emplace(std::move(*socket));
}

void FakePeer::Reconnect(const std::string& endpoint, bool new_incarnation) {
  if (new_incarnation) {
    incarnation_ = RandomIncarnation();
    sequence_ = 0;
  }
  inbox_.clear();
  Open(endpoint);
}

uint64_t FakePeer::Send(spark::v1::Envelope envelope, uint64_t generation) {
  envelope.set_sender_id(routing_id_);
  envelope.set_sender_incarnation(incarnation_);
  envelope.set_sequence(++sequence_);
  envelope.set_generation(generation);
  Status st = socket_->Send({proto::EncodeEnvelope(envelope)}, milliseconds(2000));
  SPARK_CHECK(st.ok()) << st.ToString();
  return sequence_;
}

void FakePeer::Pump(milliseconds timeout) {
  Result<ZmqMessage> message = socket_->Recv(timeout);
  if (!message.ok()) return;
  for (const std::string& frame : *message) {
    Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frame);
    SPARK_CHECK(envelope.ok()) << envelope.status().ToString();
    inbox_.push_back(std::move(*envelope));
  }
}

std::optional<spark::v1::Envelope> FakePeer::WaitFor(BodyCase body, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    for (auto it = inbox_.begin(); it != inbox_.end(); ++it) {
      if (it->body_case() == body) {
        spark::v1::Envelope found = std::move(*it);
        inbox_.erase(it);
        return found;
      }
    }
    const auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    Pump(left);
  }
}

bool FakePeer::NothingOf(BodyCase body, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    for (const auto& envelope : inbox_) {
      if (envelope.body_case() == body) return false;
    }
    const auto left =
        std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return true;
    Pump(left);
  }
}

void FakePeer::Clear() {
  Pump(milliseconds(0));
  inbox_.clear();
}

FakeAgent::FakeAgent(ZmqContext& context, std::string node, std::string endpoint,
                     std::string boot_id, const CurveKeyPair* keys, const std::string& server_key)
    : FakePeer(context, "agent/" + node, std::move(endpoint), keys, server_key),
      node_(std::move(node)),
      boot_id_(std::move(boot_id)) {}

std::optional<spark::v1::Envelope> FakeAgent::Register(
    std::vector<spark::v1::ShardSummary> shards) {
  spark::v1::Envelope envelope;
  spark::v1::NodeRegistration* r = envelope.mutable_node_registration();
  r->set_node_name(node_);
  r->set_boot_id(boot_id_);
  r->set_agent_version("test");
  r->set_backend(gpus_.empty() ? spark::v1::BACKEND_CPU : spark::v1::BACKEND_CUDA);
  for (const auto& gpu : gpus_) *r->add_gpus() = gpu;
  (*r->mutable_nccl_env())["NCCL_SOCKET_IFNAME"] = "lo";
  spark::v1::PreflightResult* check = r->add_preflight();
  check->set_check("cpu_backend");
  check->set_ok(true);
  if (!preflight_failure_.empty()) {
    spark::v1::PreflightResult* failed = r->add_preflight();
    failed->set_check(preflight_failure_);
    failed->set_ok(false);
    failed->set_message("failed on purpose");
    failed->set_fix("fix it");
  }
  for (auto& s : shards) *r->add_shards() = std::move(s);
  Send(std::move(envelope));
  return WaitFor(spark::v1::Envelope::kRegistrationAck);
}

std::vector<spark::v1::ShardSummary> FakeAgent::Running() const {
  std::vector<spark::v1::ShardSummary> shards;
  for (const auto& [key, summary] : running_) shards.push_back(summary);
  return shards;
}

void FakeAgent::SendHeartbeatNoWait(std::optional<std::vector<spark::v1::ShardSummary>> shards) {
  spark::v1::Envelope envelope;
  spark::v1::Heartbeat* h = envelope.mutable_heartbeat();
  h->set_node_name(node_);
  h->set_boot_id(boot_id_);
  for (auto& s : shards.value_or(Running())) *h->add_shards() = std::move(s);
  Send(std::move(envelope));
}

std::optional<spark::v1::Envelope> FakeAgent::Heartbeat(
    std::optional<std::vector<spark::v1::ShardSummary>> shards) {
  SendHeartbeatNoWait(std::move(shards));
  return WaitFor(spark::v1::Envelope::kHeartbeatAck, milliseconds(2000));
}

void FakeAgent::Status(const spark::v1::ShardAssignment& assignment, spark::v1::ShardPhase phase,
                       const std::string& data_endpoint, std::optional<int> signal,
                       std::optional<int> exit_status, int pid, uint64_t generation_override) {
  spark::v1::Envelope envelope;
  spark::v1::ShardStatus* s = envelope.mutable_shard_status();
  const uint64_t generation =
      generation_override != 0 ? generation_override : assignment.generation();
  s->set_deployment(assignment.deployment());
  s->set_run_id(assignment.run_id());
  s->set_generation(generation);
  s->set_rank(assignment.rank());
  s->set_phase(phase);
  s->set_pid(pid != 0 ? pid : 1000 + static_cast<int>(assignment.rank()));
  if (!data_endpoint.empty()) s->set_data_endpoint(data_endpoint);
  if (signal) s->set_signal(*signal);
  if (exit_status) s->set_exit_status(*exit_status);
  if (phase == spark::v1::SHARD_PHASE_FAILED) s->add_log_tail("fatal: something broke");
  const std::string key = assignment.deployment() + "/" + std::to_string(generation) + "/" +
                          std::to_string(assignment.rank());
  if (phase == spark::v1::SHARD_PHASE_FAILED || phase == spark::v1::SHARD_PHASE_STOPPED) {
    running_.erase(key);
  } else if (generation_override == 0) {
    running_[key] =
        Summary(assignment, phase, data_endpoint, s->pid() - static_cast<int>(assignment.rank()));
  }
  Send(std::move(envelope), generation);
}

spark::v1::ShardSummary Summary(const spark::v1::ShardAssignment& assignment,
                                spark::v1::ShardPhase phase, const std::string& data_endpoint,
                                int pid) {
  spark::v1::ShardSummary s;
  s.set_deployment(assignment.deployment());
  s.set_run_id(assignment.run_id());
  s.set_generation(assignment.generation());
  s.set_rank(assignment.rank());
  s.set_pid(pid + static_cast<int>(assignment.rank()));
  s.set_phase(phase);
  s.set_data_endpoint(data_endpoint);
  return s;
}

FakeShard::FakeShard(ZmqContext& context, const std::string& deployment, uint64_t generation,
                     uint32_t rank, std::string endpoint)
    : FakePeer(
          context,
          "shard/" + deployment + "/" + std::to_string(generation) + "/" + std::to_string(rank),
          std::move(endpoint)),
      deployment_(deployment),
      generation_(generation),
      rank_(rank) {}

void FakeShard::Publish(const std::string& key, const std::string& value) {
  spark::v1::Envelope envelope;
  spark::v1::RendezvousPublish* p = envelope.mutable_rendezvous_publish();
  p->set_deployment(deployment_);
  p->set_generation(generation_);
  p->set_rank(rank_);
  p->mutable_kv()->set_key(key);
  p->mutable_kv()->set_value(value);
  Send(std::move(envelope), generation_);
}

void FakeShard::Lookup(const std::string& key, uint32_t timeout_ms) {
  spark::v1::Envelope envelope;
  spark::v1::RendezvousLookup* l = envelope.mutable_rendezvous_lookup();
  l->set_deployment(deployment_);
  l->set_generation(generation_);
  l->set_rank(rank_);
  l->set_key(key);
  l->set_timeout_ms(timeout_ms);
  Send(std::move(envelope), generation_);
}

FakeDataPlane::FakeDataPlane(ZmqContext& context)
    : socket_([&] {
        Result<ZmqSocket> s = ZmqSocket::Create(context, ZmqSocketType::kRouter);
        SPARK_CHECK(s.ok());
        return std::move(*s);
      }()) {
  SPARK_CHECK(socket_.Bind("tcp://127.0.0.1:*").ok());
  endpoint_ = *socket_.LastEndpoint();
  thread_ = std::thread([this] { Run(); });
}

FakeDataPlane::~FakeDataPlane() {
  stop_ = true;
  thread_.join();
}

std::vector<spark::v1::GenerateRequest> FakeDataPlane::requests() const {
  std::lock_guard<std::mutex> lock(mu_);
  return requests_;
}

void FakeDataPlane::Run() {
  while (!stop_) {
    Result<ZmqMessage> message = socket_.Recv(milliseconds(20));
    if (!message.ok() || message->size() != 2) continue;
    Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope((*message)[1]);
    if (!envelope.ok() || !envelope->has_generate_request()) continue;
    const spark::v1::GenerateRequest& request = envelope->generate_request();
    {
      std::lock_guard<std::mutex> lock(mu_);
      requests_.push_back(request);
    }
    if (silent_) continue;
    auto reply = [&](spark::v1::TokenChunk chunk) {
      spark::v1::Envelope out;
      out.set_sender_id("shard");
      out.set_generation(envelope->generation());
      *out.mutable_token_chunk() = std::move(chunk);
      socket_.Send({(*message)[0], proto::EncodeEnvelope(out)}).IgnoreError();
    };
    spark::v1::TokenChunk chunk;
    chunk.set_request_id(request.request_id());
    if (fail_) {
      chunk.set_finish_reason(spark::v1::FINISH_REASON_ERROR);
      chunk.set_error_message("boom");
      reply(chunk);
      continue;
    }
    chunk.add_token_ids(11);
    chunk.set_finish_reason(spark::v1::FINISH_REASON_NONE);
    reply(chunk);
    chunk.clear_token_ids();
    chunk.add_token_ids(12);
    chunk.set_finish_reason(spark::v1::FINISH_REASON_LENGTH);
    chunk.mutable_usage()->set_prompt_tokens(
        static_cast<uint32_t>(request.prompt_token_ids_size()));
    chunk.mutable_usage()->set_completion_tokens(2);
    reply(chunk);
  }
}

}  // namespace spark::controller::testing
