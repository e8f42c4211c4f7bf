#include "controller/controller.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <set>
#include <utility>

#include "common/log.h"

namespace spark::controller {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

namespace {

int64_t RealNowMs() {
  return duration_cast<milliseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

template <typename R>
R Await(std::future<R> future, const std::string& what) {
  if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
    return R(DeadlineExceeded("the store did not commit " + what +
                              " within 30 s; check the database disk"));
  }
  return future.get();
}

}  // namespace

Status ValidateName(const std::string& what, const std::string& name) {
  bool ok = !name.empty() && name.size() <= 64 && std::isalnum(static_cast<unsigned char>(name[0]));
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      ok = false;
    }
  }
  if (ok) return Status::Ok();
  return InvalidArgument(what + " \"" + name +
                         "\" is not valid: use 1-64 characters of letters, digits, '.', '_' and "
                         "'-', starting with a letter or digit");
}

Controller::Controller(ControllerOptions options, store::Store& store, Clock& clock)
    : options_(std::move(options)),
      store_(store),
      clock_(clock),
      nodes_(options_.heartbeat_interval, options_.missed_heartbeats) {
  if (options_.adopt_timeout.count() <= 0)
    options_.adopt_timeout = options_.heartbeat_interval * 10;
}

Controller::~Controller() { Stop(); }

Status Controller::Start() {
  if (started_) return FailedPrecondition("the controller is already started");
  SPARK_ASSIGN_OR_RETURN(EventFd wake, EventFd::Create());
  wake_.emplace(std::move(wake));
  AgentPlaneOptions plane_options;
  plane_options.listen = options_.agent_listen;
  plane_options.insecure = options_.insecure;
  plane_options.keys_dir = options_.keys_dir;
  plane_options.zmtp_heartbeat = options_.heartbeat_interval;
  SPARK_ASSIGN_OR_RETURN(agent_plane_, AgentPlane::Create(context_, plane_options, sequencer_));
  SPARK_RETURN_IF_ERROR(LoadState());
  poller_.AddSocket(agent_plane_->socket(), [this] { OnAgentPlaneReadable(); });
  poller_.AddFd(wake_->fd(), [this] {
    wake_->Drain().status().IgnoreError();
    RunCommands();
  });
  next_key_reload_ = clock_.Now() + std::chrono::seconds(10);
  last_tick_real_ms_ = RealNowMs();
  started_ = true;
  stop_ = false;
  SPARK_LOG(INFO)
          .With("agent_endpoint", agent_plane_->endpoint())
          .With("insecure", options_.insecure)
      << "controller started";
  thread_ = std::thread([this] { Loop(); });
  return Status::Ok();
}

void Controller::Stop() {
  if (!started_) return;
  stop_ = true;
  wake_->Notify().IgnoreError();
  if (thread_.joinable()) thread_.join();
  // The loop is gone: this thread owns the state now.
  for (auto& [name, d] : deployments_) {
    if (d.run && d.run->data) {
      d.run->data->FailAll(Unavailable("the controller is shutting down; retry shortly"));
    }
  }
  {
    std::lock_guard<std::mutex> lock(commands_mu_);
    commands_.clear();
  }
  for (auto& [future, what] : writes_) future.wait_for(std::chrono::seconds(10));
  writes_.clear();
  graveyard_.clear();
  started_ = false;
  SPARK_LOG(INFO) << "controller stopped";
}

std::string Controller::agent_endpoint() const {
  return agent_plane_ ? agent_plane_->endpoint() : "";
}

bool Controller::Responsive(milliseconds max_age) const {
  return started_ && RealNowMs() - last_tick_real_ms_.load() <= max_age.count();
}

void Controller::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(commands_mu_);
    commands_.push_back(std::move(fn));
  }
  if (wake_) wake_->Notify().IgnoreError();
}

// ---------------------------------------------------------------------------------------------
// Loop

void Controller::Loop() {
  while (!stop_.load()) {
    graveyard_.clear();
    Result<int> polled = poller_.PollOnce(PollTimeout(clock_.Now()));
    if (!polled.ok()) {
      SPARK_LOG(ERROR).With("error", polled.status()) << "controller poll failed";
      std::this_thread::sleep_for(milliseconds(10));
    }
    if (stop_.load()) break;
    RunCommands();
    OnTimers(clock_.Now());
    PollWrites();
    last_tick_real_ms_ = RealNowMs();
  }
}

