#include "controller/node_registry.h"

#include <optional>

namespace spark::controller {

const char* RegistrationKindName(RegistrationKind kind) {
  switch (kind) {
    case RegistrationKind::kFirst:
      return "first";
    case RegistrationKind::kReconnect:
      return "reconnect";
    case RegistrationKind::kAgentRestarted:
      return "agent_restarted";
    case RegistrationKind::kRebooted:
      return "rebooted";
  }
  return "unknown";
}

namespace {

std::string BackendName(spark::v1::Backend backend) {
  switch (backend) {
    case spark::v1::BACKEND_CPU:
      return "cpu";
    case spark::v1::BACKEND_CUDA:
      return "cuda";
    default:
      return "";
  }
}

}  // namespace

void NodeRegistry::Seed(const std::string& name, const std::string& boot_id,
                        const std::string& backend) {
  NodeEntry& entry = nodes_[name];
  entry.name = name;
  entry.routing_id = "agent/" + name;
  entry.boot_id = boot_id;
  entry.backend = backend;
  entry.alive = false;
  entry.incarnation = 0;
}

RegistrationOutcome NodeRegistry::Register(const spark::v1::NodeRegistration& registration,
                                           uint64_t incarnation, const std::string& routing_id,
                                           const std::string& curve_public_key,
                                           Clock::TimePoint now) {
  RegistrationOutcome outcome;
  auto it = nodes_.find(registration.node_name());
  if (it != nodes_.end()) {
    const NodeEntry& old = it->second;
    outcome.was_alive = old.alive;
    if (!old.boot_id.empty() && old.boot_id != registration.boot_id()) {
      outcome.kind = RegistrationKind::kRebooted;
    } else if (old.incarnation == 0) {
      outcome.kind = RegistrationKind::kFirst;
    } else if (old.incarnation == incarnation) {
      outcome.kind = RegistrationKind::kReconnect;
    } else {
      outcome.kind = RegistrationKind::kAgentRestarted;
    }
  }
  NodeEntry& entry = nodes_[registration.node_name()];
  entry.name = registration.node_name();
  entry.routing_id = routing_id;
  entry.boot_id = registration.boot_id();
  entry.agent_version = registration.agent_version();
  entry.backend = BackendName(registration.backend());
  entry.curve_public_key =
      curve_public_key.empty() ? registration.curve_public_key() : curve_public_key;
  entry.incarnation = incarnation;
  entry.alive = true;
  entry.registered_at = now;
  entry.last_seen = now;
  entry.preflight_ok = true;
  entry.preflight_problem.clear();
  for (const spark::v1::PreflightResult& check : registration.preflight()) {
    if (check.ok()) continue;
    entry.preflight_ok = false;
    entry.preflight_problem = check.check() + ": " + check.message() +
                              (check.fix().empty() ? "" : " (fix: " + check.fix() + ")");
    break;
  }
  entry.registration = registration;
  entry.shards.assign(registration.shards().begin(), registration.shards().end());
  return outcome;
}

HeartbeatResult NodeRegistry::Heartbeat(const spark::v1::Heartbeat& heartbeat, uint64_t incarnation,
                                        Clock::TimePoint now) {
  auto it = nodes_.find(heartbeat.node_name());
  if (it == nodes_.end() || !it->second.alive || it->second.incarnation != incarnation) {
    return HeartbeatResult::kMustRegister;
  }
  NodeEntry& entry = it->second;
  if (!heartbeat.boot_id().empty() && heartbeat.boot_id() != entry.boot_id) {
    entry.alive = false;
    return HeartbeatResult::kRebooted;
  }
  entry.last_seen = now;
  entry.shards.assign(heartbeat.shards().begin(), heartbeat.shards().end());
  return HeartbeatResult::kOk;
}

std::vector<std::string> NodeRegistry::ExpireDead(Clock::TimePoint now) {
  std::vector<std::string> dead;
  for (auto& [name, entry] : nodes_) {
    if (entry.alive && now - entry.last_seen >= dead_after()) {
      entry.alive = false;
      dead.push_back(name);
    }
  }
  return dead;
}

void NodeRegistry::MarkDead(const std::string& name) {
  auto it = nodes_.find(name);
  if (it != nodes_.end()) it->second.alive = false;
}

std::optional<Clock::TimePoint> NodeRegistry::NextDeadline() const {
  std::optional<Clock::TimePoint> next;
  for (const auto& [name, entry] : nodes_) {
    if (!entry.alive) continue;
    const Clock::TimePoint deadline = entry.last_seen + dead_after();
    if (!next || deadline < *next) next = deadline;
  }
  return next;
}

const NodeEntry* NodeRegistry::Find(const std::string& name) const {
  auto it = nodes_.find(name);
  return it == nodes_.end() ? nullptr : &it->second;
}

bool NodeRegistry::IsAlive(const std::string& name) const {
  const NodeEntry* entry = Find(name);
  return entry != nullptr && entry->alive;
}

}  // namespace spark::controller
