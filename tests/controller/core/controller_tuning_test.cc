// MoE tuning records through the real Controller and store: an agent reports its records, the
// controller stores them per device class (kernel_tunings) and hands them to the CUDA
// assignments of nodes of that class only.
#include <gtest/gtest.h>

#include <functional>
#include <future>
#include <memory>

#include "common/clock.h"
#include "controller/controller.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "tests/controller/core/fakes.h"

namespace spark::controller {
namespace {

using std::chrono::milliseconds;
using testing::FakeAgent;
using testing::Sync;
using testing::TempDir;
using Envelope = spark::v1::Envelope;

spark::v1::GpuInfo Gpu(const std::string& name, int major, int minor, uint64_t smem) {
  spark::v1::GpuInfo gpu;
  gpu.set_index(0);
  gpu.set_name(name);
  gpu.set_compute_capability_major(static_cast<uint32_t>(major));
  gpu.set_compute_capability_minor(static_cast<uint32_t>(minor));
  gpu.set_shared_memory_per_block_optin_bytes(smem);
  gpu.set_total_memory_bytes(uint64_t{80} << 30);
  gpu.set_multiprocessor_count(132);
  return gpu;
}

const spark::v1::GpuInfo kH100 = Gpu("NVIDIA H100 80GB HBM3", 9, 0, 232448);
const spark::v1::GpuInfo kH200 = Gpu("NVIDIA H200", 9, 0, 232448);

engine::MoeTuningRecord Record(const std::string& gemm, int64_t batch, int64_t smem_limit,
                               int stages = 3, int64_t tuned_ms = 1000) {
  engine::MoeTuningRecord r;
  r.device = {"NVIDIA H100 80GB HBM3", 9, 0, smem_limit};
  r.format = "fp8-per-channel";
  r.gemm = gemm;
  r.experts = 128;
  r.n = gemm == "gate_up" ? 2816 : 4096;
  r.k = gemm == "gate_up" ? 4096 : 1408;
  r.top_k = 8;
  r.batch = batch;
  r.config = {32, 128, 128, 4, stages, 1};
  r.measured_us = 30.5;
  r.tuned_unix_ms = tuned_ms;
  r.source = "tuner";
  return r;
}

class ControllerTuningTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::StoreOptions store_options;
    store_options.path = dir_.File("controller.db");
    Result<std::unique_ptr<store::Store>> store = store::Store::Open(store_options, clock_);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    store_ = std::move(*store);
    ControllerOptions options;
    options.agent_listen = "tcp://127.0.0.1:*";
    options.insecure = true;
    options.heartbeat_interval = milliseconds(1000);
    options.max_poll_wait = milliseconds(5);
    controller_ = std::make_unique<Controller>(options, *store_, clock_);
    Status st = controller_->Start();
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  void TearDown() override { controller_.reset(); }

  std::unique_ptr<FakeAgent> Agent(const std::string& node, const spark::v1::GpuInfo& gpu) {
    auto agent = std::make_unique<FakeAgent>(context_, node, controller_->agent_endpoint());
    agent->set_gpus({gpu});
    EXPECT_TRUE(agent->Register().has_value()) << node << " got no RegistrationAck";
    return agent;
  }

  void Report(FakeAgent& agent, const std::vector<engine::MoeTuningRecord>& records,
              const std::vector<spark::v1::MoeTuningRecord>& raw = {}) {
    Envelope e;
    spark::v1::MoeTuningReport* report = e.mutable_moe_tuning_report();
    report->set_node_name(agent.node());
    for (const auto& r : records) *report->add_records() = engine::MoeTuningRecordToProto(r);
    for (const auto& r : raw) *report->add_records() = r;
    agent.Send(std::move(e));
  }

  std::vector<store::KernelTuning> Stored(const std::string& device_class) {
    Result<std::vector<store::KernelTuning>> rows =
        store_->Read([&](store::ReadTxn& txn) { return txn.ListKernelTunings(device_class); });
    EXPECT_TRUE(rows.ok()) << rows.status().ToString();
    return rows.ok() ? *rows : std::vector<store::KernelTuning>{};
  }

