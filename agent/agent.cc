#include "agent/agent.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <random>
#include <system_error>
#include <utility>

#include "agent/stale_shards.h"
#include "agent/tokenizer_files.h"
#include "common/log.h"
#include "common/os_error.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "proto/framing.h"

#ifndef SPARK_VERSION
#define SPARK_VERSION "0.0.0"
#endif

namespace spark::agent {
namespace {

using std::chrono::duration_cast;
using std::chrono::milliseconds;
namespace fs = std::filesystem;

constexpr char kControllerId[] = "controller";
constexpr int kMissedAcksBeforeReRegistration = 3;
constexpr milliseconds kMaxPollTimeout{200};
constexpr milliseconds kStaleShardWait{5000};
// How long the agent waits past the shutdown grace for shards to be reaped.
constexpr milliseconds kShutdownSlack{5000};

uint64_t RandomIncarnation() {
  std::random_device device;
  const uint64_t value = (static_cast<uint64_t>(device()) << 32) ^ device();
  return value == 0 ? 1 : value;
}

}  // namespace

std::string DefaultShardBinary() {
  std::error_code ec;
  const fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return "spark-shard";
  const fs::path installed = self.parent_path() / "spark-shard";
  // In a build tree the shard lives in engine/shard/ beside agent/.
  const fs::path build_tree = self.parent_path().parent_path() / "engine" / "shard" / "spark-shard";
  if (!fs::exists(installed, ec) && fs::exists(build_tree, ec)) return build_tree.string();
  return installed.string();
}

Result<std::unique_ptr<Agent>> Agent::Create(AgentOptions options, NodeFacts facts,
                                             std::optional<AgentKeys> keys,
                                             AgentDependencies dependencies) {
  if (dependencies.launcher == nullptr) return InvalidArgument("Agent needs a process launcher");
  if (!options.insecure && !keys.has_value()) {
    return FailedPrecondition("the agent needs CURVE keys unless it runs with --insecure");
  }
  if (options.shard_binary.empty()) options.shard_binary = DefaultShardBinary();
  for (const std::string& dir :
       {options.state_dir, ShardsDir(options.state_dir), LogsDir(options.state_dir)}) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) {
      return OsError(ec.value(), "creating " + dir +
                                     " (fix: create it and make it writable for spark-agent, or "
                                     "pass --state-dir DIR)");
    }
  }
  SPARK_ASSIGN_OR_RETURN(StaleShardReport stale, KillStaleShards(ShardsDir(options.state_dir),
                                                                 facts.boot_id, kStaleShardWait));
  if (!stale.killed_pids.empty()) {
    SPARK_LOG(WARN).With("count", stale.killed_pids.size())
        << "killed shards left by an earlier spark-agent";
  }
  for (const std::string& alive : stale.still_alive) {
    SPARK_LOG(ERROR).With("shard", alive)
        << "a shard left by an earlier spark-agent did not die after SIGKILL (stuck in the "
           "kernel?); check it with ps and the GPU driver";
  }
  SPARK_ASSIGN_OR_RETURN(EventFd stop_event, EventFd::Create());
  return std::unique_ptr<Agent>(new Agent(std::move(options), std::move(facts), std::move(keys),
                                          dependencies, std::move(stop_event)));
}

Agent::Agent(AgentOptions options, NodeFacts facts, std::optional<AgentKeys> keys,
             AgentDependencies dependencies, EventFd stop_event)
    : options_(std::move(options)),
      facts_(std::move(facts)),
      keys_(std::move(keys)),
      launcher_(dependencies.launcher),
      clock_(dependencies.clock != nullptr ? dependencies.clock : &RealClock::Get()),
      notifier_(dependencies.notifier),
      routing_id_("agent/" + facts_.node_name),
      stop_event_(std::move(stop_event)),
      moe_tunings_(
          (std::filesystem::path(options_.state_dir) / engine::kMoeTuningFileName).string()),
      incarnation_(RandomIncarnation()),
      heartbeat_interval_(options_.heartbeat_ms) {
  preflight_.facts = facts_;
  preflight_.nccl = options_.nccl;
  preflight_.shard_binary = options_.shard_binary;
  preflight_.state_dir = options_.state_dir;

  SupervisorOptions so;
  so.state_dir = options_.state_dir;
  so.shard_binary = options_.shard_binary;
  so.controller_endpoint = options_.controller;
  so.node_name = facts_.node_name;
  so.keys_dir = ResolveKeysDir(options_);
  so.insecure = options_.insecure;
  so.boot_id = facts_.boot_id;
  so.data_listen = options_.data_listen;
  so.advertise_host = options_.advertise_host;
  so.nccl_env = facts_.nccl_env;
  supervisor_ = std::make_unique<ShardSupervisor>(
      std::move(so), launcher_, &poller_, clock_,
      [this](const spark::v1::ShardStatus& status) { SendShardStatus(status); });
}