milliseconds Controller::PollTimeout(Clock::TimePoint now) const {
  if (!writes_.empty()) return milliseconds(2);
  milliseconds timeout = options_.max_poll_wait;
  auto consider = [&](std::optional<Clock::TimePoint> deadline) {
    if (!deadline) return;
    const milliseconds left = duration_cast<milliseconds>(*deadline - now) + milliseconds(1);
    timeout = std::min(timeout, std::max(left, milliseconds(0)));
  };
  consider(nodes_.NextDeadline());
  consider(broker_.NextDeadline());
  return timeout;
}

void Controller::RunCommands() {
  std::deque<std::function<void()>> commands;
  {
    std::lock_guard<std::mutex> lock(commands_mu_);
    commands.swap(commands_);
  }
  for (auto& command : commands) command();
}

void Controller::OnTimers(Clock::TimePoint now) {
  for (const std::string& node : nodes_.ExpireDead(now)) {
    OnNodeDead(node, "missed " + std::to_string(options_.missed_heartbeats) +
                         " heartbeats (nothing heard for " +
                         std::to_string(nodes_.dead_after().count()) + " ms)");
  }
  SendRendezvousReplies(broker_.Expire(now));
  draining_.erase(std::remove_if(draining_.begin(), draining_.end(),
                                 [&](const Draining& s) { return s.deadline <= now; }),
                  draining_.end());
  std::vector<std::string> names;
  for (const auto& [name, d] : deployments_) names.push_back(name);
  for (const std::string& name : names) {
    Deployment* d = FindDeployment(name);
    if (d == nullptr) continue;
    Reconcile(*d, now);
    if (d->record.deleted && d->record.state == store::DeploymentState::kStopped) {
      deployments_.erase(name);
    }
  }
  if (missing_nodes_check_ && now >= *missing_nodes_check_) {
    missing_nodes_check_.reset();
    for (const std::string& node_name : stored_alive_nodes_) {
      const NodeEntry* node = nodes_.Find(node_name);
      if (node == nullptr || node->incarnation != 0) continue;  // registered since the start
      Fire(
          [node_name](store::WriteTxn& txn) -> Status {
            return txn.SetNodeState(node_name, store::NodeState::kDead);
          },
          "node missing " + node_name);
      RecordEvent("node_dead", "", node_name, 0, 0,
                  "node " + node_name + " did not register within " +
                      std::to_string(options_.adopt_timeout.count()) +
                      " ms of the controller's start");
    }
  }
  if (now >= next_key_reload_) {
    agent_plane_->ReloadTrustedKeys();
    next_key_reload_ = now + std::chrono::seconds(10);
  }
  for (auto it = stale_stop_sent_.begin(); it != stale_stop_sent_.end();) {
    it = now - it->second > std::chrono::minutes(1) ? stale_stop_sent_.erase(it) : std::next(it);
  }
  stats_.dropped_messages = std::max(stats_.dropped_messages, agent_plane_->dropped());
}

void Controller::Fire(std::function<Status(store::WriteTxn&)> body, std::string what) {
  writes_.emplace_back(store_.Write(std::move(body)), std::move(what));
}

void Controller::PollWrites() {
  while (!writes_.empty() &&
         writes_.front().first.wait_for(milliseconds(0)) == std::future_status::ready) {
    Status status = writes_.front().first.get();
    if (!status.ok()) {
      SPARK_LOG(ERROR).With("write", writes_.front().second).With("error", status)
          << "store write failed";
    }
    writes_.pop_front();
  }
}

void Controller::RecordEvent(const std::string& kind, const std::string& deployment,
                             const std::string& node, int64_t run_id, int64_t generation,
                             const std::string& message, nlohmann::json data) {
  SPARK_LOG(INFO)
          .With("event", kind)
          .With("deployment", deployment)
          .With("node", node)
          .With("generation", generation)
      << message;
  store::EventRecord event;
  event.kind = kind;
  event.deployment = deployment;
  event.node = node;
  event.run_id = run_id;
  event.generation = generation;
  event.message = message;
  event.data_json = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  Fire([event](store::WriteTxn& txn) -> Status { return txn.AppendEvent(event).status(); },
       "event " + kind);
}

