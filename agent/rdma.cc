#include "agent/rdma.h"

#include <infiniband/verbs.h>
#include <net/if.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>

#include "common/log.h"
#include "common/os_error.h"

namespace spark::agent {
namespace {

bool IsIpv4Mapped(const std::string& gid) {
  return gid.starts_with("0000:0000:0000:0000:0000:ffff:");
}

// First interface under /sys/class/infiniband/<dev>/device/net/, "" when none.
std::string SysfsNetdev(const std::string& device) {
  std::error_code ec;
  const std::filesystem::path dir =
      std::filesystem::path("/sys/class/infiniband") / device / "device" / "net";
  for (const auto& entry : std::filesystem::directory_iterator(dir, ec)) {
    return entry.path().filename().string();
  }
  return "";
}

std::vector<GidEntry> QueryGids(ibv_context* context, uint8_t port, int table_len) {
  std::vector<GidEntry> out;
  for (int i = 0; i < table_len; ++i) {
    ibv_gid_entry entry{};
    if (ibv_query_gid_ex(context, port, static_cast<uint32_t>(i), &entry, 0) != 0) continue;
    GidEntry e;
    e.index = entry.gid_index;
    e.gid = FormatGid(entry.gid.raw);
    e.roce_v2 = entry.gid_type == IBV_GID_TYPE_ROCE_V2;
    char name[IF_NAMESIZE] = {};
    if (entry.ndev_ifindex != 0 && if_indextoname(entry.ndev_ifindex, name) != nullptr) {
      e.netdev = name;
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace

double RdmaLinkSpeedGbps(uint8_t active_speed, uint8_t active_width) {
  double lane = 0;
  switch (active_speed) {
    case 1:
      lane = 2.5;
      break;  // SDR
    case 2:
      lane = 5.0;
      break;  // DDR
    case 4:
      lane = 10.0;
      break;  // QDR
    case 8:
      lane = 10.3125;
      break;  // FDR10
    case 16:
      lane = 14.0625;
      break;  // FDR
    case 32:
      lane = 25.78125;
      break;  // EDR
    case 64:
      lane = 53.125;
      break;  // HDR
    case 128:
      lane = 106.25;
      break;  // NDR
    default:
      return 0;
  }
  int lanes = 0;
  switch (active_width) {
    case 1:
      lanes = 1;
      break;
    case 2:
      lanes = 4;
      break;
    case 4:
      lanes = 8;
      break;
    case 8:
      lanes = 12;
      break;
    case 16:
      lanes = 2;
      break;
    default:
      return 0;
  }
  return lane * lanes;
}

uint32_t RdmaMtuBytes(int ibv_mtu) {
  if (ibv_mtu < 1 || ibv_mtu > 5) return 0;
  return 128u << ibv_mtu;
}

spark::v1::RdmaPortState RdmaPortStateFromVerbs(int ibv_port_state) {
  switch (ibv_port_state) {
    case IBV_PORT_DOWN:
      return spark::v1::RDMA_PORT_STATE_DOWN;
    case IBV_PORT_INIT:
      return spark::v1::RDMA_PORT_STATE_INIT;
    case IBV_PORT_ARMED:
      return spark::v1::RDMA_PORT_STATE_ARMED;
    case IBV_PORT_ACTIVE:
      return spark::v1::RDMA_PORT_STATE_ACTIVE;
    case IBV_PORT_ACTIVE_DEFER:
      return spark::v1::RDMA_PORT_STATE_ACTIVE_DEFER;
    default:
      return spark::v1::RDMA_PORT_STATE_UNSPECIFIED;
  }
}

int ChooseGidIndex(const std::vector<GidEntry>& entries, bool ethernet) {
  if (entries.empty()) return -1;
  if (!ethernet) return static_cast<int>(entries.front().index);
  for (const GidEntry& e : entries) {
    if (e.roce_v2 && IsIpv4Mapped(e.gid)) return static_cast<int>(e.index);
  }
  for (const GidEntry& e : entries) {
    if (e.roce_v2) return static_cast<int>(e.index);
  }
  return static_cast<int>(entries.front().index);
}

std::string FormatGid(const uint8_t raw[16]) {
  std::string out;
  char group[8];
  for (int i = 0; i < 16; i += 2) {
    std::snprintf(group, sizeof(group), "%02x%02x", raw[i], raw[i + 1]);
    if (!out.empty()) out += ':';
    out += group;
  }
  return out;
}

Result<std::vector<spark::v1::RdmaDevice>> QueryRdmaDevices() {
  std::vector<spark::v1::RdmaDevice> out;
  int count = 0;
  errno = 0;
  ibv_device** list = ibv_get_device_list(&count);
  if (list == nullptr) {
    // ENOSYS: no kernel RDMA support; treat as "no devices".
    if (errno == ENOSYS || errno == 0) return out;
    return OsError(errno, "listing RDMA devices (ibv_get_device_list)");
  }
  for (int d = 0; d < count; ++d) {
    const std::string name = ibv_get_device_name(list[d]);
    ibv_context* context = ibv_open_device(list[d]);
    if (context == nullptr) {
      SPARK_LOG(WARN).With("device", name) << "cannot open RDMA device: " << std::strerror(errno);
      continue;
    }
    ibv_device_attr device_attr{};
    if (ibv_query_device(context, &device_attr) != 0) {
      SPARK_LOG(WARN).With("device", name) << "ibv_query_device failed";
      ibv_close_device(context);
      continue;
    }
    const std::string sysfs_netdev = SysfsNetdev(name);
    for (uint8_t port = 1; port <= device_attr.phys_port_cnt; ++port) {
      ibv_port_attr port_attr{};
      if (ibv_query_port(context, port, &port_attr) != 0) {
        SPARK_LOG(WARN).With("device", name).With("port", int{port}) << "ibv_query_port failed";
        continue;
      }
      spark::v1::RdmaDevice device;
      device.set_name(name);
      device.set_port(port);
      device.set_state(RdmaPortStateFromVerbs(port_attr.state));
      device.set_link_speed_gbps(RdmaLinkSpeedGbps(port_attr.active_speed, port_attr.active_width));
      device.set_active_mtu_bytes(RdmaMtuBytes(port_attr.active_mtu));
      const bool ethernet = port_attr.link_layer == IBV_LINK_LAYER_ETHERNET;
      device.set_link_layer(ethernet ? "Ethernet" : "InfiniBand");
      const std::vector<GidEntry> gids = QueryGids(context, port, port_attr.gid_tbl_len);
      const int gid_index = ChooseGidIndex(gids, ethernet);
      std::string netdev = sysfs_netdev;
      if (gid_index >= 0) {
        device.set_gid_index(static_cast<uint32_t>(gid_index));
        for (const GidEntry& g : gids) {
          if (static_cast<int>(g.index) != gid_index) continue;
          device.set_gid(g.gid);
          if (!g.netdev.empty()) netdev = g.netdev;
        }
      }
      device.set_netdev(netdev);
      out.push_back(std::move(device));
    }
    ibv_close_device(context);
  }
  ibv_free_device_list(list);
  return out;
}

}  // namespace spark::agent
