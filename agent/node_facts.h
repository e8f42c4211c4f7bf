// NodeFacts: what the agent tells the controller about its node (name, boot id, backend, GPUs,
// RDMA ports, the NCCL environment its shards get), gathered once at start.
//
// Thread safety: CollectNodeFacts and the readers are safe from any thread; CollectNodeFacts may
// take seconds on a CUDA build (see gpu.h), so it runs before the event loop. NodeFacts is a value.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "agent/agent_options.h"
#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

struct NodeFacts {
  std::string node_name;
  std::string boot_id;
  spark::v1::Backend backend = spark::v1::BACKEND_CPU;
  std::vector<spark::v1::GpuInfo> gpus;
  Status gpu_status;  // why `gpus` is empty (no CUDA build, no driver); OK otherwise
  std::vector<spark::v1::RdmaDevice> rdma_devices;
  Status rdma_status;  // why the RDMA list could not be read; OK when read (even if empty)
  std::map<std::string, std::string> nccl_env;
};

// The boot id in `path` (trimmed). NotFound / DataLoss (empty file) name the file.
Result<std::string> ReadBootId(const std::string& path);

// gethostname(), "" on failure.
std::string LocalHostName();

// Node name (options or host name), boot id, GPUs (only for the CUDA backend), RDMA devices and
// the NCCL environment. Fails only when the boot id cannot be read or no node name is known.
Result<NodeFacts> CollectNodeFacts(const AgentOptions& options);

}  // namespace spark::agent