Status Controller::LoadState() {
  SPARK_ASSIGN_OR_RETURN(std::vector<store::NodeRecord> nodes,
                         store_.Read([](store::ReadTxn& txn) { return txn.ListNodes(); }));
  for (const store::NodeRecord& node : nodes) {
    nodes_.Seed(node.name, node.boot_id, node.backend);
    if (node.state == store::NodeState::kAlive) stored_alive_nodes_.push_back(node.name);
  }

  SPARK_ASSIGN_OR_RETURN(std::vector<store::DeploymentRecord> records,
                         store_.Read([](store::ReadTxn& txn) {
                           return txn.ListDeployments(/*include_deleted=*/true);
                         }));
  SPARK_ASSIGN_OR_RETURN(std::vector<store::RunDetail> open_runs,
                         store_.Read([](store::ReadTxn& txn) { return txn.ListOpenRuns(); }));
  std::set<std::string> with_open_run;
  for (const store::RunDetail& run : open_runs) with_open_run.insert(run.run.deployment);

  const Clock::TimePoint now = clock_.Now();
  if (!stored_alive_nodes_.empty()) missing_nodes_check_ = now + options_.adopt_timeout;
  for (const store::DeploymentRecord& record : records) {
    if (record.deleted && record.state == store::DeploymentState::kStopped &&
        !with_open_run.count(record.name)) {
      continue;
    }
    Deployment d;
    d.record = record;
    d.restart_policy = RestartPolicy(options_.restart);
    Result<DeploymentOptions> parsed = ParseDeploymentOptionsJson(record.options_json, record.tp);
    if (parsed.ok()) {
      d.options = *parsed;
    } else {
      SPARK_LOG(ERROR).With("deployment", record.name).With("error", parsed.status())
          << "stored options are invalid; using the defaults";
      d.options.engine.set_tp(static_cast<uint32_t>(record.tp));
    }
    d.recovering = record.state == store::DeploymentState::kRecovering;
    d.next_attempt = now;
    deployments_.emplace(record.name, std::move(d));
  }

  for (const store::RunDetail& detail : open_runs) {
    Deployment* d = FindDeployment(detail.run.deployment);
    const bool keep = d != nullptr && d->record.desired == store::Desired::kRunning &&
                      !d->record.deleted && !d->run.has_value() &&
                      static_cast<int>(detail.members.size()) == d->record.tp;
    if (!keep) {
      const int64_t run_id = detail.run.id;
      Fire(
          [run_id](store::WriteTxn& txn) -> Status {
            return txn.EndRun(run_id, "controller restart: the deployment is no longer running")
                .status();
          },
          "end run");
      continue;
    }
    Run run;
    run.id = detail.run.id;
    run.generation = static_cast<uint64_t>(detail.run.generation);
    run.stage = RunStage::kAdopting;
    run.started = now;
    run.started_unix_ms = detail.run.started_at_ms;
    run.adopt_deadline = now + options_.adopt_timeout;
    std::vector<std::string> placement;
    for (const store::RunMemberRecord& m : detail.members) {
      Member member;
      member.rank = m.rank;
      member.node = m.node_name;
      member.phase = m.phase;
      member.pid = m.pid;
      run.members.push_back(member);
      placement.push_back(m.node_name);
    }
    // Rank 0's data endpoint as recorded when the run became ready; an agent that reports the
    // endpoint on re-registration overrides it.
    if (!run.members.empty()) run.members[0].data_endpoint = RecordedDataEndpoint(detail.run);
    broker_.OpenScope(d->record.name, run.generation, placement);
    d->last_placement = placement;
    d->run = std::move(run);
    d->waiting_reason = "adopting the running group after a controller restart";
    SetState(*d, store::DeploymentState::kLoading, std::nullopt);
    RecordEvent(
        "run_adopting", d->record.name, "", detail.run.id, detail.run.generation,
        "controller restart: waiting up to " + std::to_string(options_.adopt_timeout.count()) +
            " ms for the agents to report the shards of run " + std::to_string(detail.run.id) +
            " (generation " + std::to_string(detail.run.generation) + ")");
  }
  return Status::Ok();
}

