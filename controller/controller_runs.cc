// Controller: the reconciler (placement, runs, deadlines, the first generation, failures with
// backoff and a restart budget).
#include <algorithm>

#include "common/log.h"
#include "controller/controller.h"

namespace spark::controller {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

namespace {

bool IsTerminal(store::MemberPhase phase) {
  return phase == store::MemberPhase::kFailed || phase == store::MemberPhase::kStopped;
}

spark::v1::Backend BackendOf(const std::string& name) {
  if (name == "cpu") return spark::v1::BACKEND_CPU;
  if (name == "cuda") return spark::v1::BACKEND_CUDA;
  return spark::v1::BACKEND_UNSPECIFIED;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

}  // namespace

void Controller::Reconcile(Deployment& d, Clock::TimePoint now) {
  if (d.record.desired == store::Desired::kStopped || d.record.deleted) {
    if (d.run) EndRun(d, d.record.deleted ? "undeployed" : "stopped", /*failure=*/false);
    const bool draining = std::any_of(draining_.begin(), draining_.end(), [&](const Draining& s) {
      return s.deployment == d.record.name;
    });
    if (!draining) {
      SetState(d, store::DeploymentState::kStopped, std::nullopt);
    } else {
      SetState(d, store::DeploymentState::kStopping, std::nullopt);
    }
    return;
  }
  if (d.record.state == store::DeploymentState::kFailed) return;
  if (d.run) {
    CheckRunDeadlines(d, now);
    return;
  }
  if (now < d.next_attempt) return;
  StartRun(d, now);
}

std::vector<PlacementCandidate> Controller::Candidates(const Deployment& d) const {
  std::vector<PlacementCandidate> candidates;
  for (const auto& [name, node] : nodes_.nodes()) {
    PlacementCandidate c;
    c.name = name;
    c.alive = node.alive;
    c.preflight_ok = node.preflight_ok;
    c.preflight_problem = node.preflight_problem;
    c.backend = node.backend;
    for (const auto& [other_name, other] : deployments_) {
      if (other_name == d.record.name || !other.run) continue;
      for (const Member& m : other.run->members) {
        if (m.node == name) c.used_by = other_name;
      }
    }
    for (const Draining& s : draining_) {
      if (s.node == name && s.deployment != d.record.name) c.draining = true;
    }
    candidates.push_back(std::move(c));
  }
  return candidates;
}

spark::v1::ShardAssignment Controller::MakeAssignment(const Deployment& d, const Run& run,
                                                      const Member& m) const {
  spark::v1::ShardAssignment a;
  a.set_deployment(d.record.name);
  a.set_run_id(static_cast<uint64_t>(run.id));
  a.set_generation(run.generation);
  a.set_rank(static_cast<uint32_t>(m.rank));
  a.set_world_size(static_cast<uint32_t>(run.members.size()));
  a.set_model_path(d.record.model_path);
  const NodeEntry* node = nodes_.Find(m.node);
  const std::string backend =
      !d.record.backend.empty() ? d.record.backend : (node != nullptr ? node->backend : "cpu");
  a.set_backend(BackendOf(backend));
  *a.mutable_options() = d.options.engine;
  a.mutable_options()->set_tp(static_cast<uint32_t>(run.members.size()));
  spark::v1::RendezvousEndpoint* r = a.mutable_rendezvous();
  r->set_kind(backend == "cuda" ? spark::v1::RENDEZVOUS_KIND_NCCL
                                : spark::v1::RENDEZVOUS_KIND_GLOO);
  r->set_controller_address(options_.shard_controller_address);
  r->set_key_prefix(d.record.name + "/" + std::to_string(run.generation) + "/");
  r->set_timeout_ms(static_cast<uint32_t>(
      d.options.rendezvous_timeout.value_or(options_.rendezvous_timeout).count()));
  if (node != nullptr) {
    for (const auto& [key, value] : node->registration.nccl_env()) {
      (*a.mutable_nccl_env())[key] = value;
    }
  }
  (*a.mutable_nccl_env())["NCCL_NVLS_ENABLE"] = "0";
  a.set_deadline_ms(
      static_cast<uint32_t>(d.options.load_timeout.value_or(options_.load_timeout).count()));
  a.set_gpu_index(0);
  if (node != nullptr && a.backend() == spark::v1::BACKEND_CUDA) {
    for (auto& record : MoeTuningsFor(*node, a.gpu_index(), a.options())) {
      *a.add_moe_tunings() = std::move(record);
    }
  }
  return a;
}

void Controller::StartRun(Deployment& d, Clock::TimePoint now) {
  const std::string name = d.record.name;
  PlacementRequest request;
  request.deployment = name;
  request.tp = d.record.tp;
  request.backend = d.record.backend;
  request.pinned = d.record.pinned_nodes;
  request.previous = d.last_placement;
  Result<std::vector<std::string>> placement = PlaceRun(request, Candidates(d));
  if (!placement.ok()) {
    const std::string& message = placement.status().message();
    if (message != d.waiting_reason) {
      RecordEvent("placement_waiting", name, "", 0, 0, message);
    }
    d.waiting_reason = message;
    d.waiting_for_nodes = true;
    d.next_attempt = now + std::chrono::seconds(1);
    SetState(d,
             d.recovering ? store::DeploymentState::kRecovering : store::DeploymentState::kPending,
             std::nullopt);
    return;
  }
  d.waiting_for_nodes = false;
  const std::vector<std::string> nodes = *placement;
  Result<store::RunDetail> detail = [&]() -> Result<store::RunDetail> {
    auto future =
        store_.Write([name, nodes](store::WriteTxn& txn) { return txn.CreateRun(name, nodes); });
    if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      return DeadlineExceeded("the store did not commit the new run within 30 s");
    }
    return future.get();
  }();
  if (!detail.ok()) {
    SPARK_LOG(ERROR).With("deployment", name).With("error", detail.status())
        << "cannot create a run";
    d.waiting_reason = "cannot record a new run: " + detail.status().message();
    d.next_attempt = now + std::chrono::seconds(1);
    return;
  }
  d.waiting_reason.clear();
  d.record.generation = detail->run.generation;
  Run run;
  run.id = detail->run.id;
  run.generation = static_cast<uint64_t>(detail->run.generation);
  run.stage = RunStage::kStarting;
  run.started = now;
  run.started_unix_ms = detail->run.started_at_ms;
  run.spawn_deadline = now + options_.spawn_timeout;
  run.load_deadline =
      now + d.options.load_timeout.value_or(options_.load_timeout) + std::chrono::seconds(5);
  for (size_t rank = 0; rank < nodes.size(); ++rank) {
    Member m;
    m.rank = static_cast<int>(rank);
    m.node = nodes[rank];
    run.members.push_back(m);
  }
  d.run = std::move(run);
  broker_.OpenScope(name, d.run->generation, nodes);
  ++stats_.runs_started;
  SetState(d, d.recovering ? store::DeploymentState::kRecovering : store::DeploymentState::kLoading,
           std::nullopt);
  RecordEvent("run_started", name, "", d.run->id, static_cast<int64_t>(d.run->generation),
              "run " + std::to_string(d.run->id) + " (generation " +
                  std::to_string(d.run->generation) + ") placed on " + Join(nodes),
              {{"placement", nodes}});
  for (const Member& m : d.run->members) {
    const NodeEntry* node = nodes_.Find(m.node);
    spark::v1::Envelope envelope;
    *envelope.mutable_shard_assignment() = MakeAssignment(d, *d.run, m);
    Status st = node == nullptr
                    ? Unavailable("node not registered")
                    : agent_plane_->Send(node->routing_id, std::move(envelope), d.run->generation);
    if (!st.ok()) {
      FailRun(d, "cannot send the assignment of rank " + std::to_string(m.rank) + " to node " +
                     m.node + ": " + st.message());
      return;
    }
  }
}

void Controller::RemoveDataPlane(Run& run) {
  if (!run.data) return;
  poller_.Remove(run.data_poll_id);
  graveyard_.push_back(std::move(run.data));
}

void Controller::EndRun(Deployment& d, const std::string& reason, bool failure) {
  if (!d.run) return;
  const Clock::TimePoint now = clock_.Now();
  const std::string name = d.record.name;
  Run run = std::move(*d.run);
  d.run.reset();
  const int64_t run_id = run.id;
  Fire([run_id,
        reason](store::WriteTxn& txn) -> Status { return txn.EndRun(run_id, reason).status(); },
       "end run");
  RecordEvent(failure ? "run_failed" : "run_ended", name, "", run.id,
              static_cast<int64_t>(run.generation),
              "run " + std::to_string(run.id) + " (generation " + std::to_string(run.generation) +
                  ") ended: " + reason,
              {{"reason", reason},
               {"duration_ms", duration_cast<milliseconds>(now - run.started).count()}});
  for (const Member& m : run.members) {
    if (IsTerminal(m.phase)) continue;
    const NodeEntry* node = nodes_.Find(m.node);
    if (node == nullptr || !node->alive) continue;
    spark::v1::Envelope envelope;
    spark::v1::StopShard* stop = envelope.mutable_stop_shard();
    stop->set_deployment(name);
    stop->set_run_id(static_cast<uint64_t>(run.id));
    stop->set_generation(run.generation);
    stop->set_rank(static_cast<uint32_t>(m.rank));
    stop->set_grace_period_ms(static_cast<uint32_t>(options_.stop_grace.count()));
    stop->set_reason(reason);
    if (Status st = agent_plane_->Send(node->routing_id, std::move(envelope), run.generation);
        !st.ok()) {
      SPARK_LOG(WARN).With("node", m.node).With("error", st) << "cannot send StopShard";
      continue;
    }
    Draining drain;
    drain.deployment = name;
    drain.generation = run.generation;
    drain.rank = static_cast<uint32_t>(m.rank);
    drain.node = m.node;
    drain.deadline = now + options_.stop_grace + std::chrono::seconds(5);
    draining_.push_back(drain);
  }
  if (run.data) {
    RemoveDataPlane(run);
    graveyard_.back()->FailAll(Unavailable("model \"" + name + "\" " +
                                           (failure ? "failed" : "was stopped") + ": " + reason +
                                           "; retry shortly"));
  }
  SendRendezvousReplies(broker_.CloseScope(name, run.generation, reason));
  d.last_placement.clear();
  for (const Member& m : run.members) d.last_placement.push_back(m.node);

  if (failure && d.record.desired == store::Desired::kRunning && !d.record.deleted) {
    const RestartPolicy::Decision decision = d.restart_policy.OnFailure(now);
    d.recovering = true;
    if (decision.give_up) {
      const std::string error = "restart budget exhausted (" +
                                std::to_string(decision.restarts_in_window) + " restarts within " +
                                std::to_string(d.restart_policy.options().window.count() / 1000) +
                                " s); last failure: " + reason +
                                ". Fix the cause, then restart it with POST /api/v1/models/" +
                                name + "/restart (sparkctl restart " + name + ")";
      d.waiting_reason.clear();
      SetState(d, store::DeploymentState::kFailed, error);
      RecordEvent("deployment_failed", name, "", run.id, static_cast<int64_t>(run.generation),
                  error);
      return;
    }
    ++d.record.restarts;
    store::DeploymentPatch patch;
    patch.restarts = d.record.restarts;
    Fire([name, patch](
             store::WriteTxn& txn) -> Status { return txn.UpdateDeployment(name, patch).status(); },
         "restarts");
    d.next_attempt = now + decision.delay;
    d.waiting_reason = "restarting in " + std::to_string(decision.delay.count()) + " ms";
    SetState(d, store::DeploymentState::kRecovering, reason);
    RecordEvent("restart_scheduled", name, "", run.id, static_cast<int64_t>(run.generation),
                "new run in " + std::to_string(decision.delay.count()) + " ms (restart " +
                    std::to_string(decision.restarts_in_window) + " of " +
                    std::to_string(d.restart_policy.options().budget) + " in the window)",
                {{"delay_ms", decision.delay.count()}});
  } else {
    d.next_attempt = now;
  }
}

void Controller::CheckRunDeadlines(Deployment& d, Clock::TimePoint now) {
  Run& run = *d.run;
  switch (run.stage) {
    case RunStage::kAdopting:
      if (now >= run.adopt_deadline) {
        std::vector<std::string> missing;
        for (const Member& m : run.members) {
          if (!m.agent_confirmed || m.phase != store::MemberPhase::kReady) {
            missing.push_back("rank " + std::to_string(m.rank) + " on node " + m.node);
          }
        }
        EndRun(d,
               "controller restart: group incomplete (" + Join(missing) +
                   " not reported READY within " + std::to_string(options_.adopt_timeout.count()) +
                   " ms)",
               /*failure=*/false);
      }
      return;
    case RunStage::kStarting: {
      if (now >= run.spawn_deadline) {
        for (const Member& m : run.members) {
          if (m.phase == store::MemberPhase::kAssigned) {
            FailRun(d, "rank " + std::to_string(m.rank) + " on node " + m.node +
                           ": the agent did not start the shard within " +
                           std::to_string(options_.spawn_timeout.count()) +
                           " ms; check spark-agent on that node");
            return;
          }
        }
      }
      if (now >= run.load_deadline) {
        std::vector<std::string> late;
        for (const Member& m : run.members) {
          if (m.phase == store::MemberPhase::kReady) continue;
          std::string item = "rank " + std::to_string(m.rank) + " (node " + m.node + ") in phase " +
                             std::string(store::MemberPhaseName(m.phase));
          if (m.phase == store::MemberPhase::kLoading) {
            item += " at " + std::to_string(static_cast<int>(m.progress * 100)) + "%";
          }
          late.push_back(item);
        }
        FailRun(d,
                "not every rank was ready within " +
                    std::to_string(d.options.load_timeout.value_or(options_.load_timeout).count()) +
                    " ms: " + Join(late) + "; raise load_timeout_ms if loading is just slow");
      }
      return;
    }
    case RunStage::kProbing:
      if (now >= run.probe_deadline) {
        FailRun(d, "the first generation did not finish within " +
                       std::to_string(d.options.first_generation_timeout
                                          .value_or(options_.first_generation_timeout)
                                          .count()) +
                       " ms");
      }
      return;
    case RunStage::kReady:
      return;
  }
}

void Controller::CheckAllReady(Deployment& d) {
  if (!d.run) return;
  Run& run = *d.run;
  if (run.stage != RunStage::kStarting && run.stage != RunStage::kAdopting) return;
  for (const Member& m : run.members) {
    if (m.phase != store::MemberPhase::kReady) return;
    if (run.stage == RunStage::kAdopting && !m.agent_confirmed) return;
  }
  StartProbe(d);
}

void Controller::StartProbe(Deployment& d) {
  Run& run = *d.run;
  const std::string name = d.record.name;
  const uint64_t generation = run.generation;
  const Member& rank0 = run.members[0];
  if (rank0.data_endpoint.empty()) {
    FailRun(d, "rank 0 on node " + rank0.node + " reported READY without a data endpoint");
    return;
  }
  const NodeEntry* node = nodes_.Find(rank0.node);
  Result<std::unique_ptr<DataPlaneClient>> client = DataPlaneClient::Connect(
      context_, rank0.data_endpoint, agent_plane_->keys(),
      node != nullptr ? node->curve_public_key : "", sequencer_, generation);
  if (!client.ok()) {
    FailRun(d, client.status().message());
    return;
  }
  run.data = std::move(*client);
  run.data_poll_id = poller_.AddSocket(run.data->socket(), [this, name, generation] {
    Deployment* dep = FindDeployment(name);
    if (dep != nullptr && dep->run && dep->run->generation == generation && dep->run->data) {
      dep->run->data->OnReadable();
    }
  });
  run.stage = RunStage::kProbing;
  run.probe_deadline =
      clock_.Now() + d.options.first_generation_timeout.value_or(options_.first_generation_timeout);
  spark::v1::GenerateRequest request;
  run.probe_request_id = "probe-" + name + "-" + std::to_string(generation);
  request.set_request_id(run.probe_request_id);
  for (int32_t token : options_.probe_prompt) request.add_prompt_token_ids(token);
  spark::v1::SamplingParams* s = request.mutable_sampling();
  s->set_temperature(0);
  s->set_top_p(1);
  s->set_top_k(0);
  s->set_min_p(0);
  s->set_repetition_penalty(1);
  s->set_presence_penalty(0);
  s->set_frequency_penalty(0);
  s->set_max_tokens(options_.probe_max_tokens);
  s->set_ignore_eos(true);
  d.waiting_reason = "running the first generation";
  if (Status st = run.data->Send(request,
                                 [this, name, generation](Result<spark::v1::TokenChunk> chunk) {
                                   OnProbeDone(name, generation, chunk);
                                 });
      !st.ok()) {
    FailRun(d, "cannot send the first generation to rank 0: " + st.message());
  }
}

void Controller::OnProbeDone(const std::string& name, uint64_t generation,
                             const Result<spark::v1::TokenChunk>& chunk) {
  Deployment* d = FindDeployment(name);
  if (d == nullptr || !d->run || d->run->generation != generation ||
      d->run->stage != RunStage::kProbing) {
    return;
  }
  if (!chunk.ok()) {
    FailRun(*d, "the first generation failed: " + chunk.status().message());
    return;
  }
  if (!IsFinalChunk(*chunk)) return;
  if (chunk->finish_reason() != spark::v1::FINISH_REASON_STOP &&
      chunk->finish_reason() != spark::v1::FINISH_REASON_LENGTH) {
    FailRun(*d, "the first generation failed: " +
                    (chunk->error_message().empty()
                         ? std::string(spark::v1::FinishReason_Name(chunk->finish_reason()))
                         : chunk->error_message()));
    return;
  }
  Run& run = *d->run;
  run.stage = RunStage::kReady;
  const int64_t run_id = run.id;
  Fire([run_id](store::WriteTxn& txn) -> Status { return txn.MarkRunReady(run_id).status(); },
       "run ready");
  d->recovering = false;
  d->restart_policy.OnReady();
  d->waiting_reason.clear();
  SetState(*d, store::DeploymentState::kReady, std::string());
  const int64_t ready_ms = duration_cast<milliseconds>(clock_.Now() - run.started).count();
  RecordEvent("run_ready", name, "", run.id, static_cast<int64_t>(run.generation),
              "run " + std::to_string(run.id) + " (generation " + std::to_string(run.generation) +
                  ") is ready after " + std::to_string(ready_ms) + " ms; first generation gave " +
                  std::to_string(chunk->usage().completion_tokens()) + " tokens",
              {{"ready_ms", ready_ms}, {"data_endpoint", run.members[0].data_endpoint}});
}

void Controller::SetState(Deployment& d, store::DeploymentState state,
                          std::optional<std::string> error) {
  const bool state_changed = d.record.state != state;
  const bool error_changed = error.has_value() && *error != d.record.last_error;
  if (!state_changed && !error_changed) return;
  const store::DeploymentState previous = d.record.state;
  d.record.state = state;
  store::DeploymentPatch patch;
  patch.state = state;
  if (error_changed) {
    d.record.last_error = *error;
    patch.last_error = *error;
  }
  const std::string name = d.record.name;
  Fire([name, patch](
           store::WriteTxn& txn) -> Status { return txn.UpdateDeployment(name, patch).status(); },
       "deployment state");
  if (state_changed) {
    RecordEvent("deployment_state", name, "", d.run ? d.run->id : 0,
                d.run ? static_cast<int64_t>(d.run->generation) : 0,
                name + ": " + std::string(store::DeploymentStateName(previous)) + " -> " +
                    std::string(store::DeploymentStateName(state)),
                {{"from", store::DeploymentStateName(previous)},
                 {"to", store::DeploymentStateName(state)}});
  }
}

void Controller::UpdateMember(const Deployment& d, const Member& m, store::RunMemberPatch patch) {
  if (!d.run) return;
  const int64_t run_id = d.run->id;
  const int rank = m.rank;
  Fire(
      [run_id, rank, patch](store::WriteTxn& txn) -> Status {
        return txn.UpdateRunMember(run_id, rank, patch).status();
      },
      "run member");
}

}  // namespace spark::controller
