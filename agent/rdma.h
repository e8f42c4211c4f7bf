// RDMA devices of this node through libibverbs: every port of every device with its state,
// negotiated speed, active MTU, link layer, the GID index NCCL should use and the network
// interface behind it.
//
// QueryRdmaDevices() returns an empty list (not an error) when the node has no RDMA device or
// libibverbs finds no provider; an error only when the device list cannot be read at all.
// The small pure helpers below are what turns verbs attributes into RdmaDevice fields; they are
// separate so they can be tested without RDMA hardware.
//
// Thread safety: all functions are safe from any thread. QueryRdmaDevices opens and closes each
// device (a few system calls per port; no blocking on the network).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::agent {

Result<std::vector<spark::v1::RdmaDevice>> QueryRdmaDevices();

// ibv_port_attr.active_speed / active_width codes to the link rate in Gb/s (0 when unknown).
double RdmaLinkSpeedGbps(uint8_t active_speed, uint8_t active_width);
// ibv_mtu (1 = 256 ... 5 = 4096) to bytes (0 when unknown).
uint32_t RdmaMtuBytes(int ibv_mtu);
// ibv_port_state to the wire enum.
spark::v1::RdmaPortState RdmaPortStateFromVerbs(int ibv_port_state);

// One GID table entry of a port.
struct GidEntry {
  uint32_t index = 0;
  std::string gid;       // "fe80:0000:...", eight groups of four hex digits
  bool roce_v2 = false;  // IBV_GID_TYPE_ROCE_V2
  std::string netdev;    // interface the entry belongs to (RoCE), "" when none
};

// The GID index NCCL should use: for an Ethernet (RoCE) port the first RoCE v2 entry holding an
// IPv4-mapped address (::ffff:a.b.c.d), else the first RoCE v2 entry, else the first entry; for
// InfiniBand index 0. -1 when `entries` is empty.
int ChooseGidIndex(const std::vector<GidEntry>& entries, bool ethernet);

// 16 raw GID bytes as eight colon-separated groups of four hex digits.
std::string FormatGid(const uint8_t raw[16]);

}  // namespace spark::agent
