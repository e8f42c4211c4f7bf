#include "agent/node_facts.h"

#include <gtest/gtest.h>

#include "agent/nccl_env.h"
#include "agent/rdma.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

spark::v1::RdmaDevice Port(const std::string& name, uint32_t port, bool active,
                           const std::string& link_layer, uint32_t gid_index,
                           const std::string& netdev) {
  spark::v1::RdmaDevice d;
  d.set_name(name);
  d.set_port(port);
  d.set_state(active ? spark::v1::RDMA_PORT_STATE_ACTIVE : spark::v1::RDMA_PORT_STATE_DOWN);
  d.set_link_layer(link_layer);
  d.set_gid_index(gid_index);
  d.set_gid("0000:0000:0000:0000:0000:ffff:c0a8:0101");
  d.set_netdev(netdev);
  return d;
}

TEST(BootIdTest, ReadsAndTrims) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("boot_id"), "3f1c0b7e-8d5a-4a55-9d7e-0c2b9f4e8a11\n");
  Result<std::string> id = ReadBootId(dir.File("boot_id"));
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(*id, "3f1c0b7e-8d5a-4a55-9d7e-0c2b9f4e8a11");
  testing::WriteFile(dir.File("empty"), "\n");
  EXPECT_EQ(ReadBootId(dir.File("empty")).status().code(), StatusCode::kDataLoss);
  Result<std::string> missing = ReadBootId(dir.File("missing"));
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("--boot-id-file"), std::string::npos);
  // The real one: 36 characters.
  Result<std::string> real = ReadBootId("/proc/sys/kernel/random/boot_id");
  ASSERT_TRUE(real.ok());
  EXPECT_EQ(real->size(), 36u);
}

TEST(NodeFactsTest, CollectsOnThisMachine) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("boot_id"), "b-1\n");
  AgentOptions o;
  o.boot_id_file = dir.File("boot_id");
  Result<NodeFacts> facts = CollectNodeFacts(o);
  ASSERT_TRUE(facts.ok()) << facts.status().ToString();
  EXPECT_EQ(facts->node_name, LocalHostName());
  EXPECT_EQ(facts->boot_id, "b-1");
  EXPECT_TRUE(facts->gpus.empty());
  EXPECT_EQ(facts->nccl_env.at("NCCL_NVLS_ENABLE"), "0");
}

TEST(NcclEnvTest, DetectsFromActiveRoceAndInfinibandPorts) {
  const std::vector<spark::v1::RdmaDevice> devices = {
      Port("mlx5_0", 1, false, "Ethernet", 1, "enp1s0f0"),
      Port("mlx5_1", 1, true, "Ethernet", 3, "enp1s0f1"),
      Port("mlx5_2", 1, true, "InfiniBand", 0, ""),
  };
  std::map<std::string, std::string> env = DeriveNcclEnv({}, devices, "eth0");
  EXPECT_EQ(env.at("NCCL_NVLS_ENABLE"), "0");
  EXPECT_EQ(env.at("NCCL_IB_HCA"), "mlx5_1:1,mlx5_2:1");
  EXPECT_EQ(env.at("NCCL_IB_GID_INDEX"), "3");
  EXPECT_EQ(env.at("NCCL_SOCKET_IFNAME"), "enp1s0f1");
  EXPECT_EQ(env.size(), 4u);
}

TEST(NcclEnvTest, ConfiguredValuesWin) {
  NcclSettings settings;
  settings.socket_ifname = "^lo,docker";
  settings.ib_hca = "=mlx5_0:1";
  settings.ib_gid_index = 0;
  const std::vector<spark::v1::RdmaDevice> devices = {
      Port("mlx5_1", 1, true, "Ethernet", 3, "enp1s0f1")};
  std::map<std::string, std::string> env = DeriveNcclEnv(settings, devices, "eth0");
  EXPECT_EQ(env.at("NCCL_IB_HCA"), "=mlx5_0:1");
  EXPECT_EQ(env.at("NCCL_IB_GID_INDEX"), "0");
  EXPECT_EQ(env.at("NCCL_SOCKET_IFNAME"), "^lo,docker");
  EXPECT_EQ(env.at("NCCL_NVLS_ENABLE"), "0");
}

TEST(NcclEnvTest, WithoutRdmaOnlyTheDefaultRouteInterface) {
  std::map<std::string, std::string> env = DeriveNcclEnv({}, {}, "eth0");
  EXPECT_EQ(env, (std::map<std::string, std::string>{{"NCCL_NVLS_ENABLE", "0"},
                                                     {"NCCL_SOCKET_IFNAME", "eth0"}}));
  EXPECT_EQ(DeriveNcclEnv({}, {}, "").size(), 1u);
}

