// RendezvousBroker: the key-value store shards of one run use to find each other (Gloo store
// Set/Get over RendezvousPublish/RendezvousLookup, rank 0's NCCL unique id under the key
// "nccl_unique_id").
//
// Keys live in a scope per (deployment, generation) that the controller opens when it creates a
// run and closes when the run ends; a new generation never sees an old one's keys, and a message
// for a scope that is not open is refused. A lookup of a key that exists is answered at once;
// otherwise it waits until the key is published (answered then) or until its timeout (answered
// with an error naming the ranks that have not published anything yet, with their nodes, so the
// operator sees which shard never joined). Closing a scope answers its waiting lookups with an
// error.
//
// The broker does no I/O: its methods return the replies to send (to the routing id of the asking
// shard); the owner sends them.
//
// Thread safety: none; used by the controller's owner thread only.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "spark.pb.h"

namespace spark::controller {

class RendezvousBroker {
 public:
  struct Reply {
    std::string routing_id;  // the asking shard
    std::string deployment;
    uint64_t generation = 0;
    spark::v1::RendezvousReply reply;
  };

  // Opens the scope of a run. `nodes[rank]` names each rank's node (for error messages).
  void OpenScope(const std::string& deployment, uint64_t generation,
                 std::vector<std::string> nodes);
  // Drops the scope's keys; its waiting lookups get an error with `reason`.
  std::vector<Reply> CloseScope(const std::string& deployment, uint64_t generation,
                                const std::string& reason);
  bool HasScope(const std::string& deployment, uint64_t generation) const;

  // Stores key=value (a later publish of the same key replaces it) and answers the lookups that
  // waited for it. A publish to a scope that is not open, or by a rank outside the group, is
  // answered with an error addressed to `routing_id`.
  std::vector<Reply> Publish(const std::string& deployment, uint64_t generation, uint32_t rank,
                             const std::string& key, std::string value,
                             const std::string& routing_id);
  // Answers at once (key present, scope unknown, bad rank) or queues the lookup until the key is
  // published or `now + timeout` passes (nullopt then).
  std::optional<Reply> Lookup(const std::string& deployment, uint64_t generation, uint32_t rank,
                              const std::string& key, std::chrono::milliseconds timeout,
                              const std::string& routing_id, Clock::TimePoint now);
  // Answers every lookup whose deadline is at or before `now` with an error.
  std::vector<Reply> Expire(Clock::TimePoint now);
  // Earliest deadline of a waiting lookup.
  std::optional<Clock::TimePoint> NextDeadline() const;

  // Ranks of the scope that have published nothing yet (empty for an unknown scope).
  std::vector<uint32_t> MissingRanks(const std::string& deployment, uint64_t generation) const;
  size_t waiting() const;

 private:
  struct Waiter {
    std::string routing_id;
    uint32_t rank = 0;
    std::string key;
    Clock::TimePoint deadline;
    std::chrono::milliseconds timeout{0};
  };
  struct Scope {
    std::vector<std::string> nodes;
    std::map<std::string, std::string> values;
    std::set<uint32_t> published_ranks;
    std::vector<Waiter> waiters;
  };
  using ScopeKey = std::pair<std::string, uint64_t>;

  static Reply ErrorReply(const std::string& routing_id, const std::string& deployment,
                          uint64_t generation, const std::string& key, std::string error);
  std::string TimeoutMessage(const ScopeKey& key, const Scope& scope, const Waiter& w) const;

  std::map<ScopeKey, Scope> scopes_;
};

}  // namespace spark::controller