  static bool WaitUntil(const std::function<bool()>& predicate) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      if (predicate()) return true;
      std::this_thread::sleep_for(milliseconds(5));
    }
    return predicate();
  }

  // Deploys a one-rank CUDA model pinned to `node` and returns its assignment.
  spark::v1::ShardAssignment DeployOn(FakeAgent& agent, const std::string& name,
                                      nlohmann::json options = nlohmann::json::object()) {
    DeployRequest request;
    request.name = name;
    request.model_path = "/models/glm-4.5-air";
    request.tp = 1;
    request.backend = "cuda";
    request.nodes = {agent.node()};
    request.options = std::move(options);
    Result<DeploymentView> view = Sync<Result<DeploymentView>>(
        [&](auto done) { controller_->Deploy(request, std::move(done)); });
    EXPECT_TRUE(view.ok()) << view.status().ToString();
    std::optional<Envelope> e = agent.WaitFor(Envelope::kShardAssignment);
    EXPECT_TRUE(e.has_value()) << agent.node() << " got no assignment";
    return e ? e->shard_assignment() : spark::v1::ShardAssignment{};
  }

  Controller::Stats Stats() {
    return *controller_->Call<Controller::Stats>([this] { return controller_->stats(); });
  }

  TempDir dir_;
  ManualClock clock_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<Controller> controller_;
  ZmqContext context_;
};

TEST_F(ControllerTuningTest, RecordsReportedByOneNodeReachAssignmentsOfItsDeviceClassOnly) {
  std::unique_ptr<FakeAgent> tuner = Agent("h100-a", kH100);
  std::unique_ptr<FakeAgent> sibling = Agent("h100-b", kH100);
  std::unique_ptr<FakeAgent> other = Agent("h200-c", kH200);

  const engine::MoeTuningRecord gate = Record("gate_up", 64, 232448);
  const engine::MoeTuningRecord down = Record("down", 64, 232448);
  const engine::MoeTuningRecord capped = Record("gate_up", 64, 101376, 2);
  engine::MoeTuningRecord foreign = Record("gate_up", 1, 232448);
  foreign.device.name = "NVIDIA B200";  // not a GPU of h100-a
  spark::v1::MoeTuningRecord invalid = engine::MoeTuningRecordToProto(Record("down", 1, 232448));
  invalid.set_stages(9);
  Report(*tuner, {gate, down, capped, foreign}, {invalid});

  const std::string h100_class = "NVIDIA H100 80GB HBM3/sm90/smem232448";
  ASSERT_TRUE(WaitUntil([&] { return Stored(h100_class).size() == 2; }));
  ASSERT_TRUE(
      WaitUntil([&] { return Stored("NVIDIA H100 80GB HBM3/sm90/smem101376").size() == 1; }));
  EXPECT_TRUE(Stored("NVIDIA B200/sm90/smem232448").empty());
  const std::vector<store::KernelTuning> rows = Stored(h100_class);
  EXPECT_EQ(rows[0].key, "moe/fp8-per-channel/down/e128/n4096/k1408/top8/b64");
  EXPECT_EQ(rows[0].measured_us, 30.5);
  Result<engine::MoeTuningRecord> stored = engine::MoeTuningRecordFromJson(rows[1].config_json);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  EXPECT_EQ(*stored, gate);
  EXPECT_EQ(Stats().moe_tunings_received, 3u);
  EXPECT_EQ(Stats().moe_tunings_rejected, 2u);

  // A node of the same class that never tuned gets the records with its assignment.
  spark::v1::ShardAssignment a = DeployOn(*sibling, "air-b");
  ASSERT_EQ(a.moe_tunings_size(), 2);
  std::vector<engine::MoeTuningRecord> got;
  for (const auto& wire : a.moe_tunings()) {
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromProto(wire);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    got.push_back(*r);
  }
  EXPECT_EQ(got[0], down);
  EXPECT_EQ(got[1], gate);
  // Another device name: none.
  EXPECT_EQ(DeployOn(*other, "air-c").moe_tunings_size(), 0);
  // The same GPU under a shared-memory cap is the capped class.
  spark::v1::ShardAssignment capped_assignment =
      DeployOn(*tuner, "air-a", {{"shared_memory_cap_bytes", 101376}});
  ASSERT_EQ(capped_assignment.moe_tunings_size(), 1);
  EXPECT_EQ(capped_assignment.moe_tunings(0).smem_limit_bytes(), 101376u);
  EXPECT_EQ(capped_assignment.moe_tunings(0).stages(), 2u);
}

TEST_F(ControllerTuningTest, AnOlderReportDoesNotReplaceANewerRecord) {
  std::unique_ptr<FakeAgent> agent = Agent("h100-a", kH100);
  Report(*agent, {Record("gate_up", 8, 232448, 4, 2000)});
  const std::string h100_class = "NVIDIA H100 80GB HBM3/sm90/smem232448";
  ASSERT_TRUE(WaitUntil([&] { return Stored(h100_class).size() == 1; }));
  Report(*agent, {Record("gate_up", 8, 232448, 2, 1000), Record("down", 8, 232448, 5, 1000)});
  ASSERT_TRUE(WaitUntil([&] { return Stored(h100_class).size() == 2; }));
  for (const store::KernelTuning& row : Stored(h100_class)) {
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromJson(row.config_json);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->config.stages, r->gemm == "gate_up" ? 4 : 5) << row.key;
  }
}