Agent::~Agent() {
  // The supervisor removes its pidfds from the poller and kills what still runs.
  supervisor_.reset();
  socket_.reset();
}

void Agent::RequestStop() {
  if (Status st = stop_event_.Notify(); !st.ok()) {
    SPARK_LOG(ERROR).With("error", st) << "cannot wake the agent loop for shutdown";
  }
}

void Agent::AddShutdownFd(int fd) {
  shutdown_poll_ids_.push_back(
      poller_.AddFd(fd, [this] { BeginShutdown("shutdown requested (signal)"); }));
}

void Agent::SetStatus(const std::string& status) {
  if (status == last_status_) return;
  last_status_ = status;
  if (notifier_ != nullptr) notifier_->Notify("STATUS=" + status);
}

// ---------------------------------------------------------------------------------------------
// Connection and registration

Status Agent::OpenSocket() {
  if (socket_.has_value()) {
    poller_.Remove(socket_poll_id_);
    socket_.reset();
  }
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket, ZmqSocket::Create(context_, ZmqSocketType::kDealer));
  SPARK_RETURN_IF_ERROR(socket.SetRoutingId(routing_id_));
  SPARK_RETURN_IF_ERROR(
      socket.SetMaxMessageBytes(int64_t{proto::kMaxBodyBytes} + proto::kFrameHeaderBytes));
  const milliseconds interval = heartbeat_interval_;
  const milliseconds timeout = interval * kMissedAcksBeforeReRegistration;
  SPARK_RETURN_IF_ERROR(socket.SetHeartbeat(interval, timeout));
  try {
    // The controller drops this connection when it hears nothing for `timeout` (ZMTP TTL, in
    // deciseconds), and ZMQ reconnects quickly after a drop.
    socket.raw().set(zmq::sockopt::heartbeat_ttl,
                     static_cast<int>(std::max<int64_t>(100, timeout.count() / 100 * 100)));
    socket.raw().set(zmq::sockopt::reconnect_ivl, 100);
    socket.raw().set(zmq::sockopt::reconnect_ivl_max,
                     static_cast<int>(std::min<int64_t>(options_.reconnect_max_ms, 1000)));
  } catch (const zmq::error_t& e) {
    return Internal(std::string("setting ZMQ reconnect options: ") + e.what());
  }
  if (keys_.has_value()) {
    SPARK_RETURN_IF_ERROR(socket.SetCurveClient(keys_->own, keys_->controller_public));
  }
  SPARK_RETURN_IF_ERROR(socket.Connect(options_.controller));
  socket_.emplace(std::move(socket));
  socket_poll_id_ = poller_.AddSocket(*socket_, [this] { OnSocketReadable(); });
  return Status::Ok();
}

std::chrono::milliseconds Agent::RegistrationWait(int attempt) const {
  const milliseconds base = heartbeat_interval_ * kMissedAcksBeforeReRegistration;
  milliseconds wait = base;
  for (int i = 1; i < attempt && wait.count() < options_.reconnect_max_ms; ++i) wait *= 2;
  return std::min(wait, milliseconds(options_.reconnect_max_ms));
}

spark::v1::Envelope Agent::NewEnvelope(uint64_t generation) {
  spark::v1::Envelope envelope;
  envelope.set_protocol_version(proto::kProtocolVersion);
  envelope.set_sender_id(routing_id_);
  envelope.set_generation(generation);
  envelope.set_sequence(next_sequence_++);
  envelope.set_sender_incarnation(incarnation_);
  return envelope;
}

void Agent::Send(spark::v1::Envelope envelope) {
  if (!socket_.has_value()) return;
  const std::string body(proto::BodyName(envelope));
  if (Status st = socket_->Send({proto::EncodeEnvelope(envelope)}); !st.ok()) {
    SPARK_LOG(WARN).With("message", body).With("error", st) << "cannot send to the controller";
  }
}

