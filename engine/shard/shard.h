// spark-shard: one tensor-parallel rank of a deployment's run, started by spark-agent
// (docs/control-plane.md flows 2-6).
//
// RunShard reads the ShardAssignment, connects to the controller (ControllerLink, CURVE with the
// agent's keys unless insecure) and then, reporting each phase as a ShardStatus:
//   STARTING    checks the assignment, engine options and backend (with speculative decoding on,
//               that the model declares an MTP layer);
//   RENDEZVOUS  joins the Gloo group through the controller's key-value store within the
//               rendezvous timeout (a rank that cannot reach its peers fails naming the missing
//               ranks);
//   LOADING     loads its slice of the weights (or dummy weights), with progress, creates the CPU
//               backend and its KV cache, then waits until every rank has loaded (each rank
//               publishes loaded/<rank> in the store: a rank that failed makes every rank fail
//               naming it); with speculative decoding on it also loads the MTP layer and fails
//               when the checkpoint has none or the backend cannot speculate ("not supported yet
//               on the cuda backend");
//   READY       rank 0 binds the data plane and serves it (LeaderLoop); other ranks run the
//               worker loop (RunTpWorker) until rank 0 stops the group. With speculative
//               decoding on, rank 0 repeats READY about once a second while its counters change,
//               carrying them (ShardStatus.speculative) to the controller's metrics.
// A watchdog bounds each step and collective (engine option step_timeout_ms) and the time from
// start to READY (assignment deadline_ms); when it fires the shard reports FAILED ("collective
// hung ..." / "not READY within ...") and _exits. SIGTERM/SIGINT: rank 0 cancels live requests
// and stops the workers; every rank reports STOPPED and exits 0 (a rank that is not serving, or
// that does not finish within 10 s, reports and _exits at once).
//
// Thread safety: RunShard is called once, from main(), before any other thread exists.
#pragma once

#include <filesystem>
#include <string>

namespace spark::shard {

// Exit codes of spark-shard.
enum ShardExitCode : int {
  kExitOk = 0,           // stopped on request (signal) or by rank 0's stop message
  kExitFailed = 1,       // failed while serving: a step or collective failed, a peer rank died
  kExitUsage = 2,        // bad command line, unreadable or invalid assignment, keys or options
  kExitRendezvous = 3,   // the group did not form (missing ranks named) or the controller is gone
  kExitLoad = 4,         // loading or creating the backend failed, on this rank or a peer
  kExitUnsupported = 5,  // a valid assignment this build cannot run (CUDA backend without CUDA,
                         // speculative decoding on a backend without it)
  kExitWatchdog = 6,     // a step or collective hung, or not READY by the assignment deadline
};

struct ShardArgs {
  std::filesystem::path assignment_path;  // --assignment: serialized ShardAssignment
  std::string controller_endpoint;        // --controller tcp://HOST:PORT
  std::string node_name;                  // --node (for logs)
  std::filesystem::path keys_dir;         // --keys: agent.key and controller.pub
  bool insecure = false;                  // --insecure: no CURVE anywhere
  std::string advertise_host;             // --advertise-host; empty: route toward the controller
  int64_t step_timeout_ms = 0;            // --step-timeout-ms; 0: engine option or 30000
  std::string status_file;                // $SPARK_SHARD_STATUS_FILE; empty: none
};

// Runs the shard to its end; returns the process exit code (ShardExitCode).
int RunShard(const ShardArgs& args);

}  // namespace spark::shard
