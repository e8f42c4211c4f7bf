#include "agent/preflight.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>

#include "agent/gpu.h"
#include "agent/nccl_env.h"
#include "common/fd.h"

namespace spark::agent {
namespace {

namespace fs = std::filesystem;
using spark::v1::PreflightResult;

PreflightResult Pass(std::string check, std::string message) {
  PreflightResult r;
  r.set_check(std::move(check));
  r.set_ok(true);
  r.set_message(std::move(message));
  return r;
}

PreflightResult Fail(std::string check, std::string message, std::string fix) {
  PreflightResult r;
  r.set_check(std::move(check));
  r.set_ok(false);
  r.set_message(std::move(message));
  r.set_fix(std::move(fix));
  return r;
}

bool IsActive(const spark::v1::RdmaDevice& d) {
  return d.state() == spark::v1::RDMA_PORT_STATE_ACTIVE ||
         d.state() == spark::v1::RDMA_PORT_STATE_ACTIVE_DEFER;
}

std::string PortStateName(spark::v1::RdmaPortState state) {
  std::string name = spark::v1::RdmaPortState_Name(state);
  if (name.starts_with("RDMA_PORT_STATE_")) name = name.substr(16);
  return name;
}

std::string DescribePort(const spark::v1::RdmaDevice& d) {
  std::ostringstream s;
  s << d.name() << " port " << d.port() << ": " << PortStateName(d.state()) << ", "
    << d.link_speed_gbps() << " Gb/s, MTU " << d.active_mtu_bytes() << ", " << d.link_layer();
  if (!d.gid().empty()) s << ", GID index " << d.gid_index() << " (" << d.gid() << ")";
  if (!d.netdev().empty()) s << ", interface " << d.netdev();
  return s.str();
}

std::vector<std::string> ListInterfaces(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    out.push_back(entry.path().filename().string());
  }
  return out;
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) out += (out.empty() ? "" : ", ") + item;
  return out.empty() ? "(none)" : out;
}

PreflightResult CheckShardBinary(const std::string& path) {
  if (path.empty() || ::access(path.c_str(), X_OK) != 0) {
    return Fail("shard_binary", "spark-shard not found or not executable at \"" + path + "\"",
                "install spark-shard next to spark-agent, or pass --shard-binary PATH "
                "(shard_binary in the config file)");
  }
  return Pass("shard_binary", "spark-shard at " + path);
}

PreflightResult CheckGpuVisible(const PreflightContext& c) {
  if (c.facts.backend != spark::v1::BACKEND_CUDA) {
    return Pass("gpu_visible", "cpu backend: no GPU needed");
  }
  if (c.facts.gpus.empty()) {
    const std::string why =
        c.facts.gpu_status.ok() ? "no CUDA device visible" : c.facts.gpu_status.message();
    return Fail("gpu_visible", why,
                "check `nvidia-smi` on this node (driver loaded, GPU healthy) and that "
                "CUDA_VISIBLE_DEVICES does not hide the GPUs from spark-agent");
  }
  std::string found;
  for (const auto& g : c.facts.gpus) {
    found += (found.empty() ? "" : ", ") + std::to_string(g.index()) + ": " + g.name() + " (" +
             FormatBytes(g.free_memory_bytes()) + " free of " +
             FormatBytes(g.total_memory_bytes()) + ")";
  }
  return Pass("gpu_visible", found);
}

// Sum of the *.safetensors sizes in `dir`; 0 when there are none.
uint64_t SafetensorsBytes(const std::string& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    if (entry.path().extension() != ".safetensors") continue;
    std::error_code size_ec;
    const uintmax_t size = entry.file_size(size_ec);
    if (!size_ec) total += size;
  }
  return total;
}

}  // namespace

