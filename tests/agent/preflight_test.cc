#include "agent/preflight.h"

#include <unistd.h>

#include <gtest/gtest.h>

#include <map>

#include "agent/gpu.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

std::map<std::string, spark::v1::PreflightResult> ByCheck(
    const std::vector<spark::v1::PreflightResult>& results) {
  std::map<std::string, spark::v1::PreflightResult> out;
  for (const auto& r : results) out[r.check()] = r;
  return out;
}

class PreflightTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_ = testing::MakeModelDir(dir_.File("model"));
    shard_ = testing::WriteScript(dir_.File("spark-shard"), "exit 0\n");
    context_.facts.node_name = "node-a";
    context_.facts.backend = spark::v1::BACKEND_CPU;
    context_.shard_binary = shard_;
    context_.state_dir = dir_.path().string();
    testing::WriteFile(dir_.File("meminfo"), "MemTotal: 100 kB\nMemAvailable: 2048 kB\n");
    context_.meminfo_path = dir_.File("meminfo");
    std::filesystem::create_directories(dir_.File("net/lo"));
    std::filesystem::create_directories(dir_.File("net/eth0"));
    context_.net_class_dir = dir_.File("net");
  }

  spark::v1::ShardAssignment Assignment() const {
    spark::v1::ShardAssignment a;
    a.set_deployment("demo");
    a.set_generation(1);
    a.set_rank(1);
    a.set_world_size(2);
    a.set_model_path(model_);
    a.set_backend(spark::v1::BACKEND_CPU);
    return a;
  }

  testing::TempDir dir_;
  std::string model_;
  std::string shard_;
  PreflightContext context_;
};

TEST_F(PreflightTest, CpuNodeWithoutRdmaPasses) {
  context_.facts.nccl_env = {{"NCCL_NVLS_ENABLE", "0"}, {"NCCL_SOCKET_IFNAME", "eth0"}};
  const auto results = RunNodePreflight(context_);
  EXPECT_TRUE(PreflightPassed(results)) << PreflightFailureReason(results);
  auto checks = ByCheck(results);
  EXPECT_EQ(checks["gpu_visible"].message(), "cpu backend: no GPU needed");
  EXPECT_EQ(checks["rdma"].message(), "no RDMA devices; the CPU backend does not need RDMA");
  EXPECT_TRUE(checks["nccl_socket_ifname"].ok());
  EXPECT_TRUE(checks["shard_binary"].ok());
  EXPECT_TRUE(checks["state_dir"].ok());
  EXPECT_EQ(PreflightFailureReason(results), "");
}

TEST_F(PreflightTest, NodeFailuresComeWithAFix) {
  context_.facts.nccl_env = {{"NCCL_SOCKET_IFNAME", "enp9s0"}};
  context_.shard_binary = dir_.File("missing-shard");
  context_.state_dir = dir_.File("no-such-dir");
  const auto results = RunNodePreflight(context_);
  EXPECT_FALSE(PreflightPassed(results));
  auto checks = ByCheck(results);
  EXPECT_FALSE(checks["nccl_socket_ifname"].ok());
  EXPECT_NE(checks["nccl_socket_ifname"].fix().find("eth0"), std::string::npos);
  EXPECT_FALSE(checks["shard_binary"].ok());
  EXPECT_NE(checks["shard_binary"].fix().find("--shard-binary"), std::string::npos);
  EXPECT_FALSE(checks["state_dir"].ok());
  EXPECT_NE(checks["state_dir"].fix().find("mkdir -p"), std::string::npos);
  const std::string reason = PreflightFailureReason(results);
  EXPECT_NE(reason.find("shard_binary: spark-shard not found"), std::string::npos) << reason;
  EXPECT_NE(reason.find(". Fix: install spark-shard"), std::string::npos) << reason;
}

TEST_F(PreflightTest, CudaNodeNeedsGpusAndActiveRdmaPorts) {
  context_.facts.backend = spark::v1::BACKEND_CUDA;
  spark::v1::RdmaDevice down;
  down.set_name("mlx5_0");
  down.set_port(1);
  down.set_state(spark::v1::RDMA_PORT_STATE_DOWN);
  down.set_link_layer("Ethernet");
  down.set_netdev("enp1s0f0");
  context_.facts.rdma_devices = {down};
  auto checks = ByCheck(RunNodePreflight(context_));
  EXPECT_FALSE(checks["gpu_visible"].ok());
  EXPECT_NE(checks["gpu_visible"].fix().find("nvidia-smi"), std::string::npos);
  EXPECT_FALSE(checks["rdma_port_active"].ok());
  EXPECT_NE(checks["rdma_port_active"].message().find("mlx5_0 port 1: DOWN"), std::string::npos)
      << checks["rdma_port_active"].message();
  EXPECT_NE(checks["rdma_port_active"].fix().find("ip link set enp1s0f0 up"), std::string::npos);
  if (!BuiltWithCuda()) {
    EXPECT_FALSE(checks["backend"].ok());
    EXPECT_NE(checks["backend"].fix().find("--backend cpu"), std::string::npos);
  }
  // The same port is not a problem on the CPU backend.
  context_.facts.backend = spark::v1::BACKEND_CPU;
  EXPECT_TRUE(ByCheck(RunNodePreflight(context_))["rdma_port_active"].ok());
}