std::string Controller::RecordedDataEndpoint(const store::RunRecord& run) {
  Result<int64_t> last = store_.Read([](store::ReadTxn& txn) { return txn.LastEventId(); });
  if (!last.ok()) return "";
  constexpr int64_t kWindow = 1000;
  // Newest events first, one window at a time, back to the run's start (at most 100 windows).
  for (int64_t upper = *last, windows = 0; upper > 0 && windows < 100;
       upper -= kWindow, ++windows) {
    const int64_t since = std::max<int64_t>(0, upper - kWindow);
    Result<std::vector<store::EventRecord>> events = store_.Read([&](store::ReadTxn& txn) {
      return txn.ListEvents(since, static_cast<int>(kWindow), run.deployment);
    });
    if (!events.ok()) return "";
    for (auto it = events->rbegin(); it != events->rend(); ++it) {
      if (it->run_id != run.id || it->kind != "run_ready") continue;
      nlohmann::json data = nlohmann::json::parse(it->data_json, nullptr, false);
      if (data.is_object() && data.contains("data_endpoint") && data["data_endpoint"].is_string()) {
        return data["data_endpoint"].get<std::string>();
      }
    }
    if (!events->empty() && events->front().ts_ms < run.started_at_ms) break;
  }
  return "";
}

Controller::Deployment* Controller::FindDeployment(const std::string& name) {
  auto it = deployments_.find(name);
  return it == deployments_.end() ? nullptr : &it->second;
}

// ---------------------------------------------------------------------------------------------
// Commands

void Controller::Deploy(DeployRequest request, Callback<Result<DeploymentView>> done) {
  Post([this, request = std::move(request), done = std::move(done)]() mutable {
    auto fail = [&](Status status) { done(Result<DeploymentView>(std::move(status))); };
    if (Status st = ValidateName("deployment name", request.name); !st.ok()) return fail(st);
    if (request.model_path.empty()) {
      return fail(InvalidArgument("\"path\" is required: the checkpoint directory on the nodes"));
    }
    if (request.tp < 1 || request.tp > 64) {
      return fail(
          InvalidArgument("\"tp\" must be between 1 and 64, got " + std::to_string(request.tp)));
    }
    if (request.backend != "" && request.backend != "cpu" && request.backend != "cuda") {
      return fail(InvalidArgument("\"backend\" must be \"cpu\" or \"cuda\", got \"" +
                                  request.backend + "\""));
    }
    if (!request.nodes.empty()) {
      if (static_cast<int>(request.nodes.size()) != request.tp) {
        return fail(InvalidArgument("\"nodes\" must name exactly tp (" +
                                    std::to_string(request.tp) + ") nodes, got " +
                                    std::to_string(request.nodes.size())));
      }
      std::set<std::string> unique(request.nodes.begin(), request.nodes.end());
      if (unique.size() != request.nodes.size()) {
        return fail(InvalidArgument("\"nodes\" names a node twice; each rank needs its own node"));
      }
      for (const std::string& node : request.nodes) {
        if (node.empty() || node.find('/') != std::string::npos) {
          return fail(InvalidArgument("\"nodes\" holds an invalid node name \"" + node + "\""));
        }
      }
    }
    Result<nlohmann::json> options = NormalizeDeploymentOptions(request.options);
    if (!options.ok()) return fail(options.status());
    Result<DeploymentOptions> parsed = ParseDeploymentOptions(*options, request.tp);
    if (!parsed.ok()) return fail(parsed.status());
    if (Deployment* existing = FindDeployment(request.name)) {
      if (existing->record.deleted) {
        return fail(AlreadyExists("model \"" + request.name +
                                  "\" is still being undeployed; retry in a few seconds"));
      }
      return fail(AlreadyExists("model \"" + request.name +
                                "\" already exists; undeploy it first or pick another name"));
    }
    store::DeploymentSpec spec;
    spec.name = request.name;
    spec.model_path = request.model_path;
    spec.tp = request.tp;
    spec.backend = request.backend;
    spec.pinned_nodes = request.nodes;
    spec.options_json = options->dump();
    Result<store::DeploymentRecord> record =
        Await(store_.Write([spec](store::WriteTxn& txn) { return txn.CreateDeployment(spec); }),
              "the new deployment");
    if (!record.ok()) return fail(record.status());
    Deployment d;
    d.record = *record;
    d.options = *parsed;
    d.restart_policy = RestartPolicy(options_.restart);
    d.next_attempt = clock_.Now();
    auto [it, inserted] = deployments_.emplace(request.name, std::move(d));
    RecordEvent("deployed", request.name, "", 0, 0,
                "deployed " + request.model_path + " with tp " + std::to_string(request.tp),
                {{"path", request.model_path}, {"tp", request.tp}, {"options", *options}});
    Reconcile(it->second, clock_.Now());
    done(View(it->second));
  });
}