std::string FormatBytes(uint64_t bytes) {
  char buffer[32];
  const double gib = static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0);
  if (gib >= 1.0) {
    std::snprintf(buffer, sizeof(buffer), "%.1f GiB", gib);
  } else {
    std::snprintf(buffer, sizeof(buffer), "%.1f MiB",
                  static_cast<double>(bytes) / (1024.0 * 1024.0));
  }
  return buffer;
}

int64_t MemAvailableBytes(const std::string& meminfo_path) {
  std::ifstream in(meminfo_path);
  std::string key;
  int64_t value = 0;
  std::string unit;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    if (!(fields >> key >> value)) continue;
    if (key == "MemAvailable:") {
      fields >> unit;
      return unit == "kB" ? value * 1024 : value;
    }
  }
  return -1;
}

std::vector<PreflightResult> RunNodePreflight(const PreflightContext& c) {
  std::vector<PreflightResult> out;
  const bool cuda = c.facts.backend == spark::v1::BACKEND_CUDA;
  if (cuda && !BuiltWithCuda()) {
    out.push_back(Fail("backend",
                       "the node is configured for the cuda backend but this spark-agent "
                       "was built without CUDA",
                       "install the CUDA build of spark (SPARK_CUDA=ON), or run the node with "
                       "--backend cpu"));
  } else {
    out.push_back(Pass("backend", std::string(BackendName(c.facts.backend)) + " backend"));
  }
  out.push_back(CheckGpuVisible(c));

  // RDMA.
  if (!c.facts.rdma_status.ok()) {
    if (cuda) {
      out.push_back(Fail("rdma", "cannot list RDMA devices: " + c.facts.rdma_status.message(),
                         "install rdma-core and ibverbs-providers and load the NIC's RDMA driver "
                         "(mlx5_ib), then check `ibv_devices`"));
    } else {
      out.push_back(Pass("rdma", "cannot list RDMA devices (" + c.facts.rdma_status.message() +
                                     "); the CPU backend does not need RDMA"));
    }
  } else if (c.facts.rdma_devices.empty()) {
    out.push_back(Pass("rdma", cuda ? "no RDMA devices: NCCL uses TCP sockets between nodes "
                                      "(much slower for tensor parallelism across nodes)"
                                    : "no RDMA devices; the CPU backend does not need RDMA"));
  } else {
    out.push_back(Pass("rdma", std::to_string(c.facts.rdma_devices.size()) + " RDMA ports"));
    bool any_active = false;
    for (const auto& d : c.facts.rdma_devices) any_active |= IsActive(d);
    for (const auto& d : c.facts.rdma_devices) {
      const bool named_in_hca =
          !c.nccl.ib_hca.empty() &&
          NcclInterfaceListMatches(c.nccl.ib_hca, {d.name() + ":" + std::to_string(d.port())});
      const bool ok = IsActive(d) || !cuda || (any_active && !named_in_hca);
      if (ok) {
        out.push_back(Pass("rdma_port_active", DescribePort(d)));
      } else {
        std::string fix =
            "bring the link up: check the cable and the switch port, run "
            "`ibv_devinfo -d " +
            d.name() + "`";
        if (!d.netdev().empty()) fix += " and `ip link set " + d.netdev() + " up`";
        out.push_back(Fail("rdma_port_active", DescribePort(d), fix));
      }
    }
  }

  // NCCL variables that name interfaces or HCAs must name existing ones.
  const auto ifname = c.facts.nccl_env.find("NCCL_SOCKET_IFNAME");
  if (ifname != c.facts.nccl_env.end()) {
    const std::vector<std::string> interfaces = ListInterfaces(c.net_class_dir);
    if (NcclInterfaceListMatches(ifname->second, interfaces)) {
      out.push_back(Pass("nccl_socket_ifname", "NCCL_SOCKET_IFNAME=" + ifname->second));
    } else {
      out.push_back(Fail(
          "nccl_socket_ifname",
          "NCCL_SOCKET_IFNAME=" + ifname->second + " matches no network interface of this node",
          "set nccl.socket_ifname (or --nccl-socket-ifname) to one of: " + Join(interfaces)));
    }
  }
  if (!c.nccl.ib_hca.empty()) {
    std::vector<std::string> ports;
    for (const auto& d : c.facts.rdma_devices) {
      ports.push_back(d.name() + ":" + std::to_string(d.port()));
    }
    if (NcclInterfaceListMatches(c.nccl.ib_hca, ports)) {
      out.push_back(Pass("nccl_ib_hca", "NCCL_IB_HCA=" + c.nccl.ib_hca));
    } else {
      out.push_back(
          Fail("nccl_ib_hca", "NCCL_IB_HCA=" + c.nccl.ib_hca + " matches no RDMA port of this node",
               "set nccl.ib_hca (or --nccl-ib-hca) to ports from `ibv_devices`: " + Join(ports) +
                   ", or leave it empty to use the active ports"));
    }
  }

  out.push_back(CheckShardBinary(c.shard_binary));
  if (::access(c.state_dir.c_str(), W_OK | X_OK) == 0) {
    out.push_back(Pass("state_dir", c.state_dir + " is writable"));
  } else {
    out.push_back(Fail("state_dir", c.state_dir + " is not a writable directory",
                       "create it and give spark-agent's user write access (mkdir -p " +
                           c.state_dir + "), or pass --state-dir DIR"));
  }
  return out;
}

