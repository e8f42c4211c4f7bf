#include "controller/placement.h"

#include <algorithm>
#include <map>
#include <set>

namespace spark::controller {
namespace {

// "" when eligible, otherwise why not.
std::string Ineligible(const PlacementRequest& request, const PlacementCandidate& c) {
  if (!c.alive) return "not connected (no heartbeat)";
  if (!c.preflight_ok) {
    return "preflight failed" + (c.preflight_problem.empty() ? "" : ": " + c.preflight_problem);
  }
  if (!request.backend.empty() && c.backend != request.backend) {
    return "runs the " + c.backend + " backend, not " + request.backend;
  }
  if (!c.used_by.empty() && c.used_by != request.deployment) {
    return "used by deployment \"" + c.used_by + "\"";
  }
  if (c.draining) return "still stopping shards of an earlier run";
  return "";
}

}  // namespace

Result<std::vector<std::string>> PlaceRun(const PlacementRequest& request,
                                          const std::vector<PlacementCandidate>& candidates) {
  if (request.tp < 1) return InvalidArgument("tp must be at least 1");
  std::map<std::string, const PlacementCandidate*> by_name;
  for (const PlacementCandidate& c : candidates) by_name[c.name] = &c;

  if (!request.pinned.empty()) {
    if (static_cast<int>(request.pinned.size()) != request.tp) {
      return InvalidArgument("deployment \"" + request.deployment + "\" pins " +
                             std::to_string(request.pinned.size()) + " nodes but tp is " +
                             std::to_string(request.tp) + "; pin exactly tp nodes");
    }
    std::vector<std::string> problems;
    for (const std::string& name : request.pinned) {
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        problems.push_back(name + ": not registered (start spark-agent there)");
        continue;
      }
      std::string why = Ineligible(request, *it->second);
      if (!why.empty()) problems.push_back(name + ": " + why);
    }
    if (!problems.empty()) {
      std::string message =
          "deployment \"" + request.deployment + "\" is pinned to nodes that cannot run it now: ";
      for (size_t i = 0; i < problems.size(); ++i) message += (i ? "; " : "") + problems[i];
      return Unavailable(message + ". Fix those nodes or deploy without --nodes");
    }
    return request.pinned;
  }

  std::vector<std::string> eligible;
  std::vector<std::string> problems;
  for (const auto& [name, c] : by_name) {
    std::string why = Ineligible(request, *c);
    if (why.empty()) {
      eligible.push_back(name);
    } else {
      problems.push_back(name + ": " + why);
    }
  }
  if (static_cast<int>(eligible.size()) < request.tp) {
    std::string message =
        "deployment \"" + request.deployment + "\" needs " + std::to_string(request.tp) + " nodes" +
        (request.backend.empty() ? "" : " with the " + request.backend + " backend") + ", " +
        std::to_string(eligible.size()) + " eligible";
    if (!eligible.empty()) {
      message += " (";
      for (size_t i = 0; i < eligible.size(); ++i) message += (i ? ", " : "") + eligible[i];
      message += ")";
    }
    for (const std::string& p : problems) message += "; " + p;
    return Unavailable(message + ". Start more agents, free nodes, or lower tp");
  }

  std::vector<std::string> placement(request.tp);
  std::set<std::string> taken;
  const std::set<std::string> eligible_set(eligible.begin(), eligible.end());
  for (int rank = 0; rank < request.tp && rank < static_cast<int>(request.previous.size());
       ++rank) {
    const std::string& node = request.previous[rank];
    if (eligible_set.count(node) && !taken.count(node)) {
      placement[rank] = node;
      taken.insert(node);
    }
  }
  auto next = eligible.begin();
  for (int rank = 0; rank < request.tp; ++rank) {
    if (!placement[rank].empty()) continue;
    while (taken.count(*next)) ++next;
    placement[rank] = *next;
    taken.insert(*next);
  }
  return placement;
}

}  // namespace spark::controller
