// NodeRegistry: the controller's live view of its agents (who registered, from which boot, when
// each was last heard from, what it runs).
//
// A node is alive from a registration until `missed_heartbeats` heartbeat intervals pass without
// a registration or heartbeat; ExpireDead then reports it dead. A heartbeat from a node that is
// not registered (or was declared dead, or comes from another agent incarnation) is refused
// (kMustRegister): the caller tells the agent to register again, so every revival carries fresh
// facts and the list of shards it still runs. Registrations are classified so the reconciler can
// tell a reconnect (same agent process) from an agent restart (new incarnation, same boot id) and
// from a reboot (new boot id): the last two mean shards of runs on that node may be gone.
//
// Nodes known from the store (Seed) start not alive until their agent registers; their stored
// boot id still lets the first registration after a controller restart detect a reboot.
//
// Thread safety: none; used by the controller's owner thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/clock.h"
#include "spark.pb.h"

namespace spark::controller {

struct NodeEntry {
  std::string name;
  std::string routing_id;  // agent/<name>
  std::string boot_id;
  std::string agent_version;
  std::string backend;           // "cpu", "cuda" or "" (unknown)
  std::string curve_public_key;  // agent's CURVE key (authenticated by ZAP when secure)
  uint64_t incarnation = 0;      // agent process incarnation; 0 = not registered since start
  bool alive = false;
  Clock::TimePoint registered_at{};
  Clock::TimePoint last_seen{};
  bool preflight_ok = false;
  std::string preflight_problem;                // first failed check with its fix ("" when ok)
  spark::v1::NodeRegistration registration;     // facts of the last registration
  std::vector<spark::v1::ShardSummary> shards;  // shards reported last
};

enum class RegistrationKind {
  kFirst,           // first registration of this node since the controller started
  kReconnect,       // same agent process (same incarnation and boot id)
  kAgentRestarted,  // new agent incarnation, same boot id
  kRebooted,        // the boot id changed
};
const char* RegistrationKindName(RegistrationKind kind);

struct RegistrationOutcome {
  RegistrationKind kind = RegistrationKind::kFirst;
  bool was_alive = false;
};

enum class HeartbeatResult {
  kOk,
  kMustRegister,  // unknown, dead, or another incarnation: the agent must register again
  kRebooted,      // the boot id differs from the registered one (the node is now not alive)
};

class NodeRegistry {
 public:
  NodeRegistry(std::chrono::milliseconds heartbeat_interval, int missed_heartbeats)
      : interval_(heartbeat_interval), missed_(missed_heartbeats) {}

  // A node known from the store: not alive until it registers.
  void Seed(const std::string& name, const std::string& boot_id, const std::string& backend);

  RegistrationOutcome Register(const spark::v1::NodeRegistration& registration,
                               uint64_t incarnation, const std::string& routing_id,
                               const std::string& curve_public_key, Clock::TimePoint now);
  HeartbeatResult Heartbeat(const spark::v1::Heartbeat& heartbeat, uint64_t incarnation,
                            Clock::TimePoint now);
  // Marks alive nodes silent for missed_heartbeats intervals as dead; returns their names.
  std::vector<std::string> ExpireDead(Clock::TimePoint now);
  // Marks a node dead now (e.g. its registration showed a reboot).
  void MarkDead(const std::string& name);
  // When the next alive node would be declared dead.
  std::optional<Clock::TimePoint> NextDeadline() const;

  const NodeEntry* Find(const std::string& name) const;
  const std::map<std::string, NodeEntry>& nodes() const { return nodes_; }
  bool IsAlive(const std::string& name) const;

  std::chrono::milliseconds heartbeat_interval() const { return interval_; }
  std::chrono::milliseconds dead_after() const { return interval_ * missed_; }

 private:
  std::chrono::milliseconds interval_;
  int missed_;
  std::map<std::string, NodeEntry> nodes_;
};

}  // namespace spark::controller