void Controller::Undeploy(std::string name, Callback<Result<DeploymentView>> done) {
  Post([this, name = std::move(name), done = std::move(done)] {
    Deployment* d = FindDeployment(name);
    if (d == nullptr || d->record.deleted) {
      done(NotFound("model \"" + name + "\" not found; list models with GET /api/v1/models"));
      return;
    }
    store::DeploymentPatch patch;
    patch.desired = store::Desired::kStopped;
    patch.deleted = true;
    patch.state = store::DeploymentState::kStopping;
    Result<store::DeploymentRecord> record =
        Await(store_.Write([name, patch](store::WriteTxn& txn) {
          return txn.UpdateDeployment(name, patch);
        }),
              "the undeploy");
    if (!record.ok()) {
      done(record.status());
      return;
    }
    d->record = *record;
    RecordEvent("undeployed", name, "", 0, 0, "undeploy requested");
    Reconcile(*d, clock_.Now());
    done(View(*d));
  });
}

void Controller::Restart(std::string name, Callback<Result<DeploymentView>> done) {
  Post([this, name = std::move(name), done = std::move(done)] {
    Deployment* d = FindDeployment(name);
    if (d == nullptr || d->record.deleted) {
      done(NotFound("model \"" + name + "\" not found; list models with GET /api/v1/models"));
      return;
    }
    RecordEvent("restart_requested", name, "", 0, 0, "restart requested");
    d->restart_policy.Reset();
    d->recovering = false;
    if (d->run) EndRun(*d, "restart requested", /*failure=*/false);
    if (d->record.restarts != 0) {
      d->record.restarts = 0;
      store::DeploymentPatch patch;
      patch.restarts = 0;
      Fire(
          [name, patch](store::WriteTxn& txn) -> Status {
            return txn.UpdateDeployment(name, patch).status();
          },
          "reset restarts");
    }
    SetState(*d, store::DeploymentState::kPending, std::string());
    d->next_attempt = clock_.Now();
    Reconcile(*d, clock_.Now());
    done(View(*d));
  });
}

void Controller::GetDeployment(std::string name, Callback<Result<DeploymentView>> done) {
  Post([this, name = std::move(name), done = std::move(done)] {
    Deployment* d = FindDeployment(name);
    if (d == nullptr) {
      done(NotFound("model \"" + name + "\" not found; list models with GET /api/v1/models"));
      return;
    }
    done(View(*d));
  });
}

void Controller::ListDeployments(Callback<std::vector<DeploymentView>> done) {
  Post([this, done = std::move(done)] {
    std::vector<DeploymentView> views;
    for (const auto& [name, d] : deployments_) views.push_back(View(d));
    done(std::move(views));
  });
}

void Controller::ListNodes(Callback<std::vector<NodeView>> done) {
  Post([this, done = std::move(done)] {
    std::vector<NodeView> views;
    for (const auto& [name, node] : nodes_.nodes()) views.push_back(NodeViewOf(node));
    done(std::move(views));
  });
}

void Controller::Readiness(Callback<ReadinessView> done) {
  Post([this, done = std::move(done)] {
    ReadinessView view;
    Result<int64_t> probe = store_.Read([](store::ReadTxn& txn) { return txn.LastEventId(); });
    view.store_ok = probe.ok();
    if (!probe.ok()) view.store_error = probe.status().ToString();
    for (const auto& [name, d] : deployments_) {
      if (d.record.deleted || d.record.desired != store::Desired::kRunning) continue;
      const bool serving = d.run && d.run->stage == RunStage::kReady;
      if (serving) continue;
      std::string reason = d.waiting_reason.empty() ? d.record.last_error : d.waiting_reason;
      view.not_ready.push_back(name + ": " +
                               std::string(store::DeploymentStateName(d.record.state)) +
                               (reason.empty() ? "" : " (" + reason + ")"));
    }
    view.ready = view.store_ok && view.not_ready.empty();
    done(std::move(view));
  });
}

void Controller::GetServingModel(std::string name, Callback<Result<ServingModelView>> done) {
  Post([this, name = std::move(name), done = std::move(done)] {
    Deployment* d = FindDeployment(name);
    if (d == nullptr || d->record.deleted) {
      done(NotFound("model \"" + name + "\" not found; list models with GET /v1/models"));
      return;
    }
    ServingModelView view;
    view.name = name;
    view.state = std::string(store::DeploymentStateName(d->record.state));
    view.serving = d->run && d->run->stage == RunStage::kReady && d->run->data;
    view.failed = d->record.desired != store::Desired::kRunning ||
                  d->record.state == store::DeploymentState::kFailed;
    view.created_at_ms = d->record.created_at_ms;
    view.waiting_reason = d->waiting_reason;
    if (d->run) {
      view.generation = d->run->generation;
      view.tokenizer_files = d->run->tokenizer_files;
    }
    done(std::move(view));
  });
}

