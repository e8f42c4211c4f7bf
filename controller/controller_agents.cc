// Controller: the agent plane (registrations, heartbeats, shard status, rendezvous, tokenizer
// files) and node failures.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <set>

#include "common/log.h"
#include "common/process.h"
#include "controller/controller.h"
#include "proto/framing.h"

namespace spark::controller {

using std::chrono::duration_cast;
using std::chrono::milliseconds;

namespace {

bool IsTerminal(store::MemberPhase phase) {
  return phase == store::MemberPhase::kFailed || phase == store::MemberPhase::kStopped;
}

std::optional<store::MemberPhase> PhaseFromProto(spark::v1::ShardPhase phase) {
  switch (phase) {
    case spark::v1::SHARD_PHASE_STARTING:
      return store::MemberPhase::kStarting;
    case spark::v1::SHARD_PHASE_RENDEZVOUS:
      return store::MemberPhase::kRendezvous;
    case spark::v1::SHARD_PHASE_LOADING:
      return store::MemberPhase::kLoading;
    case spark::v1::SHARD_PHASE_READY:
      return store::MemberPhase::kReady;
    case spark::v1::SHARD_PHASE_FAILED:
      return store::MemberPhase::kFailed;
    case spark::v1::SHARD_PHASE_STOPPED:
      return store::MemberPhase::kStopped;
    default:
      return std::nullopt;
  }
}

std::string ShardKey(const std::string& node, const std::string& deployment, uint64_t generation,
                     uint32_t rank) {
  return node + "|" + deployment + "|" + std::to_string(generation) + "|" + std::to_string(rank);
}

uint64_t NodeId(const std::string& name) {
  uint64_t hash = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : name) {
    hash ^= c;
    hash *= 1099511628211ull;
  }
  return hash >> 1;
}

std::string FactsJson(const spark::v1::NodeRegistration& registration) {
  spark::v1::NodeRegistration facts = registration;
  facts.clear_shards();
  std::string json;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(facts, &json, options).ok()) return "{}";
  return json;
}

int64_t WallMs(const Clock& clock) {
  return duration_cast<milliseconds>(clock.WallNow().time_since_epoch()).count();
}

}  // namespace

void Controller::OnAgentPlaneReadable() {
  for (int i = 0; i < 1024; ++i) {
    std::optional<AgentPlane::Inbound> inbound = agent_plane_->TryReceive();
    if (!inbound) return;
    HandleInbound(*inbound);
  }
}

void Controller::HandleInbound(AgentPlane::Inbound& inbound) {
  const bool from_agent = inbound.peer.kind == PeerId::Kind::kAgent;
  switch (inbound.envelope.body_case()) {
    case spark::v1::Envelope::kNodeRegistration:
      if (from_agent) return HandleRegistration(inbound);
      break;
    case spark::v1::Envelope::kHeartbeat:
      if (from_agent) return HandleHeartbeat(inbound);
      break;
    case spark::v1::Envelope::kShardStatus:
      return HandleShardStatus(inbound);
    case spark::v1::Envelope::kRendezvousPublish:
      if (!from_agent) return HandleRendezvousPublish(inbound);
      break;
    case spark::v1::Envelope::kRendezvousLookup:
      if (!from_agent) return HandleRendezvousLookup(inbound);
      break;
    case spark::v1::Envelope::kTokenizerFiles:
      if (from_agent) return HandleTokenizerFiles(inbound);
      break;
    case spark::v1::Envelope::kMoeTuningReport:
      if (from_agent) return HandleMoeTuningReport(inbound);
      break;
    case spark::v1::Envelope::kError:
      SPARK_LOG(WARN)
              .With("peer", inbound.routing_id)
              .With("error", proto::StatusFromError(inbound.envelope.error()))
          << "a peer reported an error";
      return;
    default:
      break;
  }
  ++stats_.dropped_messages;
  SPARK_LOG(WARN)
          .With("peer", inbound.routing_id)
          .With("message", std::string(proto::BodyName(inbound.envelope)))
      << "dropped a message this peer may not send to the controller";
}

void Controller::SendError(const std::string& routing_id, StatusCode code,
                           const std::string& message, uint64_t in_reply_to) {
  spark::v1::Envelope envelope;
  *envelope.mutable_error() = proto::ErrorFromStatus(Status(code, message), in_reply_to);
  if (Status st = agent_plane_->Send(routing_id, std::move(envelope), 0); !st.ok()) {
    SPARK_LOG(DEBUG).With("peer", routing_id).With("error", st) << "cannot send an error";
  }
}