void Agent::SendRegistration() {
  ++registration_attempt_;
  registration_deadline_ = clock_->Now() + RegistrationWait(registration_attempt_);
  spark::v1::Envelope envelope = NewEnvelope(0);
  spark::v1::NodeRegistration* r = envelope.mutable_node_registration();
  r->set_node_name(facts_.node_name);
  r->set_boot_id(facts_.boot_id);
  r->set_agent_version(SPARK_VERSION);
  r->set_backend(facts_.backend);
  for (const auto& gpu : facts_.gpus) *r->add_gpus() = gpu;
  for (const auto& device : facts_.rdma_devices) *r->add_rdma_devices() = device;
  for (const auto& [key, value] : facts_.nccl_env) (*r->mutable_nccl_env())[key] = value;
  for (auto& summary : supervisor_->Summaries()) *r->add_shards() = std::move(summary);
  std::vector<spark::v1::PreflightResult> preflight = RunNodePreflight(preflight_);
  const std::string failures = PreflightFailureReason(preflight);
  if (failures != last_preflight_failures_) {
    last_preflight_failures_ = failures;
    for (const auto& result : preflight) {
      if (result.ok()) continue;
      SPARK_LOG(WARN).With("check", result.check()).With("fix", result.fix())
          << "preflight failed: " << result.message();
    }
  }
  for (auto& result : preflight) *r->add_preflight() = std::move(result);
  if (keys_.has_value()) r->set_curve_public_key(keys_->own.public_key);
  SPARK_LOG(INFO).With("controller", options_.controller).With("attempt", registration_attempt_)
      << "registering";
  SetStatus("registering with " + options_.controller + " (attempt " +
            std::to_string(registration_attempt_) + ")");
  Send(std::move(envelope));
}

void Agent::SendHeartbeat() {
  spark::v1::Envelope envelope = NewEnvelope(0);
  spark::v1::Heartbeat* h = envelope.mutable_heartbeat();
  h->set_node_name(facts_.node_name);
  h->set_boot_id(facts_.boot_id);
  h->set_monotonic_ms(
      static_cast<uint64_t>(duration_cast<milliseconds>(clock_->Now().time_since_epoch()).count()));
  for (auto& summary : supervisor_->Summaries()) *h->add_shards() = std::move(summary);
  Send(std::move(envelope));
}

void Agent::ReRegister(const std::string& reason, bool fresh_connection) {
  SPARK_LOG(WARN).With("reason", reason) << "re-registering with the controller";
  registered_ = false;
  registration_attempt_ = 0;
  controller_incarnation_.reset();
  if (fresh_connection) {
    if (Status st = OpenSocket(); !st.ok()) {
      SPARK_LOG(ERROR).With("error", st) << "cannot reopen the controller connection";
    }
  }
  SendRegistration();
}

// ---------------------------------------------------------------------------------------------
// Messages

void Agent::OnSocketReadable() {
  // A bounded batch per wake-up, so timers and pidfds are not starved by a flood.
  for (int i = 0; i < 256 && socket_.has_value(); ++i) {
    Result<std::optional<ZmqMessage>> message = socket_->TryRecv();
    if (!message.ok()) {
      SPARK_LOG(WARN).With("error", message.status()) << "receive from the controller failed";
      return;
    }
    if (!message->has_value()) return;
    for (const std::string& frame : **message) {
      Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frame);
      if (!envelope.ok()) {
        SPARK_LOG(WARN).With("error", envelope.status()) << "dropped an undecodable frame";
        continue;
      }
      HandleEnvelope(*envelope);
    }
  }
}

void Agent::HandleEnvelope(const spark::v1::Envelope& envelope) {
  if (envelope.sender_id() != kControllerId) {
    SPARK_LOG(WARN).With("sender", envelope.sender_id())
        << "dropped a message that does not come from the controller";
    return;
  }
  switch (envelope.body_case()) {
    case spark::v1::Envelope::kRegistrationAck:
      HandleRegistrationAck(envelope);
      return;
    case spark::v1::Envelope::kHeartbeatAck:
      HandleHeartbeatAck(envelope);
      return;
    case spark::v1::Envelope::kShardAssignment:
      HandleAssignment(envelope);
      return;
    case spark::v1::Envelope::kStopShard:
      HandleStop(envelope);
      return;
    case spark::v1::Envelope::kError:
      HandleError(envelope);
      return;
    default:
      SPARK_LOG(WARN).With("message", std::string(proto::BodyName(envelope)))
          << "dropped a message the agent does not handle";
      return;
  }
}

