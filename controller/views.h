// Views: snapshots of the controller's state handed to the REST API and tests (copied values,
// taken on the controller's owner thread).
//
// Thread safety: plain values.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "controller/store/records.h"
#include "spark.pb.h"

namespace spark::controller {

struct MemberView {
  int rank = 0;
  std::string node;
  store::MemberPhase phase = store::MemberPhase::kAssigned;
  int64_t pid = 0;
  double progress = 0;  // loading progress in [0, 1]
  std::optional<int> exit_status;
  std::optional<int> signal;
  std::string failure_reason;
};

struct DeploymentView {
  store::DeploymentRecord record;  // name, spec, desired, state, generation, restarts, last_error
  int64_t run_id = 0;              // current run; 0 when none
  std::string run_state;           // "starting", "probing", "ready", "adopting"; "" when none
  int64_t run_started_unix_ms = 0;
  std::vector<MemberView> members;  // of the current run, rank order
  std::string waiting_reason;       // why no run is starting now (placement, backoff)
  bool serving = false;             // a generation can be served now
  // Speculative decoding counters summed over the deployment's runs since the controller
  // started; set when the deployment asks for speculative decoding (zeros until rank 0 reports)
  // or when rank 0 reported counters (the automatic mode turned it on).
  std::optional<spark::v1::SpeculativeStats> speculative;
};

// Adds every counter of `add` to `into`.
inline void AddSpeculativeStats(const spark::v1::SpeculativeStats& add,
                                spark::v1::SpeculativeStats* into) {
  into->set_verify_steps(into->verify_steps() + add.verify_steps());
  into->set_drafted_tokens(into->drafted_tokens() + add.drafted_tokens());
  into->set_accepted_tokens(into->accepted_tokens() + add.accepted_tokens());
  into->set_emitted_tokens(into->emitted_tokens() + add.emitted_tokens());
  into->set_draft_ms(into->draft_ms() + add.draft_ms());
  into->set_verify_ms(into->verify_ms() + add.verify_ms());
}

// Mean tokens per verify step: accepted drafts / verify steps + 1 (the bonus token), as the
// engine's SpeculativeStats::AcceptanceLength; 0 before the first verify step.
inline double AcceptanceLength(const spark::v1::SpeculativeStats& stats) {
  return stats.verify_steps() == 0 ? 0.0
                                   : static_cast<double>(stats.accepted_tokens()) /
                                             static_cast<double>(stats.verify_steps()) +
                                         1.0;
}

struct NodeView {
  std::string name;
  std::string state;  // "alive", "dead", or "unknown" (not registered since the controller started)
  std::string boot_id;
  std::string agent_version;
  std::string backend;
  int64_t last_seen_ms_ago = -1;  // -1 when never seen since the controller started
  bool preflight_ok = false;
  std::string preflight_problem;
  spark::v1::NodeRegistration registration;  // facts (GPUs, RDMA, preflight, NCCL env)
  std::vector<spark::v1::ShardSummary> shards;
  std::vector<std::string> used_by;  // deployments whose current run has a member here
};

struct ReadinessView {
  bool ready = false;
  bool store_ok = false;
  std::string store_error;
  std::vector<std::string> not_ready;  // "name: state (reason)" for each deployment not ready
};

// A model as the inference endpoints see it.
struct ServingModelView {
  std::string name;
  std::string state;  // DeploymentStateName: "ready", "recovering", ...
  bool serving = false;
  bool failed = false;      // gave up (restart budget spent) or stopped: waiting does not help
  uint64_t generation = 0;  // of the current run; 0 when none
  int64_t created_at_ms = 0;
  std::string waiting_reason;
  // The tokenizer files of the current run (shared, immutable); null until they arrived.
  std::shared_ptr<const std::vector<spark::v1::TokenizerFile>> tokenizer_files;
};

}  // namespace spark::controller
