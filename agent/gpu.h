// The GPUs this node's shards can use, as GpuInfo messages.
//
// Built with SPARK_CUDA (SPARK_HAVE_CUDA=1): engine/cuda QueryAllDevices, then every device's
// primary context is released again so that the agent holds no GPU memory. Built without CUDA:
// Unimplemented ("this spark-agent was built without CUDA"). A CUDA build on a node without a
// usable driver: Unavailable with CUDA's reason.
//
// Thread safety: safe from any thread, but slow on the first call (CUDA initialisation, up to
// seconds): call it at start, not from the agent's event loop.
#pragma once

#include <vector>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

// True when this build has the CUDA backend.
bool BuiltWithCuda();

Result<std::vector<spark::v1::GpuInfo>> QueryGpus();

}  // namespace spark::agent