void Agent::HandleRegistrationAck(const spark::v1::Envelope& envelope) {
  const spark::v1::RegistrationAck& ack = envelope.registration_ack();
  const Clock::TimePoint now = clock_->Now();
  const milliseconds interval = ack.heartbeat_interval_ms() > 0
                                    ? milliseconds(ack.heartbeat_interval_ms())
                                    : milliseconds(options_.heartbeat_ms);
  heartbeat_interval_ = interval;
  controller_incarnation_ = envelope.sender_incarnation();
  last_ack_ = now;
  const bool was_registered = registered_;
  registered_ = true;
  registration_attempt_ = 0;
  if (!was_registered) next_heartbeat_ = now + interval;
  SPARK_LOG(INFO).With("node_id", ack.node_id()).With("heartbeat_ms", interval.count())
      << "registered with the controller";
  moe_tunings_.Reset();
  ReportMoeTunings();
  const std::string status = "registered with " + options_.controller + " as " + facts_.node_name +
                             "; " + std::to_string(supervisor_->size()) + " shards";
  if (!ever_registered_) {
    ever_registered_ = true;
    last_status_ = status;
    if (notifier_ != nullptr) notifier_->Notify("READY=1\nSTATUS=" + status);
  } else {
    SetStatus(status);
  }
}

void Agent::HandleHeartbeatAck(const spark::v1::Envelope& envelope) {
  if (!registered_) return;  // an ack for a heartbeat of an earlier registration
  if (controller_incarnation_.has_value() &&
      envelope.sender_incarnation() != *controller_incarnation_) {
    ReRegister("the controller restarted (new incarnation)", false);
    return;
  }
  last_ack_ = clock_->Now();
}

void Agent::HandleError(const spark::v1::Envelope& envelope) {
  const Status status = proto::StatusFromError(envelope.error());
  SPARK_LOG(WARN).With("error", status).With("in_reply_to", envelope.error().in_reply_to_sequence())
      << "the controller reported an error";
  // Only while registered: an Error answering a registration must not start a tight loop of
  // registrations (the backoff schedules the next attempt).
  if (!stopping_ && registered_ &&
      (status.code() == StatusCode::kNotFound ||
       status.code() == StatusCode::kFailedPrecondition)) {
    ReRegister("the controller does not know this node: " + status.message(), false);
  }
}

bool Agent::IsStale(const std::string& deployment, uint64_t generation) {
  auto it = newest_generation_.find(deployment);
  if (it != newest_generation_.end() && generation < it->second) return true;
  newest_generation_[deployment] = std::max(generation, newest_generation_[deployment]);
  return false;
}

void Agent::HandleAssignment(const spark::v1::Envelope& envelope) {
  const spark::v1::ShardAssignment& a = envelope.shard_assignment();
  const ShardKey key = KeyOf(a);
  if (envelope.generation() != a.generation()) {
    SPARK_LOG(WARN).With("shard", key.ToString()).With("envelope_generation", envelope.generation())
        << "dropped an assignment whose envelope and body generations differ";
    return;
  }
  if (stopping_) {
    SPARK_LOG(WARN).With("shard", key.ToString()) << "assignment ignored: the agent is stopping";
    return;
  }
  if (IsStale(a.deployment(), a.generation())) {
    SPARK_LOG(WARN)
            .With("shard", key.ToString())
            .With("newest_generation", newest_generation_[a.deployment()])
        << "ignored an assignment of an older generation";
    return;
  }
  SPARK_LOG(INFO).With("shard", key.ToString()).With("model", a.model_path()) << "assignment";
  // Shards of older generations of this deployment belong to runs that are over.
  bool waits = false;
  for (const ShardKey& running : supervisor_->Running()) {
    if (running.deployment == key.deployment && running.generation < key.generation) {
      supervisor_->Stop(running, milliseconds(0),
                        "superseded by generation " + std::to_string(key.generation));
      waits = true;
    }
  }
  for (auto it = pending_.begin(); it != pending_.end();) {
    if (it->first.deployment == key.deployment && it->first.generation < key.generation) {
      it = pending_.erase(it);
    } else {
      ++it;
    }
  }
  if (waits) {
    pending_[key] = a;
    return;
  }
  StartNow(a);
}

void Agent::StartPending() {
  if (pending_.empty()) return;
  std::vector<ShardKey> ready;
  const std::vector<ShardKey> running = supervisor_->Running();
  for (const auto& [key, assignment] : pending_) {
    const bool blocked = std::any_of(running.begin(), running.end(), [&](const ShardKey& r) {
      return r.deployment == key.deployment && r.generation < key.generation;
    });
    if (!blocked) ready.push_back(key);
  }
  for (const ShardKey& key : ready) {
    const spark::v1::ShardAssignment assignment = pending_[key];
    pending_.erase(key);
    StartNow(assignment);
  }
}