std::vector<PreflightResult> RunAssignmentPreflight(const PreflightContext& c,
                                                    const spark::v1::ShardAssignment& a) {
  std::vector<PreflightResult> out;
  const std::string node = c.facts.node_name;

  if (a.deployment().empty() || a.world_size() == 0 || a.rank() >= a.world_size() ||
      a.generation() == 0) {
    out.push_back(Fail("assignment",
                       "inconsistent assignment: deployment \"" + a.deployment() + "\", rank " +
                           std::to_string(a.rank()) + " of " + std::to_string(a.world_size()) +
                           ", generation " + std::to_string(a.generation()),
                       "this is a controller bug; restart the deployment and report it"));
    return out;
  }
  out.push_back(Pass("assignment", "rank " + std::to_string(a.rank()) + " of " +
                                       std::to_string(a.world_size()) + ", generation " +
                                       std::to_string(a.generation())));

  const spark::v1::Backend wanted =
      a.backend() == spark::v1::BACKEND_UNSPECIFIED ? c.facts.backend : a.backend();
  if (wanted != c.facts.backend) {
    out.push_back(Fail(
        "backend",
        "the deployment wants the " + std::string(BackendName(wanted)) + " backend but node " +
            node + " runs " + std::string(BackendName(c.facts.backend)),
        "deploy with backend " + std::string(BackendName(c.facts.backend)) +
            ", pin nodes that run " + std::string(BackendName(wanted)) +
            ", or start this node's agent with --backend " + std::string(BackendName(wanted))));
  } else if (wanted == spark::v1::BACKEND_CUDA && !BuiltWithCuda()) {
    out.push_back(Fail("backend", "this spark-agent was built without CUDA",
                       "install the CUDA build of spark on node " + node));
  } else {
    out.push_back(Pass("backend", std::string(BackendName(wanted)) + " backend"));
  }

  // Model path.
  const std::string& path = a.model_path();
  const std::string copy_fix = "copy the checkpoint to " + (path.empty() ? "<path>" : path) +
                               " on node " + node +
                               " (every node of the deployment needs it at the same path), or "
                               "deploy with the path where it is";
  std::error_code ec;
  bool model_ok = false;
  if (path.empty()) {
    out.push_back(Fail("model_path", "the assignment has no model path",
                       "deploy with --path pointing at the checkpoint directory"));
  } else if (!fs::exists(path, ec)) {
    out.push_back(
        Fail("model_path", "model path " + path + " does not exist on node " + node, copy_fix));
  } else if (!fs::is_directory(path, ec)) {
    out.push_back(Fail("model_path", "model path " + path + " is not a directory",
                       "deploy with the checkpoint directory (the one holding config.json)"));
  } else if (::access(path.c_str(), R_OK | X_OK) != 0) {
    out.push_back(Fail("model_path", "model path " + path + " is not readable by spark-agent",
                       "give the spark-agent user read access: chmod -R a+rX " + path));
  } else {
    const std::string config = (fs::path(path) / "config.json").string();
    UniqueFd fd(::open(config.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fs::exists(config, ec)) {
      out.push_back(Fail("model_path", path + " has no config.json (not a Hugging Face checkpoint)",
                         copy_fix + "; the directory must hold config.json and the safetensors"));
    } else if (!fd.valid()) {
      out.push_back(Fail("model_path", config + " is not readable",
                         "give the spark-agent user read access: chmod -R a+rX " + path));
    } else {
      out.push_back(Pass("model_path", path + " holds a readable config.json"));
      model_ok = true;
    }
  }

  // GPU.
  if (wanted == spark::v1::BACKEND_CUDA) {
    if (a.gpu_index() >= c.facts.gpus.size()) {
      out.push_back(Fail("gpu_visible",
                         "GPU " + std::to_string(a.gpu_index()) + " is not visible on node " +
                             node + " (" + std::to_string(c.facts.gpus.size()) + " visible)",
                         "check `nvidia-smi` and CUDA_VISIBLE_DEVICES on node " + node));
    } else {
      out.push_back(Pass("gpu_visible", "GPU " + std::to_string(a.gpu_index()) + ": " +
                                            c.facts.gpus[a.gpu_index()].name()));
    }
  } else {
    out.push_back(Pass("gpu_visible", "cpu backend: no GPU needed"));
  }

  // Memory: this rank's share of the checkpoint against what is free.
  if (model_ok && a.options().load_format() != spark::v1::LOAD_FORMAT_DUMMY) {
    const uint64_t total = SafetensorsBytes(path);
    const uint64_t share = total / a.world_size();
    int64_t available = -1;
    std::string where;
    if (wanted == spark::v1::BACKEND_CUDA && a.gpu_index() < c.facts.gpus.size()) {
      available = static_cast<int64_t>(c.facts.gpus[a.gpu_index()].free_memory_bytes());
      where = "free on GPU " + std::to_string(a.gpu_index());
    } else if (wanted != spark::v1::BACKEND_CUDA) {
      available = MemAvailableBytes(c.meminfo_path);
      where = "available memory (MemAvailable)";
    }
    if (total == 0 || available < 0) {
      out.push_back(Pass("memory", "no estimate (no safetensors size or no free-memory figure)"));
    } else if (share > static_cast<uint64_t>(available)) {
      out.push_back(Fail("memory",
                         "rank " + std::to_string(a.rank()) + " needs about " + FormatBytes(share) +
                             " of weights (" + FormatBytes(total) + " / tp " +
                             std::to_string(a.world_size()) + ") but only " +
                             FormatBytes(static_cast<uint64_t>(available)) + " is " + where,
                         "free memory on node " + node +
                             ", deploy with a larger tp, or use a smaller (FP8) checkpoint"));
    } else {
      out.push_back(Pass("memory", "about " + FormatBytes(share) + " of weights, " +
                                       FormatBytes(static_cast<uint64_t>(available)) + " " +
                                       where));
    }
  }

  out.push_back(CheckShardBinary(c.shard_binary));
  return out;
}

bool PreflightPassed(const std::vector<PreflightResult>& results) {
  for (const auto& r : results) {
    if (!r.ok()) return false;
  }
  return true;
}

std::string PreflightFailureReason(const std::vector<PreflightResult>& results) {
  std::string out;
  for (const auto& r : results) {
    if (r.ok()) continue;
    if (!out.empty()) out += "; ";
    out += r.check() + ": " + r.message() + ". Fix: " + r.fix();
  }
  return out;
}

}  // namespace spark::agent
