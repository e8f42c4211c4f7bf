// The NCCL environment the agent gives its shards: configured values first, detection otherwise.
//
//   NCCL_NVLS_ENABLE    always "0" (NVLink SHARP multicast stays off; see KINDS.md/gpu-testing).
//   NCCL_IB_HCA         configured, else the active RDMA ports as "dev:port,dev:port".
//   NCCL_IB_GID_INDEX   configured (>= 0), else the GID index of the first active RoCE port.
//   NCCL_SOCKET_IFNAME  configured, else the interface of the first active RDMA port that has
//                       one, else the interface of the default route.
// A variable that is neither configured nor detectable is left out (NCCL's own default).
//
// Thread safety: pure functions (DefaultRouteInterface reads one file).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "agent/agent_options.h"
#include "spark.pb.h"

namespace spark::agent {

std::map<std::string, std::string> DeriveNcclEnv(const NcclSettings& settings,
                                                 const std::vector<spark::v1::RdmaDevice>& devices,
                                                 std::string_view default_route_interface);

// The interface of the IPv4 default route in a /proc/net/route style table ("" when none).
std::string DefaultRouteInterface(const std::string& route_table = "/proc/net/route");

// True when an NCCL interface list ("eth0", "^lo,docker", "=enp1s0") matches at least one of
// `interfaces` (NCCL matches by prefix unless '=' asks for exact names; '^' lists exclusions).
bool NcclInterfaceListMatches(std::string_view list, const std::vector<std::string>& interfaces);

}  // namespace spark::agent
