#include "agent/node_facts.h"

#include <unistd.h>

#include <climits>
#include <fstream>
#include <sstream>

#include "agent/gpu.h"
#include "agent/nccl_env.h"
#include "agent/rdma.h"
#include "common/log.h"

namespace spark::agent {

Result<std::string> ReadBootId(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return NotFound("cannot read the boot id from " + path +
                    " (needs /proc mounted, or pass --boot-id-file FILE)");
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string id = buffer.str();
  while (!id.empty() && (id.back() == '\n' || id.back() == ' ' || id.back() == '\r')) id.pop_back();
  while (!id.empty() && (id.front() == ' ' || id.front() == '\n')) id.erase(id.begin());
  if (id.empty()) return DataLoss("boot id file " + path + " is empty");
  return id;
}

std::string LocalHostName() {
  char name[HOST_NAME_MAX + 1] = {};
  if (gethostname(name, sizeof(name) - 1) != 0) return "";
  return name;
}

Result<NodeFacts> CollectNodeFacts(const AgentOptions& options) {
  NodeFacts facts;
  facts.node_name = options.node_name.empty() ? LocalHostName() : options.node_name;
  if (facts.node_name.empty()) {
    return InvalidArgument("cannot determine the host name; pass --node-name NAME");
  }
  SPARK_ASSIGN_OR_RETURN(facts.boot_id, ReadBootId(options.boot_id_file));
  facts.backend = options.backend;
  if (options.backend == spark::v1::BACKEND_CUDA) {
    Result<std::vector<spark::v1::GpuInfo>> gpus = QueryGpus();
    if (gpus.ok()) {
      facts.gpus = std::move(*gpus);
    } else {
      facts.gpu_status = gpus.status();
      SPARK_LOG(WARN).With("error", gpus.status()) << "no GPU information";
    }
  }
  Result<std::vector<spark::v1::RdmaDevice>> rdma = QueryRdmaDevices();
  if (rdma.ok()) {
    facts.rdma_devices = std::move(*rdma);
  } else {
    facts.rdma_status = rdma.status();
    SPARK_LOG(WARN).With("error", rdma.status()) << "cannot list RDMA devices";
  }
  facts.nccl_env = DeriveNcclEnv(options.nccl, facts.rdma_devices, DefaultRouteInterface());
  return facts;
}

}  // namespace spark::agent