void Controller::SendRendezvousReplies(const std::vector<RendezvousBroker::Reply>& replies) {
  for (const RendezvousBroker::Reply& reply : replies) {
    spark::v1::Envelope envelope;
    *envelope.mutable_rendezvous_reply() = reply.reply;
    if (!reply.reply.error().empty()) {
      SPARK_LOG(WARN).With("shard", reply.routing_id).With("key", reply.reply.key())
          << reply.reply.error();
    }
    if (Status st = agent_plane_->Send(reply.routing_id, std::move(envelope), reply.generation);
        !st.ok()) {
      SPARK_LOG(DEBUG).With("shard", reply.routing_id).With("error", st)
          << "cannot send a rendezvous reply";
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Registration and heartbeats

void Controller::HandleRegistration(const AgentPlane::Inbound& inbound) {
  const spark::v1::NodeRegistration& reg = inbound.envelope.node_registration();
  if (reg.node_name() != inbound.peer.node) {
    ++stats_.dropped_messages;
    SPARK_LOG(WARN).With("peer", inbound.routing_id).With("node_name", reg.node_name())
        << "dropped a registration whose node name does not match its routing id";
    return;
  }
  const std::string& node = reg.node_name();
  const Clock::TimePoint now = clock_.Now();
  const RegistrationOutcome outcome = nodes_.Register(reg, inbound.envelope.sender_incarnation(),
                                                      inbound.routing_id, inbound.peer_key, now);
  const NodeEntry* entry = nodes_.Find(node);

  spark::v1::Envelope ack;
  ack.mutable_registration_ack()->set_node_id(NodeId(node));
  ack.mutable_registration_ack()->set_heartbeat_interval_ms(
      static_cast<uint32_t>(options_.heartbeat_interval.count()));
  ack.mutable_registration_ack()->set_controller_time_unix_ms(WallMs(clock_));
  if (Status st = agent_plane_->Send(inbound.routing_id, std::move(ack), 0); !st.ok()) {
    SPARK_LOG(WARN).With("node", node).With("error", st) << "cannot acknowledge a registration";
  }

  store::NodeRecord record;
  record.name = node;
  record.boot_id = reg.boot_id();
  record.agent_version = reg.agent_version();
  record.backend = entry->backend;
  record.facts_json = FactsJson(reg);
  Fire([record](store::WriteTxn& txn) -> Status { return txn.UpsertNode(record).status(); },
       "node " + node);
  heartbeats_since_touch_[node] = 0;

  std::string message = "node " + node + " registered (" + RegistrationKindName(outcome.kind) +
                        ", " + std::to_string(reg.shards_size()) + " running shards, preflight " +
                        (entry->preflight_ok ? "ok" : "failed: " + entry->preflight_problem) + ")";
  RecordEvent("node_registered", "", node, 0, 0, message,
              {{"kind", RegistrationKindName(outcome.kind)},
               {"boot_id", reg.boot_id()},
               {"shards", reg.shards_size()},
               {"preflight_ok", entry->preflight_ok}});

  if (outcome.kind == RegistrationKind::kRebooted) {
    draining_.erase(std::remove_if(draining_.begin(), draining_.end(),
                                   [&](const Draining& s) { return s.node == node; }),
                    draining_.end());
    std::vector<std::string> affected;
    for (auto& [name, d] : deployments_) {
      if (!d.run) continue;
      for (const Member& m : d.run->members) {
        if (m.node == node) {
          affected.push_back(name);
          break;
        }
      }
    }
    for (const std::string& name : affected) {
      if (Deployment* d = FindDeployment(name); d && d->run) {
        FailRun(*d, "node " + node + " rebooted (its boot id changed); its shards are gone");
      }
    }
  }
  ReconcileNodeShards(node, /*full_report=*/true);
  for (auto& [name, d] : deployments_) {
    if (d.waiting_for_nodes && !d.run) d.next_attempt = std::min(d.next_attempt, now);
  }
}

void Controller::HandleHeartbeat(const AgentPlane::Inbound& inbound) {
  const spark::v1::Heartbeat& hb = inbound.envelope.heartbeat();
  if (hb.node_name() != inbound.peer.node) {
    ++stats_.dropped_messages;
    return;
  }
  const std::string& node = hb.node_name();
  switch (nodes_.Heartbeat(hb, inbound.envelope.sender_incarnation(), clock_.Now())) {
    case HeartbeatResult::kMustRegister:
      SendError(inbound.routing_id, StatusCode::kNotFound,
                "node " + node +
                    " is not registered with this controller (the controller restarted or "
                    "declared the node dead); send a NodeRegistration",
                inbound.envelope.sequence());
      return;
    case HeartbeatResult::kRebooted:
      OnNodeDead(node, "rebooted (its heartbeat carries a new boot id)");
      SendError(inbound.routing_id, StatusCode::kNotFound,
                "node " + node + " rebooted; send a NodeRegistration", inbound.envelope.sequence());
      return;
    case HeartbeatResult::kOk:
      break;
  }
  spark::v1::Envelope ack;
  ack.mutable_heartbeat_ack()->set_acked_sequence(inbound.envelope.sequence());
  ack.mutable_heartbeat_ack()->set_controller_time_unix_ms(WallMs(clock_));
  if (Status st = agent_plane_->Send(inbound.routing_id, std::move(ack), 0); !st.ok()) {
    SPARK_LOG(DEBUG).With("node", node).With("error", st) << "cannot acknowledge a heartbeat";
  }
  if (++heartbeats_since_touch_[node] >= 10) {
    heartbeats_since_touch_[node] = 0;
    Fire([node](store::WriteTxn& txn) { return txn.TouchNode(node); }, "touch node " + node);
  }
  ReconcileNodeShards(node, /*full_report=*/true);
}

void Controller::OnNodeDead(const std::string& node, const std::string& reason) {
  nodes_.MarkDead(node);
  Fire(
      [node](store::WriteTxn& txn) -> Status {
        Status st = txn.SetNodeState(node, store::NodeState::kDead);
        return st.code() == StatusCode::kNotFound ? Status::Ok() : st;
      },
      "node dead " + node);
  RecordEvent("node_dead", "", node, 0, 0, "node " + node + " is dead: " + reason);
  draining_.erase(std::remove_if(draining_.begin(), draining_.end(),
                                 [&](const Draining& s) { return s.node == node; }),
                  draining_.end());
  std::vector<std::string> affected;
  for (auto& [name, d] : deployments_) {
    if (!d.run) continue;
    for (const Member& m : d.run->members) {
      if (m.node == node) {
        affected.push_back(name);
        break;
      }
    }
  }
  for (const std::string& name : affected) {
    Deployment* d = FindDeployment(name);
    if (d == nullptr || !d->run) continue;
    int rank = 0;
    for (const Member& m : d->run->members) {
      if (m.node == node) rank = m.rank;
    }
    FailRun(*d, "node " + node + " (rank " + std::to_string(rank) + ") is dead: " + reason);
  }
}

bool Controller::IsDraining(const std::string& deployment, uint64_t generation, uint32_t rank,
                            const std::string& node) const {
  return std::any_of(draining_.begin(), draining_.end(), [&](const Draining& s) {
    return s.deployment == deployment && s.generation == generation && s.rank == rank &&
           s.node == node;
  });
}

void Controller::StopStaleShard(const std::string& node, const spark::v1::ShardSummary& shard) {
  const Clock::TimePoint now = clock_.Now();
  const std::string key = ShardKey(node, shard.deployment(), shard.generation(), shard.rank());
  auto it = stale_stop_sent_.find(key);
  if (it != stale_stop_sent_.end() && now - it->second < std::chrono::seconds(5)) return;
  const bool first = it == stale_stop_sent_.end();
  stale_stop_sent_[key] = now;
  const NodeEntry* entry = nodes_.Find(node);
  if (entry == nullptr || !entry->alive) return;
  const std::string reason = "generation " + std::to_string(shard.generation()) +
                             " of deployment \"" + shard.deployment() + "\" is not a current run";
  spark::v1::Envelope envelope;
  spark::v1::StopShard* stop = envelope.mutable_stop_shard();
  stop->set_deployment(shard.deployment());
  stop->set_run_id(shard.run_id());
  stop->set_generation(shard.generation());
  stop->set_rank(shard.rank());
  stop->set_grace_period_ms(static_cast<uint32_t>(options_.stop_grace.count()));
  stop->set_reason(reason);
  if (Status st = agent_plane_->Send(entry->routing_id, std::move(envelope), shard.generation());
      !st.ok()) {
    SPARK_LOG(WARN).With("node", node).With("error", st) << "cannot stop a stale shard";
    return;
  }
  ++stats_.stale_shards_stopped;
  if (first) {
    RecordEvent("stale_shard_stopped", shard.deployment(), node,
                static_cast<int64_t>(shard.run_id()), static_cast<int64_t>(shard.generation()),
                "stopping rank " + std::to_string(shard.rank()) + " (pid " +
                    std::to_string(shard.pid()) + ") on node " + node + ": " + reason);
  }
}

void Controller::ReconcileNodeShards(const std::string& node, bool full_report) {
  const NodeEntry* entry = nodes_.Find(node);
  if (entry == nullptr) return;
  const std::vector<spark::v1::ShardSummary> shards = entry->shards;
  std::set<std::string> reported;
  for (const spark::v1::ShardSummary& s : shards) {
    reported.insert(ShardKey(node, s.deployment(), s.generation(), s.rank()));
    Deployment* d = FindDeployment(s.deployment());
    if (d != nullptr && d->run && d->run->generation == s.generation() &&
        s.rank() < d->run->members.size() && d->run->members[s.rank()].node == node) {
      Member& m = d->run->members[s.rank()];
      store::RunMemberPatch patch;
      bool changed = false;
      if (!m.agent_confirmed) m.agent_confirmed = true;
      if (s.pid() > 0 && m.pid != s.pid()) {
        m.pid = s.pid();
        patch.pid = m.pid;
        changed = true;
      }
      // Phases the agent saw (from the shard's status file) fill in status messages that were
      // lost, e.g. while the controller restarted.
      std::optional<store::MemberPhase> phase = PhaseFromProto(s.phase());
      if (phase && !IsTerminal(*phase) && !IsTerminal(m.phase) &&
          (static_cast<int>(*phase) > static_cast<int>(m.phase) ||
           d->run->stage == RunStage::kAdopting)) {
        if (m.phase != *phase) {
          m.phase = *phase;
          patch.phase = *phase;
          changed = true;
        }
      }
      if (m.rank == 0 && !s.data_endpoint().empty()) m.data_endpoint = s.data_endpoint();
      if (changed) UpdateMember(*d, m, patch);
      continue;
    }
    if (IsDraining(s.deployment(), s.generation(), s.rank(), node)) continue;
    StopStaleShard(node, s);
  }
  if (!full_report) return;

  draining_.erase(
      std::remove_if(draining_.begin(), draining_.end(),
                     [&](const Draining& s) {
                       return s.node == node &&
                              !reported.count(ShardKey(node, s.deployment, s.generation, s.rank));
                     }),
      draining_.end());

  std::vector<std::string> names;
  for (const auto& [name, d] : deployments_) names.push_back(name);
  for (const std::string& name : names) {
    Deployment* d = FindDeployment(name);
    if (d == nullptr || !d->run) continue;
    for (const Member& m : d->run->members) {
      if (m.node != node) continue;
      if (reported.count(ShardKey(node, name, d->run->generation, static_cast<uint32_t>(m.rank)))) {
        continue;
      }
      if (d->run->stage == RunStage::kAdopting) {
        EndRun(*d,
               "controller restart: group incomplete (rank " + std::to_string(m.rank) +
                   " on node " + node + " is not running)",
               /*failure=*/false);
        break;
      }
      if (m.agent_confirmed && !IsTerminal(m.phase)) {
        FailRun(*d, "rank " + std::to_string(m.rank) + " on node " + node +
                        " is no longer running (its agent does not report it)");
        break;
      }
    }
    if (Deployment* again = FindDeployment(name); again && again->run) CheckAllReady(*again);
  }
}

// ---------------------------------------------------------------------------------------------
// Run messages

Controller::Member* Controller::AuthorizedMember(const AgentPlane::Inbound& inbound,
                                                 const std::string& deployment, uint64_t generation,
                                                 uint32_t rank, Deployment** deployment_out) {
  Deployment* d = FindDeployment(deployment);
  if (d == nullptr || !d->run || d->run->generation != generation ||
      rank >= d->run->members.size()) {
    return nullptr;
  }
  Member& m = d->run->members[rank];
  if (inbound.peer.kind == PeerId::Kind::kAgent) {
    if (inbound.peer.node != m.node) return nullptr;
  } else if (inbound.peer.deployment != deployment || inbound.peer.generation != generation ||
             inbound.peer.rank != rank) {
    return nullptr;
  }
  if (!agent_plane_->insecure()) {
    const NodeEntry* node = nodes_.Find(m.node);
    if (node == nullptr || node->curve_public_key != inbound.peer_key) return nullptr;
  }
  *deployment_out = d;
  return &m;
}

void Controller::HandleShardStatus(const AgentPlane::Inbound& inbound) {
  const spark::v1::ShardStatus& st = inbound.envelope.shard_status();
  const uint64_t generation = inbound.envelope.generation();
  if (st.generation() != 0 && st.generation() != generation) {
    ++stats_.dropped_messages;
    return;
  }
  std::optional<store::MemberPhase> phase = PhaseFromProto(st.phase());
  Deployment* d = FindDeployment(st.deployment());
  if (d == nullptr || !d->run || d->run->generation != generation) {
    // Only the agent's exit report (sent after it reaped the process) says a stopping shard is
    // gone; a shard reports STOPPED itself just before it exits.
    if (phase && IsTerminal(*phase) && inbound.peer.kind == PeerId::Kind::kAgent) {
      const std::string& node = inbound.peer.node;
      draining_.erase(std::remove_if(draining_.begin(), draining_.end(),
                                     [&](const Draining& s) {
                                       return s.deployment == st.deployment() &&
                                              s.generation == generation && s.rank == st.rank() &&
                                              s.node == node;
                                     }),
                      draining_.end());
    }
    ++stats_.fenced_messages;
    SPARK_LOG(DEBUG).With("peer", inbound.routing_id).With("generation", generation)
        << "dropped a shard status of a generation that is not current";
    return;
  }
  Member* m = AuthorizedMember(inbound, st.deployment(), generation, st.rank(), &d);
  if (m == nullptr || !phase) {
    ++stats_.dropped_messages;
    SPARK_LOG(WARN).With("peer", inbound.routing_id).With("rank", st.rank())
        << "dropped a shard status from a peer that does not run that rank";
    return;
  }
  if (inbound.peer.kind == PeerId::Kind::kAgent) m->agent_confirmed = true;
  if (m->rank == 0 && st.has_speculative()) {
    RecordSpeculativeStats(*d, generation, st.speculative());
  }
  store::RunMemberPatch patch;
  bool changed = false;
  if (st.pid() > 0 && m->pid != st.pid()) {
    m->pid = st.pid();
    patch.pid = m->pid;
    changed = true;
  }
  if (IsTerminal(*phase)) {
    const bool was_in_rendezvous = m->phase == store::MemberPhase::kRendezvous;
    m->phase = *phase;
    m->failure_reason = st.failure_reason();
    if (st.has_exit_status()) m->exit_status = st.exit_status();
    if (st.has_signal()) m->signal = st.signal();
    patch.phase = *phase;
    patch.failure_reason = st.failure_reason();
    if (st.has_exit_status()) patch.exit_status = st.exit_status();
    if (st.has_signal()) patch.signal = st.signal();
    UpdateMember(*d, *m, patch);
    std::string reason = "rank " + std::to_string(m->rank) + " on node " + m->node +
                         (*phase == store::MemberPhase::kFailed ? " failed" : " stopped");
    if (st.has_signal()) {
      reason += " (" + ExitInfo::Signal(st.signal()).ToString() + ")";
    } else if (st.has_exit_status()) {
      reason += " (" + ExitInfo::Code(st.exit_status()).ToString() + ")";
    }
    if (!st.failure_reason().empty()) reason += ": " + st.failure_reason();
    if (st.log_tail_size() > 0 && st.failure_reason().empty()) {
      reason += "; last log line: " + st.log_tail(st.log_tail_size() - 1);
    }
    if (was_in_rendezvous) {
      // What the broker saw: the ranks that never published anything.
      std::string missing;
      for (uint32_t rank : broker_.MissingRanks(st.deployment(), generation)) {
        if (rank == static_cast<uint32_t>(m->rank)) continue;
        missing += (missing.empty() ? "" : ", ") + std::string("rank ") + std::to_string(rank) +
                   " (node " + d->run->members[rank].node + ")";
      }
      if (!missing.empty()) {
        reason += "; never joined the rendezvous: " + missing +
                  ". Check the agent and shard logs on those nodes";
      }
    }
    FailRun(*d, reason);
    return;
  }
  if (static_cast<int>(*phase) > static_cast<int>(m->phase)) {
    m->phase = *phase;
    patch.phase = *phase;
    changed = true;
  }
  if (*phase == store::MemberPhase::kLoading && st.has_progress()) {
    m->progress = st.progress().fraction();
  }
  if (m->rank == 0 && !st.data_endpoint().empty()) m->data_endpoint = st.data_endpoint();
  if (changed) UpdateMember(*d, *m, patch);
  CheckAllReady(*d);
}

void Controller::RecordSpeculativeStats(Deployment& d, uint64_t generation,
                                        const spark::v1::SpeculativeStats& stats) {
  if (generation != d.speculative_generation) {
    // A new run: what the previous run counted stays in the deployment's totals.
    AddSpeculativeStats(d.speculative_run, &d.speculative_ended);
    d.speculative_generation = generation;
  }
  d.speculative_run = stats;
  d.speculative_reported = true;
}

void Controller::HandleRendezvousPublish(const AgentPlane::Inbound& inbound) {
  const spark::v1::RendezvousPublish& p = inbound.envelope.rendezvous_publish();
  const uint64_t generation = inbound.envelope.generation();
  Deployment* d = nullptr;
  if (p.generation() != generation ||
      AuthorizedMember(inbound, p.deployment(), generation, p.rank(), &d) == nullptr) {
    ++stats_.fenced_messages;
    SPARK_LOG(DEBUG).With("peer", inbound.routing_id).With("generation", generation)
        << "dropped a rendezvous publish that is not for a current run member";
    return;
  }
  std::string key;
  std::string value;
  if (p.has_kv()) {
    key = p.kv().key();
    value = p.kv().value();
  } else if (p.payload_case() == spark::v1::RendezvousPublish::kNcclUniqueId) {
    key = "nccl_unique_id";
    value = p.nccl_unique_id();
  } else {
    ++stats_.dropped_messages;
    return;
  }
  SendRendezvousReplies(broker_.Publish(p.deployment(), generation, p.rank(), key, std::move(value),
                                        inbound.routing_id));
}

void Controller::HandleRendezvousLookup(const AgentPlane::Inbound& inbound) {
  const spark::v1::RendezvousLookup& l = inbound.envelope.rendezvous_lookup();
  const uint64_t generation = inbound.envelope.generation();
  Deployment* d = nullptr;
  if (l.generation() != generation ||
      AuthorizedMember(inbound, l.deployment(), generation, l.rank(), &d) == nullptr) {
    ++stats_.fenced_messages;
    SPARK_LOG(DEBUG).With("peer", inbound.routing_id).With("generation", generation)
        << "dropped a rendezvous lookup that is not for a current run member";
    return;
  }
  const milliseconds limit = d->options.rendezvous_timeout.value_or(options_.rendezvous_timeout);
  milliseconds timeout = l.timeout_ms() > 0 ? milliseconds(l.timeout_ms()) : limit;
  timeout = std::min(timeout, limit);
  std::optional<RendezvousBroker::Reply> reply = broker_.Lookup(
      l.deployment(), generation, l.rank(), l.key(), timeout, inbound.routing_id, clock_.Now());
  if (reply) SendRendezvousReplies({*reply});
}

void Controller::HandleTokenizerFiles(const AgentPlane::Inbound& inbound) {
  const spark::v1::TokenizerFiles& files = inbound.envelope.tokenizer_files();
  Deployment* d = nullptr;
  if (files.generation() != inbound.envelope.generation() ||
      AuthorizedMember(inbound, files.deployment(), files.generation(), 0, &d) == nullptr) {
    ++stats_.fenced_messages;
    return;
  }
  d->run->tokenizer_files = std::make_shared<const std::vector<spark::v1::TokenizerFile>>(
      files.files().begin(), files.files().end());
  std::string names;
  for (const auto& f : files.files()) names += (names.empty() ? "" : ", ") + f.name();
  SPARK_LOG(INFO).With("deployment", files.deployment()).With("files", names)
      << "received the tokenizer files";
}

}  // namespace spark::controller