void Agent::StartNow(const spark::v1::ShardAssignment& assignment) {
  const ShardKey key = KeyOf(assignment);
  if (!supervisor_->IsRunning(key)) {
    const std::vector<spark::v1::PreflightResult> results =
        RunAssignmentPreflight(preflight_, assignment);
    if (!PreflightPassed(results)) {
      spark::v1::ShardStatus status;
      status.set_deployment(assignment.deployment());
      status.set_run_id(assignment.run_id());
      status.set_generation(assignment.generation());
      status.set_rank(assignment.rank());
      status.set_phase(spark::v1::SHARD_PHASE_FAILED);
      status.set_failure_reason("preflight failed on node " + facts_.node_name + ": " +
                                PreflightFailureReason(results));
      const int64_t now_ms =
          duration_cast<milliseconds>(clock_->WallNow().time_since_epoch()).count();
      status.set_phase_since_unix_ms(now_ms);
      status.set_reported_unix_ms(now_ms);
      SPARK_LOG(WARN).With("shard", key.ToString()) << status.failure_reason();
      SendShardStatus(status);
      return;
    }
  }
  const bool was_running = supervisor_->IsRunning(key);
  supervisor_->Start(assignment);
  if (!was_running && assignment.rank() == 0 && supervisor_->IsRunning(key)) {
    SendTokenizerFiles(assignment);
  }
}

void Agent::SendTokenizerFiles(const spark::v1::ShardAssignment& assignment) {
  Result<spark::v1::TokenizerFiles> files = CollectTokenizerFiles(assignment.model_path());
  if (!files.ok()) {
    SPARK_LOG(WARN).With("error", files.status()) << "no tokenizer files to send";
    return;
  }
  files->set_deployment(assignment.deployment());
  files->set_run_id(assignment.run_id());
  files->set_generation(assignment.generation());
  spark::v1::Envelope envelope = NewEnvelope(assignment.generation());
  *envelope.mutable_tokenizer_files() = std::move(*files);
  Send(std::move(envelope));
}

void Agent::HandleStop(const spark::v1::Envelope& envelope) {
  const spark::v1::StopShard& stop = envelope.stop_shard();
  const ShardKey key{stop.deployment(), stop.generation(), stop.rank()};
  if (IsStale(stop.deployment(), stop.generation())) {
    SPARK_LOG(WARN)
            .With("shard", key.ToString())
            .With("newest_generation", newest_generation_[stop.deployment()])
        << "ignored a StopShard of an older generation";
    return;
  }
  const milliseconds grace(stop.grace_period_ms());
  if (supervisor_->Stop(key, grace, stop.reason())) return;
  pending_.erase(key);
  // Not running here (never started, or already exited and reported): say so at once.
  spark::v1::ShardStatus status;
  status.set_deployment(stop.deployment());
  status.set_run_id(stop.run_id());
  status.set_generation(stop.generation());
  status.set_rank(stop.rank());
  status.set_phase(spark::v1::SHARD_PHASE_STOPPED);
  const int64_t now_ms = duration_cast<milliseconds>(clock_->WallNow().time_since_epoch()).count();
  status.set_phase_since_unix_ms(now_ms);
  status.set_reported_unix_ms(now_ms);
  SendShardStatus(status);
}

void Agent::SendShardStatus(const spark::v1::ShardStatus& status) {
  spark::v1::Envelope envelope = NewEnvelope(status.generation());
  *envelope.mutable_shard_status() = status;
  Send(std::move(envelope));
  if (registered_) {
    SetStatus("registered with " + options_.controller + " as " + facts_.node_name + "; " +
              std::to_string(supervisor_->size()) + " shards");
  }
}

void Agent::ReportMoeTunings() {
  std::optional<spark::v1::MoeTuningReport> report = moe_tunings_.Poll(facts_.node_name);
  if (!report) return;
  SPARK_LOG(INFO).With("records", report->records_size()).With("file", moe_tunings_.path())
      << "reporting MoE tuning records to the controller";
  spark::v1::Envelope envelope = NewEnvelope(0);
  *envelope.mutable_moe_tuning_report() = std::move(*report);
  Send(std::move(envelope));
}

// ---------------------------------------------------------------------------------------------
// Loop

