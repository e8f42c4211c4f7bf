#include "engine/shard/leader_loop.h"

#include <algorithm>
#include <utility>

#include "common/log.h"
#include "engine/shard/wire_conversions.h"
#include "proto/framing.h"

namespace spark::shard {
namespace {

// Messages taken from the socket per poll, so a flood of requests never starves the steps.
constexpr int kMaxMessagesPerPoll = 256;
// How long the socket lingers on close, so final chunks still reach the controller.
constexpr int kCloseLingerMs = 1000;

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

struct LeaderLoop::Live {
  std::string request_id;
  std::string peer;
  uint64_t engine_id = 0;
  bool want_logprobs = false;
  std::vector<int32_t> echo;  // sent with the first chunk when the request asked for echo
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  bool first_chunk_sent = false;
  bool detached = false;  // the peer is gone: cancelled, nothing more is sent
  SteadyClock::time_point arrival;
  std::optional<SteadyClock::time_point> first_step;
  std::optional<SteadyClock::time_point> first_token;
  SteadyClock::time_point last_token;
  spark::v1::TokenChunk pending;  // tokens of the current step
  bool finished = false;
};

Result<std::unique_ptr<LeaderLoop>> LeaderLoop::Create(engine::Backend* backend,
                                                       engine::TpLeaderBackend* leader,
                                                       Watchdog* watchdog, EnvelopeStamper* stamper,
                                                       const LeaderLoopOptions& options) {
  std::unique_ptr<LeaderLoop> loop(new LeaderLoop());
  loop->backend_ = backend;
  loop->leader_ = leader;
  loop->watchdog_ = watchdog;
  loop->stamper_ = stamper;
  loop->options_ = options;
  // The previous step's tokens go out while the device computes the next step (when its logits
  // stay on the device; otherwise they were sent right after their own step).
  engine::SchedulerOptions scheduler_options = options.scheduler;
  LeaderLoop* raw = loop.get();
  scheduler_options.on_forward_issued = [raw] { raw->FlushChunks(); };
  SPARK_ASSIGN_OR_RETURN(loop->scheduler_, engine::Scheduler::Create(backend, scheduler_options));

  loop->context_ = std::make_unique<ZmqContext>();
  if (options.server_keys) {
    SPARK_ASSIGN_OR_RETURN(loop->zap_, ZapAuthenticator::Start(*loop->context_));
    loop->zap_->SetAllowed(options.allowed_client_keys);
  }
  SPARK_ASSIGN_OR_RETURN(ZmqSocket socket,
                         ZmqSocket::Create(*loop->context_, ZmqSocketType::kRouter));
  SPARK_RETURN_IF_ERROR(socket.SetSendHighWaterMark(100000));
  SPARK_RETURN_IF_ERROR(socket.SetRecvHighWaterMark(100000));
  if (options.server_keys) SPARK_RETURN_IF_ERROR(socket.SetCurveServer(*options.server_keys));
  Status bound = socket.Bind(options.bind_endpoint);
  if (!bound.ok()) {
    return bound.WithContext("binding the data plane on " + options.bind_endpoint +
                             " (change the agent's --data-listen or free the port)");
  }
  SPARK_ASSIGN_OR_RETURN(loop->bound_endpoint_, socket.LastEndpoint());
  loop->socket_.emplace(std::move(socket));
  return loop;
}

LeaderLoop::~LeaderLoop() {
  if (socket_) {
    try {
      socket_->raw().set(zmq::sockopt::linger, kCloseLingerMs);
    } catch (const zmq::error_t&) {
      // Closing with the default linger only risks the last chunks.
    }
  }
}

Status LeaderLoop::Run(int stop_fd) {
  bool stop = false;
  Poller poller;
  poller.AddSocket(*socket_, [this] { DrainSocket(); });
  poller.AddFd(stop_fd, [&stop] { stop = true; });
  auto next_keepalive = SteadyClock::now() + options_.keepalive;

  while (true) {
    std::chrono::milliseconds timeout(0);
    if (!scheduler_->HasWork()) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(next_keepalive -
                                                                        SteadyClock::now());
      timeout = std::clamp(left, std::chrono::milliseconds(0), std::chrono::milliseconds(100));
    }
    Result<int> polled = poller.PollOnce(timeout);
    if (!polled.ok()) {
      FinishAll(spark::v1::FINISH_REASON_ERROR, "the shard's event loop failed");
      return polled.status().WithContext("polling the data plane");
    }
    if (stop) break;

    if (scheduler_->HasWork()) {
      const auto now = SteadyClock::now();
      for (auto& [id, live] : live_) {
        if (!live->first_step) live->first_step = now;
      }
      Result<engine::StepStats> stats = [&]() -> Result<engine::StepStats> {
        if (watchdog_ == nullptr) return scheduler_->Step();
        Watchdog::Scope scope = watchdog_->Watch("scheduler step");
        return scheduler_->Step();
      }();
      if (!stats.ok()) {
        Status failed = stats.status().WithContext("engine step failed");
        FinishAll(spark::v1::FINISH_REASON_ERROR, failed.message());
        return failed;
      }
      // A step computed on the device leaves its tokens for the next step to send while the
      // device runs it (on_forward_issued); the last step of a burst sends them now.
      if (!stats->on_device || !scheduler_->HasWork()) FlushChunks();
      if (stats->sequences > 0) next_keepalive = SteadyClock::now() + options_.keepalive;
    }
    MaybeReportSpeculativeStats();
    if (leader_ != nullptr && SteadyClock::now() >= next_keepalive) {
      Status alive = KeepAlive();
      if (!alive.ok()) {
        FinishAll(spark::v1::FINISH_REASON_ERROR, alive.message());
        return alive;
      }
      next_keepalive = SteadyClock::now() + options_.keepalive;
    }
  }