TEST_F(ControllerTuningTest, GemvPathRecordsAreStoredAndHandedOutLikeTileRecords) {
  std::unique_ptr<FakeAgent> tuner = Agent("h100-a", kH100);
  std::unique_ptr<FakeAgent> sibling = Agent("h100-b", kH100);
  engine::MoeTuningRecord gemv = Record("gate_up", 1, 232448);
  gemv.gemm = "gemv";
  gemv.config = {};
  gemv.gemv = {4, 0, 16, 4, "scaled_bits"};
  spark::v1::MoeTuningRecord no_split = engine::MoeTuningRecordToProto(gemv);
  no_split.set_batch(2);
  no_split.clear_gemv();  // a gemv record without its split: rejected
  Report(*tuner, {gemv, Record("gate_up", 8, 232448), Record("down", 8, 232448)}, {no_split});

  const std::string h100_class = "NVIDIA H100 80GB HBM3/sm90/smem232448";
  ASSERT_TRUE(WaitUntil([&] { return Stored(h100_class).size() == 3; }));
  EXPECT_EQ(Stats().moe_tunings_rejected, 1u);
  bool found = false;
  for (const store::KernelTuning& row : Stored(h100_class)) {
    if (row.key != "moe/fp8-per-channel/gemv/e128/n2816/k4096/top8/b1") continue;
    found = true;
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromJson(row.config_json);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, gemv);
  }
  EXPECT_TRUE(found);

  spark::v1::ShardAssignment a = DeployOn(*sibling, "air-b");
  ASSERT_EQ(a.moe_tunings_size(), 3);
  int gemv_records = 0;
  for (const auto& wire : a.moe_tunings()) {
    if (wire.gemm() != "gemv") continue;
    ++gemv_records;
    EXPECT_EQ(wire.gemv().fp8_dequant(), "scaled_bits");
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromProto(wire);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, gemv);
  }
  EXPECT_EQ(gemv_records, 1);
}

TEST_F(ControllerTuningTest, ANewerKernelGenerationReplacesWhateverItsTime) {
  std::unique_ptr<FakeAgent> agent = Agent("h100-a", kH100);
  engine::MoeTuningRecord old_kernels = Record("gate_up", 8, 232448, 4, 5000);
  old_kernels.kernel_generation = 1;
  Report(*agent, {old_kernels});
  const std::string h100_class = "NVIDIA H100 80GB HBM3/sm90/smem232448";
  ASSERT_TRUE(WaitUntil([&] { return Stored(h100_class).size() == 1; }));
  // Measured earlier by the clock, but with the current kernels: it replaces the stored one.
  Report(*agent, {Record("gate_up", 8, 232448, 2, 1000)});
  ASSERT_TRUE(WaitUntil([&] {
    const std::vector<store::KernelTuning> rows = Stored(h100_class);
    Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromJson(rows[0].config_json);
    return r.ok() && r->kernel_generation == engine::kMoeKernelGeneration;
  }));
  Result<engine::MoeTuningRecord> r =
      engine::MoeTuningRecordFromJson(Stored(h100_class)[0].config_json);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->config.stages, 2);
  // The older generation does not come back (it is received, and merged away).
  const uint64_t received = Stats().moe_tunings_received;
  Report(*agent, {old_kernels});
  ASSERT_TRUE(WaitUntil([&] { return Stats().moe_tunings_received > received; }));
  std::this_thread::sleep_for(milliseconds(100));  // the store write after it
  r = engine::MoeTuningRecordFromJson(Stored(h100_class)[0].config_json);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->kernel_generation, engine::kMoeKernelGeneration);
}

TEST_F(ControllerTuningTest, ReportsFromUnregisteredPeersAreDropped) {
  std::unique_ptr<FakeAgent> agent = Agent("h100-a", kH100);
  Envelope e;
  e.mutable_moe_tuning_report()->set_node_name("someone-else");
  *e.mutable_moe_tuning_report()->add_records() =
      engine::MoeTuningRecordToProto(Record("gate_up", 8, 232448));
  const uint64_t dropped_before = Stats().dropped_messages;
  agent->Send(std::move(e));
  ASSERT_TRUE(WaitUntil([&] { return Stats().dropped_messages > dropped_before; }));
  EXPECT_TRUE(Stored("NVIDIA H100 80GB HBM3/sm90/smem232448").empty());
}

}  // namespace
}  // namespace spark::controller