void Agent::BeginShutdown(const std::string& why) {
  if (stopping_) return;
  stopping_ = true;
  for (int id : shutdown_poll_ids_) poller_.Remove(id);
  shutdown_poll_ids_.clear();
  SPARK_LOG(INFO).With("shards", supervisor_->size()).With("reason", why) << "stopping";
  if (notifier_ != nullptr) {
    notifier_->Notify("STOPPING=1\nSTATUS=stopping " + std::to_string(supervisor_->size()) +
                      " shards");
  }
  pending_.clear();
  const milliseconds grace(options_.shutdown_grace_ms);
  shutdown_deadline_ = clock_->Now() + grace + kShutdownSlack;
  supervisor_->StopAll(grace, "spark-agent is stopping");
}

void Agent::Tick(Clock::TimePoint now) {
  supervisor_->Tick(now);
  StartPending();
  if (!stopping_) {
    if (registered_) {
      if (now - last_ack_ > heartbeat_interval_ * kMissedAcksBeforeReRegistration) {
        ReRegister("no answer from the controller for " +
                       std::to_string(duration_cast<milliseconds>(now - last_ack_).count()) + " ms",
                   true);
        SetStatus("controller " + options_.controller + " not answering; re-registering");
      } else if (now >= next_heartbeat_) {
        SendHeartbeat();
        ReportMoeTunings();
        next_heartbeat_ += heartbeat_interval_;
        if (next_heartbeat_ <= now) next_heartbeat_ = now + heartbeat_interval_;
      }
    } else if (now >= registration_deadline_) {
      if (Status st = OpenSocket(); !st.ok()) {
        SPARK_LOG(ERROR).With("error", st) << "cannot reopen the controller connection";
      }
      SendRegistration();
    }
  }
  if (watchdog_interval_.count() > 0 && now >= next_watchdog_) {
    if (notifier_ != nullptr) notifier_->Notify("WATCHDOG=1");
    // A third of the interval: the period stays below half of it (systemd's advice) even when
    // the loop is late.
    next_watchdog_ = now + watchdog_interval_ / 3;
  }
}

std::chrono::milliseconds Agent::PollTimeout(Clock::TimePoint now) const {
  Clock::TimePoint next = now + kMaxPollTimeout;
  if (!stopping_) next = std::min(next, registered_ ? next_heartbeat_ : registration_deadline_);
  if (registered_ && !stopping_) {
    next = std::min(
        next, last_ack_ + heartbeat_interval_ * kMissedAcksBeforeReRegistration + milliseconds(1));
  }
  if (auto kill = supervisor_->NextDeadline()) next = std::min(next, *kill);
  if (watchdog_interval_.count() > 0) next = std::min(next, next_watchdog_);
  if (!pending_.empty()) next = std::min(next, now + milliseconds(10));
  if (next <= now) return milliseconds(0);
  // Round up so the loop does not spin on a sub-millisecond remainder.
  return duration_cast<milliseconds>(next - now) + milliseconds(1);
}

Status Agent::Run() {
  const int stop_id = poller_.AddFd(stop_event_.fd(), [this] {
    stop_event_.Drain().status().IgnoreError();
    BeginShutdown("RequestStop");
  });
  if (notifier_ != nullptr) {
    watchdog_interval_ = duration_cast<std::chrono::microseconds>(notifier_->WatchdogInterval());
  }
  next_watchdog_ = clock_->Now();
  SPARK_RETURN_IF_ERROR(OpenSocket());
  SendRegistration();

  while (true) {
    const Clock::TimePoint now = clock_->Now();
    Tick(now);
    if (stopping_ && (supervisor_->size() == 0 || now >= shutdown_deadline_)) break;
    Result<int> polled = poller_.PollOnce(PollTimeout(clock_->Now()));
    if (!polled.ok()) {
      SPARK_LOG(ERROR).With("error", polled.status()) << "poll failed";
      return polled.status();
    }
  }
  if (supervisor_->size() > 0) {
    SPARK_LOG(ERROR).With("shards", supervisor_->size())
        << "shards still running after the shutdown deadline; killing them";
  }
  poller_.Remove(stop_id);
  if (socket_.has_value()) {
    // Give the last STOPPED reports a moment to leave.
    try {
      socket_->raw().set(zmq::sockopt::linger, 1000);
    } catch (const zmq::error_t&) {
    }
  }
  SPARK_LOG(INFO) << "spark-agent stopped";
  return Status::Ok();
}

}  // namespace spark::agent