  FinishAll(spark::v1::FINISH_REASON_CANCELLED, "the shard is stopping");
  if (leader_ != nullptr) {
    std::optional<Watchdog::Scope> scope;
    if (watchdog_ != nullptr) scope.emplace(watchdog_->Watch("stopping the workers"));
    // Workers that got the same signal may be gone already; the group ends either way.
    Status stopped = leader_->Stop();
    if (!stopped.ok()) {
      SPARK_LOG(WARN).With("status", stopped) << "stopping the workers";
    }
  }
  return Status::Ok();
}

void LeaderLoop::MaybeReportSpeculativeStats() {
  if (!options_.on_speculative_stats) return;
  const auto now = SteadyClock::now();
  if (now < next_stats_report_) return;
  const engine::SpeculativeStats& stats = scheduler_->speculative_stats();
  if (stats.verify_steps == reported_verify_steps_) return;
  reported_verify_steps_ = stats.verify_steps;
  next_stats_report_ = now + options_.stats_interval;
  options_.on_speculative_stats(stats);
}

Status LeaderLoop::KeepAlive() {
  std::optional<Watchdog::Scope> scope;
  if (watchdog_ != nullptr) scope.emplace(watchdog_->Watch("keepalive"));
  Status s = leader_->KeepAlive();
  if (!s.ok()) return s.WithContext("keepalive to the worker ranks");
  return s;
}

void LeaderLoop::DrainSocket() {
  for (int i = 0; i < kMaxMessagesPerPoll; ++i) {
    Result<std::optional<ZmqMessage>> message = socket_->TryRecv();
    if (!message.ok()) {
      SPARK_LOG(WARN).With("status", message.status()) << "data plane receive failed";
      return;
    }
    if (!message->has_value()) return;
    const ZmqMessage& frames = **message;
    if (frames.size() != 2) {
      SPARK_LOG(WARN).With("frames", frames.size()) << "dropped a malformed data-plane message";
      continue;
    }
    HandleFrame(frames[0], frames[1]);
  }
}

void LeaderLoop::HandleFrame(const std::string& peer, const std::string& frame) {
  Result<spark::v1::Envelope> envelope = proto::DecodeEnvelope(frame);
  if (!envelope.ok()) {
    SPARK_LOG(WARN).With("status", envelope.status()) << "dropped an undecodable data-plane frame";
    spark::v1::Envelope reply;
    *reply.mutable_error() = proto::ErrorFromStatus(envelope.status());
    SendTo(peer, std::move(reply));
    return;
  }
  if (envelope->has_generate_request()) {
    HandleGenerate(peer, envelope->generate_request());
  } else if (envelope->has_cancel_request()) {
    HandleCancel(peer, envelope->cancel_request());
  } else {
    spark::v1::Envelope reply;
    *reply.mutable_error() = proto::ErrorFromStatus(
        InvalidArgument("the shard's data plane accepts generate_request and cancel_request, got " +
                        std::string(proto::BodyName(*envelope))),
        envelope->sequence());
    SendTo(peer, std::move(reply));
  }
}

void LeaderLoop::HandleGenerate(const std::string& peer,
                                const spark::v1::GenerateRequest& request) {
  const std::string& id = request.request_id();
  if (id.empty()) {
    SendError(peer, id, "GenerateRequest without request_id; give every request a unique id");
    return;
  }
  if (by_request_id_.count(id) > 0) {
    SendError(peer, id,
              "request_id '" + id + "' is already in flight; use a new id for every request");
    return;
  }
  if (request.return_prompt_logprobs()) {
    SendError(peer, id,
              "return_prompt_logprobs is not supported yet by spark-shard; send the request "
              "without prompt logprobs");
    return;
  }
  engine::Request engine_request;
  engine_request.id = next_engine_id_++;
  engine_request.prompt.assign(request.prompt_token_ids().begin(),
                               request.prompt_token_ids().end());
  engine_request.params = SamplingParamsFromProto(request.sampling());
  engine_request.on_output = [this](const engine::TokenOutput& output) { OnOutput(output); };

  auto live = std::make_unique<Live>();
  live->request_id = id;
  live->peer = peer;
  live->engine_id = engine_request.id;
  live->want_logprobs = engine_request.params.logprobs || engine_request.params.top_logprobs > 0;
  if (request.echo()) live->echo = engine_request.prompt;
  live->prompt_tokens = static_cast<uint32_t>(engine_request.prompt.size());
  live->arrival = SteadyClock::now();
  const uint64_t engine_id = engine_request.id;

  Status added = scheduler_->AddRequest(std::move(engine_request));
  if (!added.ok()) {
    SendError(peer, id, added.message());
    return;
  }
  by_request_id_[id] = engine_id;
  live_[engine_id] = std::move(live);
}

void LeaderLoop::HandleCancel(const std::string& peer, const spark::v1::CancelRequest& cancel) {
  auto it = by_request_id_.find(cancel.request_id());
  if (it == by_request_id_.end()) {
    SendError(peer, cancel.request_id(),
              "unknown request_id '" + cancel.request_id() +
                  "': it finished already or was never sent to this shard");
    return;
  }
  SPARK_LOG(DEBUG).With("request_id", cancel.request_id()).With("reason", cancel.reason())
      << "cancel";
  scheduler_->Cancel(it->second);
}

void LeaderLoop::OnOutput(const engine::TokenOutput& output) {
  auto it = live_.find(output.request_id);
  if (it == live_.end()) return;
  Live& live = *it->second;
  const auto now = SteadyClock::now();
  if (std::find(touched_.begin(), touched_.end(), live.engine_id) == touched_.end()) {
    touched_.push_back(live.engine_id);
  }
  if (output.token >= 0) {
    live.pending.add_token_ids(output.token);
    if (live.want_logprobs) {
      spark::v1::TokenLogprob* lp = live.pending.add_logprobs();
      lp->set_logprob(output.logprob);
      for (const engine::TokenLogprob& top : output.top_logprobs) {
        spark::v1::TopLogprob* t = lp->add_top_logprobs();
        t->set_token_id(top.token);
        t->set_logprob(top.logprob);
      }
    }
    if (!live.first_token) live.first_token = now;
    live.last_token = now;
    live.completion_tokens = static_cast<uint32_t>(output.output_tokens);
  }
  if (output.finish != engine::FinishReason::kNone) {
    live.finished = true;
    live.pending.set_finish_reason(FinishReasonToProto(output.finish));
    if (output.finish == engine::FinishReason::kError) {
      live.pending.set_error_message(output.error.message());
    }
    spark::v1::Timings* timings = live.pending.mutable_timings();
    const auto first_step = live.first_step.value_or(live.arrival);
    timings->set_queue_ms(MsBetween(live.arrival, first_step));
    if (live.first_token) {
      timings->set_time_to_first_token_ms(MsBetween(live.arrival, *live.first_token));
      timings->set_prefill_ms(MsBetween(first_step, *live.first_token));
      timings->set_decode_ms(MsBetween(*live.first_token, live.last_token));
    }
  }
}

void LeaderLoop::FlushChunks() {
  for (uint64_t engine_id : touched_) {
    auto it = live_.find(engine_id);
    if (it == live_.end()) continue;
    Live& live = *it->second;
    spark::v1::TokenChunk chunk = std::move(live.pending);
    live.pending.Clear();
    if (!live.detached) {
      chunk.set_request_id(live.request_id);
      if (!live.finished) chunk.set_finish_reason(spark::v1::FINISH_REASON_NONE);
      if (!live.first_chunk_sent) {
        for (int32_t t : live.echo) chunk.add_echo_token_ids(t);
        live.first_chunk_sent = true;
      }
      chunk.mutable_usage()->set_prompt_tokens(live.prompt_tokens);
      chunk.mutable_usage()->set_completion_tokens(live.completion_tokens);
      spark::v1::Envelope envelope;
      *envelope.mutable_token_chunk() = std::move(chunk);
      if (!SendTo(live.peer, std::move(envelope)) && !live.finished) {
        SPARK_LOG(WARN).With("request_id", live.request_id)
            << "the requester is gone; cancelling the request";
        live.detached = true;
        scheduler_->Cancel(engine_id);
      }
    }
    if (live.finished) {
      by_request_id_.erase(live.request_id);
      live_.erase(it);
    }
  }
  touched_.clear();
}

void LeaderLoop::FinishAll(spark::v1::FinishReason reason, const std::string& message) {
  FlushChunks();  // tokens already produced go out first
  for (auto& [engine_id, live] : live_) {
    if (live->detached) continue;
    spark::v1::Envelope envelope;
    spark::v1::TokenChunk* chunk = envelope.mutable_token_chunk();
    chunk->set_request_id(live->request_id);
    chunk->set_finish_reason(reason);
    if (reason == spark::v1::FINISH_REASON_ERROR) chunk->set_error_message(message);
    chunk->mutable_usage()->set_prompt_tokens(live->prompt_tokens);
    chunk->mutable_usage()->set_completion_tokens(live->completion_tokens);
    SendTo(live->peer, std::move(envelope));
  }
  live_.clear();
  by_request_id_.clear();
  touched_.clear();
}

bool LeaderLoop::SendTo(const std::string& peer, spark::v1::Envelope envelope) {
  stamper_->Stamp(envelope);
  Status sent = socket_->Send({peer, proto::EncodeEnvelope(envelope)});
  if (!sent.ok()) {
    SPARK_LOG(WARN).With("status", sent) << "cannot send on the data plane";
    return false;
  }
  return true;
}

void LeaderLoop::SendError(const std::string& peer, const std::string& request_id,
                           const std::string& message) {
  SPARK_LOG(INFO).With("request_id", request_id) << "request refused: " << message;
  spark::v1::Envelope envelope;
  spark::v1::TokenChunk* chunk = envelope.mutable_token_chunk();
  chunk->set_request_id(request_id);
  chunk->set_finish_reason(spark::v1::FINISH_REASON_ERROR);
  chunk->set_error_message(message);
  SendTo(peer, std::move(envelope));
}

}  // namespace spark::shard