void Controller::Generate(std::string model, spark::v1::GenerateRequest request,
                          ChunkHandler on_chunk) {
  Post([this, model = std::move(model), request = std::move(request),
        on_chunk = std::move(on_chunk)]() mutable {
    Deployment* d = FindDeployment(model);
    if (d == nullptr || d->record.deleted) {
      on_chunk(NotFound("model \"" + model + "\" not found; list models with GET /api/v1/models"));
      return;
    }
    if (!d->run || d->run->stage != RunStage::kReady || !d->run->data) {
      std::string why = std::string(store::DeploymentStateName(d->record.state));
      if (!d->waiting_reason.empty()) why += ": " + d->waiting_reason;
      on_chunk(Unavailable("model \"" + model + "\" is not ready (" + why + "); retry shortly"));
      return;
    }
    if (request.request_id().empty()) {
      char prefix[32];
      std::snprintf(prefix, sizeof(prefix), "%08llx",
                    static_cast<unsigned long long>(sequencer_.incarnation() & 0xffffffffu));
      request.set_request_id(std::string("req-") + prefix + "-" +
                             std::to_string(next_request_id_++));
    }
    if (Status st = d->run->data->Send(request, on_chunk); !st.ok()) {
      on_chunk(Unavailable("cannot reach model \"" + model + "\": " + st.message()));
    }
  });
}

void Controller::Cancel(std::string request_id, std::string reason) {
  Post([this, request_id = std::move(request_id), reason = std::move(reason)] {
    for (auto& [name, d] : deployments_) {
      if (d.run && d.run->data && d.run->data->Has(request_id)) {
        d.run->data->Cancel(request_id, reason).IgnoreError();
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Views

DeploymentView Controller::View(const Deployment& d) const {
  DeploymentView view;
  view.record = d.record;
  view.waiting_reason = d.waiting_reason;
  if (d.options.engine.speculative().steps() > 0 || d.speculative_reported) {
    spark::v1::SpeculativeStats total = d.speculative_ended;
    AddSpeculativeStats(d.speculative_run, &total);
    view.speculative = std::move(total);
  }
  if (d.run) {
    const Run& run = *d.run;
    view.run_id = run.id;
    view.run_started_unix_ms = run.started_unix_ms;
    switch (run.stage) {
      case RunStage::kAdopting:
        view.run_state = "adopting";
        break;
      case RunStage::kStarting:
        view.run_state = "starting";
        break;
      case RunStage::kProbing:
        view.run_state = "probing";
        break;
      case RunStage::kReady:
        view.run_state = "ready";
        break;
    }
    view.serving = run.stage == RunStage::kReady;
    for (const Member& m : run.members) {
      MemberView mv;
      mv.rank = m.rank;
      mv.node = m.node;
      mv.phase = m.phase;
      mv.pid = m.pid;
      mv.progress = m.phase == store::MemberPhase::kReady ? 1.0 : m.progress;
      mv.exit_status = m.exit_status;
      mv.signal = m.signal;
      mv.failure_reason = m.failure_reason;
      view.members.push_back(std::move(mv));
    }
  }
  return view;
}

NodeView Controller::NodeViewOf(const NodeEntry& node) const {
  NodeView view;
  view.name = node.name;
  view.state = node.alive ? "alive" : (node.incarnation == 0 ? "unknown" : "dead");
  view.boot_id = node.boot_id;
  view.agent_version = node.agent_version;
  view.backend = node.backend;
  if (node.incarnation != 0) {
    view.last_seen_ms_ago = duration_cast<milliseconds>(clock_.Now() - node.last_seen).count();
  }
  view.preflight_ok = node.preflight_ok;
  view.preflight_problem = node.preflight_problem;
  view.registration = node.registration;
  view.registration.clear_shards();
  view.shards = node.shards;
  for (const auto& [name, d] : deployments_) {
    if (!d.run) continue;
    for (const Member& m : d.run->members) {
      if (m.node == node.name) {
        view.used_by.push_back(name);
        break;
      }
    }
  }
  return view;
}

}  // namespace spark::controller
