// Placement: which node runs each rank of a new run.
//
// One rank per node. A node is eligible when it is alive, passed its preflight, runs the wanted
// backend, is not used by another deployment's run and is not still stopping shards of an
// earlier run. Pinned nodes (the request's `nodes`) are used as given, rank i on pinned[i], and
// every one of them must be eligible. Otherwise the previous placement is kept where its nodes
// are eligible (same rank on the same node, so a restarted group lands where its data is warm)
// and the remaining ranks take the other eligible nodes in name order.
//
// When no placement exists the error (Unavailable) says how many nodes are needed, which are
// eligible, and why each other node is not, so the operator knows what to fix.
//
// Thread safety: a pure function.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"

namespace spark::controller {

struct PlacementCandidate {
  std::string name;
  bool alive = true;
  bool preflight_ok = true;
  std::string preflight_problem;  // why the preflight failed (shown in the error)
  std::string backend;            // "cpu" or "cuda"
  std::string used_by;            // deployment whose run uses the node; "" when free
  bool draining = false;          // still stopping shards of an ended run
};

struct PlacementRequest {
  std::string deployment;
  int tp = 1;
  std::string backend;                // "" = any
  std::vector<std::string> pinned;    // empty, or exactly tp node names (rank order)
  std::vector<std::string> previous;  // the last run's placement (rank order); may be empty
};

// Returns the node name of every rank (size tp).
Result<std::vector<std::string>> PlaceRun(const PlacementRequest& request,
                                          const std::vector<PlacementCandidate>& candidates);

}  // namespace spark::controller
