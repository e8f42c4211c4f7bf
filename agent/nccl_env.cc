#include "agent/nccl_env.h"

#include <fstream>
#include <sstream>

namespace spark::agent {
namespace {

bool IsActive(const spark::v1::RdmaDevice& d) {
  return d.state() == spark::v1::RDMA_PORT_STATE_ACTIVE ||
         d.state() == spark::v1::RDMA_PORT_STATE_ACTIVE_DEFER;
}

std::vector<std::string> SplitComma(std::string_view list) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    const size_t end = list.find(',', start);
    const std::string_view item =
        list.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!item.empty()) out.emplace_back(item);
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return out;
}

}  // namespace

std::map<std::string, std::string> DeriveNcclEnv(const NcclSettings& settings,
                                                 const std::vector<spark::v1::RdmaDevice>& devices,
                                                 std::string_view default_route_interface) {
  std::map<std::string, std::string> env;
  env["NCCL_NVLS_ENABLE"] = "0";

  std::string hca = settings.ib_hca;
  if (hca.empty()) {
    for (const auto& d : devices) {
      if (!IsActive(d)) continue;
      if (!hca.empty()) hca += ',';
      hca += d.name() + ":" + std::to_string(d.port());
    }
  }
  if (!hca.empty()) env["NCCL_IB_HCA"] = hca;

  if (settings.ib_gid_index >= 0) {
    env["NCCL_IB_GID_INDEX"] = std::to_string(settings.ib_gid_index);
  } else {
    for (const auto& d : devices) {
      if (IsActive(d) && d.link_layer() == "Ethernet" && !d.gid().empty()) {
        env["NCCL_IB_GID_INDEX"] = std::to_string(d.gid_index());
        break;
      }
    }
  }

  std::string ifname = settings.socket_ifname;
  if (ifname.empty()) {
    for (const auto& d : devices) {
      if (IsActive(d) && !d.netdev().empty()) {
        ifname = d.netdev();
        break;
      }
    }
  }
  if (ifname.empty()) ifname = std::string(default_route_interface);
  if (!ifname.empty()) env["NCCL_SOCKET_IFNAME"] = ifname;
  return env;
}

std::string DefaultRouteInterface(const std::string& route_table) {
  std::ifstream in(route_table);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string iface, destination, gateway, flags, refcnt, use, metric, mask;
    if (!(fields >> iface >> destination >> gateway >> flags >> refcnt >> use >> metric >> mask)) {
      continue;
    }
    if (destination == "00000000" && mask == "00000000") return iface;
  }
  return "";
}

bool NcclInterfaceListMatches(std::string_view list, const std::vector<std::string>& interfaces) {
  std::string_view rest = list;
  const bool exclude = rest.starts_with('^');
  if (exclude) rest.remove_prefix(1);
  const bool exact = rest.starts_with('=');
  if (exact) rest.remove_prefix(1);
  const std::vector<std::string> items = SplitComma(rest);
  for (const std::string& iface : interfaces) {
    bool matched = false;
    for (const std::string& item : items) {
      if (exact ? iface == item : iface.starts_with(item)) matched = true;
    }
    if (exclude ? !matched : matched) return true;
  }
  return false;
}

}  // namespace spark::agent
