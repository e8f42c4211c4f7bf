#include "controller/rendezvous_broker.h"

#include <algorithm>

namespace spark::controller {

void RendezvousBroker::OpenScope(const std::string& deployment, uint64_t generation,
                                 std::vector<std::string> nodes) {
  Scope& scope = scopes_[{deployment, generation}];
  scope = Scope{};
  scope.nodes = std::move(nodes);
}

std::vector<RendezvousBroker::Reply> RendezvousBroker::CloseScope(const std::string& deployment,
                                                                  uint64_t generation,
                                                                  const std::string& reason) {
  std::vector<Reply> replies;
  auto it = scopes_.find({deployment, generation});
  if (it == scopes_.end()) return replies;
  for (const Waiter& w : it->second.waiters) {
    replies.push_back(ErrorReply(w.routing_id, deployment, generation, w.key,
                                 "the run of deployment \"" + deployment + "\" generation " +
                                     std::to_string(generation) + " ended: " + reason));
  }
  scopes_.erase(it);
  return replies;
}

bool RendezvousBroker::HasScope(const std::string& deployment, uint64_t generation) const {
  return scopes_.count({deployment, generation}) > 0;
}

RendezvousBroker::Reply RendezvousBroker::ErrorReply(const std::string& routing_id,
                                                     const std::string& deployment,
                                                     uint64_t generation, const std::string& key,
                                                     std::string error) {
  Reply r;
  r.routing_id = routing_id;
  r.deployment = deployment;
  r.generation = generation;
  r.reply.set_key(key);
  r.reply.set_found(false);
  r.reply.set_error(std::move(error));
  return r;
}

std::vector<RendezvousBroker::Reply> RendezvousBroker::Publish(const std::string& deployment,
                                                               uint64_t generation, uint32_t rank,
                                                               const std::string& key,
                                                               std::string value,
                                                               const std::string& routing_id) {
  std::vector<Reply> replies;
  auto it = scopes_.find({deployment, generation});
  if (it == scopes_.end()) {
    replies.push_back(ErrorReply(routing_id, deployment, generation, key,
                                 "no open run of deployment \"" + deployment + "\" generation " +
                                     std::to_string(generation) +
                                     " (stale or unknown generation); this shard should exit"));
    return replies;
  }
  Scope& scope = it->second;
  if (rank >= scope.nodes.size()) {
    replies.push_back(ErrorReply(routing_id, deployment, generation, key,
                                 "rank " + std::to_string(rank) + " is outside the group of " +
                                     std::to_string(scope.nodes.size()) + " ranks"));
    return replies;
  }
  scope.published_ranks.insert(rank);
  scope.values[key] = std::move(value);
  const std::string& stored = scope.values[key];
  auto waiter = scope.waiters.begin();
  while (waiter != scope.waiters.end()) {
    if (waiter->key != key) {
      ++waiter;
      continue;
    }
    Reply r;
    r.routing_id = waiter->routing_id;
    r.deployment = deployment;
    r.generation = generation;
    r.reply.set_key(key);
    r.reply.set_value(stored);
    r.reply.set_found(true);
    replies.push_back(std::move(r));
    waiter = scope.waiters.erase(waiter);
  }
  return replies;
}

std::optional<RendezvousBroker::Reply> RendezvousBroker::Lookup(
    const std::string& deployment, uint64_t generation, uint32_t rank, const std::string& key,
    std::chrono::milliseconds timeout, const std::string& routing_id, Clock::TimePoint now) {
  auto it = scopes_.find({deployment, generation});
  if (it == scopes_.end()) {
    return ErrorReply(routing_id, deployment, generation, key,
                      "no open run of deployment \"" + deployment + "\" generation " +
                          std::to_string(generation) +
                          " (stale or unknown generation); this shard should exit");
  }
  Scope& scope = it->second;
  if (rank >= scope.nodes.size()) {
    return ErrorReply(routing_id, deployment, generation, key,
                      "rank " + std::to_string(rank) + " is outside the group of " +
                          std::to_string(scope.nodes.size()) + " ranks");
  }
  auto value = scope.values.find(key);
  if (value != scope.values.end()) {
    Reply r;
    r.routing_id = routing_id;
    r.deployment = deployment;
    r.generation = generation;
    r.reply.set_key(key);
    r.reply.set_value(value->second);
    r.reply.set_found(true);
    return r;
  }
  Waiter w;
  w.routing_id = routing_id;
  w.rank = rank;
  w.key = key;
  w.timeout = std::max(timeout, std::chrono::milliseconds(0));
  w.deadline = now + w.timeout;
  if (w.timeout.count() == 0) {
    return ErrorReply(routing_id, deployment, generation, key,
                      TimeoutMessage({deployment, generation}, scope, w));
  }
  scope.waiters.push_back(std::move(w));
  return std::nullopt;
}

std::string RendezvousBroker::TimeoutMessage(const ScopeKey& key, const Scope& scope,
                                             const Waiter& w) const {
  std::string missing;
  for (uint32_t rank = 0; rank < scope.nodes.size(); ++rank) {
    if (scope.published_ranks.count(rank)) continue;
    if (!missing.empty()) missing += ", ";
    missing += std::to_string(rank) + " (node " + scope.nodes[rank] + ")";
  }
  std::string message = "rendezvous of deployment \"" + key.first + "\" generation " +
                        std::to_string(key.second) + ": key \"" + w.key +
                        "\" was not published within " + std::to_string(w.timeout.count()) + " ms";
  if (missing.empty()) {
    message += "; every rank has published something, but not this key";
  } else {
    message += "; ranks that have not joined: " + missing +
               ". Check that their shards started (agent logs on those nodes)";
  }
  return message;
}

std::vector<RendezvousBroker::Reply> RendezvousBroker::Expire(Clock::TimePoint now) {
  std::vector<Reply> replies;
  for (auto& [key, scope] : scopes_) {
    auto w = scope.waiters.begin();
    while (w != scope.waiters.end()) {
      if (w->deadline > now) {
        ++w;
        continue;
      }
      replies.push_back(
          ErrorReply(w->routing_id, key.first, key.second, w->key, TimeoutMessage(key, scope, *w)));
      w = scope.waiters.erase(w);
    }
  }
  return replies;
}

std::optional<Clock::TimePoint> RendezvousBroker::NextDeadline() const {
  std::optional<Clock::TimePoint> next;
  for (const auto& [key, scope] : scopes_) {
    for (const Waiter& w : scope.waiters) {
      if (!next || w.deadline < *next) next = w.deadline;
    }
  }
  return next;
}

std::vector<uint32_t> RendezvousBroker::MissingRanks(const std::string& deployment,
                                                     uint64_t generation) const {
  std::vector<uint32_t> missing;
  auto it = scopes_.find({deployment, generation});
  if (it == scopes_.end()) return missing;
  for (uint32_t rank = 0; rank < it->second.nodes.size(); ++rank) {
    if (!it->second.published_ranks.count(rank)) missing.push_back(rank);
  }
  return missing;
}

size_t RendezvousBroker::waiting() const {
  size_t n = 0;
  for (const auto& [key, scope] : scopes_) n += scope.waiters.size();
  return n;
}

}  // namespace spark::controller
