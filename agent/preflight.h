// Preflight: the checks an agent runs on its node at registration and before every shard start,
// each reported as a PreflightResult (check name, ok, what was found, and when it failed what the
// operator should do, in plain language).
//
// Node checks (RunNodePreflight): backend (CUDA backend on a build without CUDA), gpu_visible,
// rdma (device list readable), rdma_port_active (one per port), nccl_socket_ifname and
// nccl_ib_hca (configured names exist), shard_binary (executable), state_dir (writable).
// Assignment checks (RunAssignmentPreflight): assignment (consistent rank/world size/generation),
// backend (the node runs the asked backend), model_path (directory readable, config.json
// readable), gpu_visible (the assigned ordinal exists), memory (the rank's share of the
// checkpoint fits the free GPU memory, or MemAvailable on the CPU backend), shard_binary.
// RDMA is never required on the CPU backend.
//
// Thread safety: pure functions over the file system and the given facts. Each is a few stat()
// calls and a directory listing: fine on the event loop.
#pragma once

#include <string>
#include <vector>

#include "agent/agent_options.h"
#include "agent/node_facts.h"
#include "spark.pb.h"

namespace spark::agent {

struct PreflightContext {
  NodeFacts facts;
  NcclSettings nccl;         // configured values (empty: detected)
  std::string shard_binary;  // resolved path
  std::string state_dir;
  std::string meminfo_path = "/proc/meminfo";
  std::string net_class_dir = "/sys/class/net";
};

std::vector<spark::v1::PreflightResult> RunNodePreflight(const PreflightContext& context);
std::vector<spark::v1::PreflightResult> RunAssignmentPreflight(
    const PreflightContext& context, const spark::v1::ShardAssignment& assignment);

bool PreflightPassed(const std::vector<spark::v1::PreflightResult>& results);
// "<check>: <message>. Fix: <fix>" for every failed check, joined by "; ". Empty when all passed.
std::string PreflightFailureReason(const std::vector<spark::v1::PreflightResult>& results);

// MemAvailable of a /proc/meminfo style file in bytes; -1 when missing.
int64_t MemAvailableBytes(const std::string& meminfo_path = "/proc/meminfo");

// "1.5 GiB".
std::string FormatBytes(uint64_t bytes);

}  // namespace spark::agent