TEST(NcclEnvTest, DefaultRouteInterfaceFromTheRoutingTable) {
  testing::TempDir dir;
  testing::WriteFile(
      dir.File("route"),
      "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
      "eth1\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
      "eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n");
  EXPECT_EQ(DefaultRouteInterface(dir.File("route")), "eth0");
  testing::WriteFile(dir.File("noroute"), "Iface\tDestination\n");
  EXPECT_EQ(DefaultRouteInterface(dir.File("noroute")), "");
  EXPECT_EQ(DefaultRouteInterface(dir.File("missing")), "");
}

TEST(NcclEnvTest, InterfaceListsMatchLikeNccl) {
  const std::vector<std::string> ifs = {"lo", "eth0", "docker0"};
  EXPECT_TRUE(NcclInterfaceListMatches("eth", ifs));
  EXPECT_TRUE(NcclInterfaceListMatches("=eth0", ifs));
  EXPECT_FALSE(NcclInterfaceListMatches("=eth", ifs));
  EXPECT_FALSE(NcclInterfaceListMatches("ib", ifs));
  EXPECT_TRUE(NcclInterfaceListMatches("ib,eth", ifs));
  EXPECT_TRUE(NcclInterfaceListMatches("^lo,docker", ifs));  // eth0 remains
  EXPECT_FALSE(NcclInterfaceListMatches("^lo,docker,eth", ifs));
}

TEST(RdmaTest, VerbsAttributesToWireFields) {
  EXPECT_DOUBLE_EQ(RdmaLinkSpeedGbps(64, 2), 212.5);    // HDR 4x
  EXPECT_DOUBLE_EQ(RdmaLinkSpeedGbps(32, 2), 103.125);  // EDR 4x
  EXPECT_DOUBLE_EQ(RdmaLinkSpeedGbps(128, 1), 106.25);  // NDR 1x
  EXPECT_DOUBLE_EQ(RdmaLinkSpeedGbps(1, 1), 2.5);
  EXPECT_EQ(RdmaLinkSpeedGbps(3, 1), 0);
  EXPECT_EQ(RdmaMtuBytes(1), 256u);
  EXPECT_EQ(RdmaMtuBytes(5), 4096u);
  EXPECT_EQ(RdmaMtuBytes(0), 0u);
  EXPECT_EQ(RdmaPortStateFromVerbs(4), spark::v1::RDMA_PORT_STATE_ACTIVE);
  EXPECT_EQ(RdmaPortStateFromVerbs(1), spark::v1::RDMA_PORT_STATE_DOWN);
  EXPECT_EQ(RdmaPortStateFromVerbs(99), spark::v1::RDMA_PORT_STATE_UNSPECIFIED);
  const uint8_t raw[16] = {0xfe, 0x80, 0,    0,    0,    0,    0,    0,
                           0x02, 0x1b, 0x21, 0xff, 0xfe, 0x00, 0x01, 0x0a};
  EXPECT_EQ(FormatGid(raw), "fe80:0000:0000:0000:021b:21ff:fe00:010a");
}

TEST(RdmaTest, GidIndexPrefersRoceV2WithIpv4) {
  const std::vector<GidEntry> gids = {
      {0, "fe80:0000:0000:0000:021b:21ff:fe00:010a", false, "enp1s0"},
      {1, "fe80:0000:0000:0000:021b:21ff:fe00:010a", true, "enp1s0"},
      {2, "0000:0000:0000:0000:0000:ffff:c0a8:0101", false, "enp1s0"},
      {3, "0000:0000:0000:0000:0000:ffff:c0a8:0101", true, "enp1s0"},
  };
  EXPECT_EQ(ChooseGidIndex(gids, true), 3);
  EXPECT_EQ(ChooseGidIndex({gids[0], gids[1]}, true), 1);
  EXPECT_EQ(ChooseGidIndex({gids[0], gids[2]}, true), 0);
  EXPECT_EQ(ChooseGidIndex(gids, false), 0);
  EXPECT_EQ(ChooseGidIndex({}, true), -1);
}

TEST(RdmaTest, QueryOnAMachineWithoutRdmaIsEmptyNotAnError) {
  Result<std::vector<spark::v1::RdmaDevice>> devices = QueryRdmaDevices();
  ASSERT_TRUE(devices.ok()) << devices.status().ToString();
  if (!std::filesystem::exists("/sys/class/infiniband")) {
    EXPECT_TRUE(devices->empty());
  }
}

}  // namespace
}  // namespace spark::agent