TEST_F(PreflightTest, ConfiguredHcaMustExist) {
  context_.nccl.ib_hca = "mlx5_7";
  auto checks = ByCheck(RunNodePreflight(context_));
  EXPECT_FALSE(checks["nccl_ib_hca"].ok());
  EXPECT_NE(checks["nccl_ib_hca"].fix().find("ibv_devices"), std::string::npos);
}

TEST_F(PreflightTest, GoodAssignmentPasses) {
  const auto results = RunAssignmentPreflight(context_, Assignment());
  EXPECT_TRUE(PreflightPassed(results)) << PreflightFailureReason(results);
  auto checks = ByCheck(results);
  EXPECT_TRUE(checks["model_path"].ok());
  EXPECT_TRUE(checks["memory"].ok()) << checks["memory"].message();  // 512 B of 2 MiB
  EXPECT_TRUE(checks["gpu_visible"].ok());
}

TEST_F(PreflightTest, MissingModelPathNamesThePathNodeAndFix) {
  spark::v1::ShardAssignment a = Assignment();
  a.set_model_path(dir_.File("nope"));
  const auto results = RunAssignmentPreflight(context_, a);
  EXPECT_FALSE(PreflightPassed(results));
  auto checks = ByCheck(results);
  EXPECT_EQ(checks["model_path"].message(),
            "model path " + dir_.File("nope") + " does not exist on node node-a");
  EXPECT_EQ(checks["model_path"].fix(),
            "copy the checkpoint to " + dir_.File("nope") +
                " on node node-a (every node of the deployment needs it at the same path), or "
                "deploy with the path where it is");
}

TEST_F(PreflightTest, ModelPathMustBeADirectoryWithConfigJson) {
  spark::v1::ShardAssignment a = Assignment();
  a.set_model_path(model_ + "/config.json");
  EXPECT_NE(ByCheck(RunAssignmentPreflight(context_, a))["model_path"].message().find(
                "is not a directory"),
            std::string::npos);
  std::filesystem::create_directories(dir_.File("empty-model"));
  a.set_model_path(dir_.File("empty-model"));
  EXPECT_NE(ByCheck(RunAssignmentPreflight(context_, a))["model_path"].message().find(
                "has no config.json"),
            std::string::npos);
  if (::geteuid() != 0) {  // root reads anything
    std::filesystem::permissions(model_ + "/config.json", std::filesystem::perms::none);
    EXPECT_NE(ByCheck(RunAssignmentPreflight(context_, Assignment()))["model_path"].message().find(
                  "not readable"),
              std::string::npos);
  }
}

TEST_F(PreflightTest, WeightsLargerThanAvailableMemoryFail) {
  // 8 MiB of weights at tp 2 is 4 MiB per rank; 2 MiB available.
  testing::WriteFile(model_ + "/model-2.safetensors", std::string(8 << 20, '\0'));
  auto checks = ByCheck(RunAssignmentPreflight(context_, Assignment()));
  ASSERT_FALSE(checks["memory"].ok());
  EXPECT_NE(checks["memory"].message().find("needs about 4.0 MiB"), std::string::npos)
      << checks["memory"].message();
  EXPECT_NE(checks["memory"].message().find("only 2.0 MiB"), std::string::npos);
  EXPECT_NE(checks["memory"].fix().find("larger tp"), std::string::npos);
  // Dummy weights read no checkpoint.
  spark::v1::ShardAssignment dummy = Assignment();
  dummy.mutable_options()->set_load_format(spark::v1::LOAD_FORMAT_DUMMY);
  EXPECT_FALSE(ByCheck(RunAssignmentPreflight(context_, dummy)).contains("memory"));
}

TEST_F(PreflightTest, BackendMismatchAndBadAssignments) {
  spark::v1::ShardAssignment a = Assignment();
  a.set_backend(spark::v1::BACKEND_CUDA);
  auto checks = ByCheck(RunAssignmentPreflight(context_, a));
  EXPECT_FALSE(checks["backend"].ok());
  EXPECT_NE(checks["backend"].fix().find("--backend cuda"), std::string::npos);
  EXPECT_FALSE(checks["gpu_visible"].ok());

  spark::v1::ShardAssignment bad = Assignment();
  bad.set_rank(2);
  const auto results = RunAssignmentPreflight(context_, bad);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].check(), "assignment");
  EXPECT_FALSE(results[0].ok());
}

TEST(MemAvailableTest, ParsesMeminfo) {
  testing::TempDir dir;
  testing::WriteFile(dir.File("meminfo"),
                     "MemTotal:       16384000 kB\nMemFree:  1 kB\nMemAvailable:   8192000 kB\n");
  EXPECT_EQ(MemAvailableBytes(dir.File("meminfo")), 8192000LL * 1024);
  EXPECT_EQ(MemAvailableBytes(dir.File("missing")), -1);
  EXPECT_GT(MemAvailableBytes(), 0);
  EXPECT_EQ(FormatBytes(3ull << 30), "3.0 GiB");
  EXPECT_EQ(FormatBytes(1536ull << 10), "1.5 MiB");
}

}  // namespace
}  // namespace spark::agent
