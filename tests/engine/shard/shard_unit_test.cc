// Unit tests of the spark-shard pieces that run in-process: endpoints, settings, the assignment
// file, the envelope stamper, the watchdog (manual clock), the controller link and its
// key-value store and status reporter (against a FakeController), and the wire conversions.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "agent/shard_status_file.h"
#include "common/clock.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/loader.h"
#include "engine/model/tiny_model.h"
#include "engine/shard/controller_kv_store.h"
#include "engine/shard/controller_link.h"
#include "engine/shard/endpoints.h"
#include "engine/shard/envelope_stamper.h"
#include "engine/shard/shard_settings.h"
#include "engine/shard/status_reporter.h"
#include "engine/shard/watchdog.h"
#include "engine/shard/wire_conversions.h"
#include "tests/engine/shard/fake_controller.h"

namespace spark::shard {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using testing::FakeController;

// Polls `done` for up to `timeout` of real time.
template <typename Fn>
bool Eventually(Fn done, milliseconds timeout = milliseconds(5000)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < until) {
    if (done()) return true;
    std::this_thread::sleep_for(milliseconds(2));
  }
  return done();
}

TEST(EndpointsTest, ParsesAndFormatsTcpEndpoints) {
  auto hp = ParseTcpEndpoint("tcp://10.0.0.1:7440");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "10.0.0.1");
  EXPECT_EQ(hp->port, "7440");
  hp = ParseTcpEndpoint("[fe80::1]:80");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "fe80::1");
  EXPECT_EQ(FormatTcpEndpoint("fe80::1", "80"), "tcp://[fe80::1]:80");
  EXPECT_EQ(ParseTcpEndpoint("host:*")->port, "*");
  for (const char* bad :
       {"", "tcp://host", "ipc:///tmp/x", "host:port", "host:70000", ":80", "fe80::1:80"}) {
    auto r = ParseTcpEndpoint(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("tcp://HOST:PORT"), std::string::npos);
    }
  }
}

TEST(EndpointsTest, DataPlaneBindAndAdvertisedEndpoints) {
  EXPECT_EQ(*DataBindEndpoint("", "10.0.0.5"), "tcp://10.0.0.5:*");
  EXPECT_EQ(*DataBindEndpoint("127.0.0.1:0", "10.0.0.5"), "tcp://127.0.0.1:*");
  EXPECT_EQ(*DataBindEndpoint("tcp://0.0.0.0:7500", "10.0.0.5"), "tcp://0.0.0.0:7500");
  EXPECT_EQ(*DataBindEndpoint("*:7500", "10.0.0.5"), "tcp://0.0.0.0:7500");
  EXPECT_FALSE(DataBindEndpoint("nonsense", "10.0.0.5").ok());
  EXPECT_EQ(*AdvertisedEndpoint("tcp://0.0.0.0:40123", "10.1.2.3"), "tcp://10.1.2.3:40123");
  EXPECT_EQ(*AdvertisedEndpoint("tcp://127.0.0.1:40123", "10.1.2.3"), "tcp://127.0.0.1:40123");
}

TEST(EndpointsTest, LocalAddressTowardLoopbackIsLoopback) {
  auto address = LocalAddressToward("tcp://127.0.0.1:7440");
  ASSERT_TRUE(address.ok()) << address.status().ToString();
  EXPECT_EQ(*address, "127.0.0.1");
  EXPECT_FALSE(LocalAddressToward("tcp://*:7440").ok());
  EXPECT_FALSE(LocalAddressToward("tcp://no-such-host.invalid:7440").ok());
}

spark::v1::ShardAssignment ValidAssignment() {
  spark::v1::ShardAssignment a;
  a.set_deployment("glm");
  a.set_generation(17);
  a.set_rank(1);
  a.set_world_size(2);
  a.set_model_path("/models/glm");
  a.mutable_options()->set_tp(2);
  return a;
}

TEST(ShardSettingsTest, ValidatesAssignments) {
  EXPECT_TRUE(ValidateAssignment(ValidAssignment()).ok());
  EXPECT_EQ(ShardSenderId(ValidAssignment()), "shard/glm/17/1");

  auto a = ValidAssignment();
  a.set_rank(2);
  EXPECT_NE(ValidateAssignment(a).message().find("rank 2 is outside world_size 2"),
            std::string::npos);
  a = ValidAssignment();
  a.mutable_options()->set_tp(4);
  EXPECT_EQ(ValidateAssignment(a).code(), StatusCode::kInvalidArgument);
  a = ValidAssignment();
  a.set_deployment(std::string(300, 'x'));
  EXPECT_EQ(ValidateAssignment(a).code(), StatusCode::kInvalidArgument);
  a = ValidAssignment();
  a.mutable_options()->mutable_speculative()->set_steps(3);
  EXPECT_TRUE(ValidateAssignment(a).ok());  // checked with the engine options and the model
  a = ValidAssignment();
  a.set_world_size(0);
  EXPECT_EQ(ValidateAssignment(a).code(), StatusCode::kInvalidArgument);
}

TEST(ShardSettingsTest, ReadsTheAssignmentFile) {
  const fs::path dir = fs::temp_directory_path() / ("shard_settings_" + std::to_string(getpid()));
  fs::create_directories(dir);
  {
    std::ofstream out(dir / "a.pb", std::ios::binary);
    out << ValidAssignment().SerializeAsString();
  }
  auto read = ReadAssignmentFile(dir / "a.pb");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(read->SerializeAsString(), ValidAssignment().SerializeAsString());
  {
    std::ofstream out(dir / "bad.pb", std::ios::binary);
    out << "\xff\xff\xff garbage";
  }
  EXPECT_EQ(ReadAssignmentFile(dir / "bad.pb").status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(ReadAssignmentFile(dir / "missing.pb").status().code(), StatusCode::kNotFound);
  fs::remove_all(dir);
}

TEST(ShardSettingsTest, EngineOptionsAndExtraKeys) {
  spark::v1::EngineOptions options;
  options.set_max_batch(8);
  options.set_max_seq_len(512);
  auto s = ResolveEngineSettings(options);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->max_running, 8);
  EXPECT_EQ(s->max_model_len, 512);
  EXPECT_EQ(s->step_timeout, milliseconds(30000));
  EXPECT_EQ(s->keepalive, milliseconds(1000));

  (*options.mutable_extra())["step_timeout_ms"] = "2000";
  (*options.mutable_extra())["threads"] = "3";
  (*options.mutable_extra())["max_batch_tokens"] = "4";
  s = ResolveEngineSettings(options);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->step_timeout, milliseconds(2000));
  EXPECT_EQ(s->keepalive, milliseconds(500));  // a quarter of the step deadline
  EXPECT_EQ(s->threads, 3);
  EXPECT_EQ(s->max_batch_tokens, 4);
  EXPECT_EQ(s->max_running, 4);  // capped at the token budget

  (*options.mutable_extra())["keepalive_ms"] = "2000";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find("shorter than"),
            std::string::npos);
  options.mutable_extra()->erase("keepalive_ms");
  (*options.mutable_extra())["threads"] = "many";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find("threads=\"many\""),
            std::string::npos);
  options.mutable_extra()->erase("threads");
  (*options.mutable_extra())["thread"] = "2";
  auto unknown = ResolveEngineSettings(options);
  EXPECT_NE(unknown.status().message().find("unknown engine option 'thread'"), std::string::npos);
  EXPECT_NE(unknown.status().message().find("threads"), std::string::npos);
  options.mutable_extra()->erase("thread");

  EXPECT_TRUE(ResolveEngineSettings(options)->gpu_sampling);  // default on the CUDA backend
  (*options.mutable_extra())["sampler"] = "cpu";
  EXPECT_FALSE(ResolveEngineSettings(options)->gpu_sampling);
  (*options.mutable_extra())["sampler"] = "tpu";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find("sampler must be gpu or cpu"),
            std::string::npos);
  options.mutable_extra()->erase("sampler");

  EXPECT_TRUE(ResolveEngineSettings(options)->moe_autotune);  // default on
  (*options.mutable_extra())["moe_autotune"] = "off";
  EXPECT_FALSE(ResolveEngineSettings(options)->moe_autotune);
  (*options.mutable_extra())["moe_autotune"] = "no";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "moe_autotune must be on or off, got 'no'"),
            std::string::npos);
  options.mutable_extra()->erase("moe_autotune");

  // Default auto: graphs with one rank only.
  EXPECT_FALSE(ResolveEngineSettings(options)->cuda_graphs.has_value());
  EXPECT_TRUE(CudaGraphsFor(*ResolveEngineSettings(options), 1));
  EXPECT_FALSE(CudaGraphsFor(*ResolveEngineSettings(options), 2));
  (*options.mutable_extra())["cuda_graphs"] = "on";
  EXPECT_TRUE(CudaGraphsFor(*ResolveEngineSettings(options), 1));
  EXPECT_TRUE(CudaGraphsFor(*ResolveEngineSettings(options), 4));
  (*options.mutable_extra())["cuda_graphs"] = "off";
  EXPECT_FALSE(CudaGraphsFor(*ResolveEngineSettings(options), 1));
  (*options.mutable_extra())["cuda_graphs"] = "auto";
  EXPECT_TRUE(CudaGraphsFor(*ResolveEngineSettings(options), 1));
  EXPECT_FALSE(CudaGraphsFor(*ResolveEngineSettings(options), 2));
  (*options.mutable_extra())["cuda_graphs"] = "1";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "cuda_graphs must be on, off or auto, got '1'"),
            std::string::npos);
  options.mutable_extra()->erase("cuda_graphs");

  EXPECT_FALSE(ResolveEngineSettings(options)->kv_cache_fp8);  // default bf16
  (*options.mutable_extra())["kv_cache_dtype"] = "fp8";
  EXPECT_TRUE(ResolveEngineSettings(options)->kv_cache_fp8);
  (*options.mutable_extra())["kv_cache_dtype"] = "bf16";
  EXPECT_FALSE(ResolveEngineSettings(options)->kv_cache_fp8);
  (*options.mutable_extra())["kv_cache_dtype"] = "fp16";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "kv_cache_dtype must be bf16 or fp8, got 'fp16'"),
            std::string::npos);
  options.mutable_extra()->erase("kv_cache_dtype");

  EXPECT_EQ(ResolveEngineSettings(options)->moe_grouped_max_tokens, 0);  // default: never
  (*options.mutable_extra())["moe_grouped_max_tokens"] = "64";
  EXPECT_EQ(ResolveEngineSettings(options)->moe_grouped_max_tokens, 64);
  (*options.mutable_extra())["moe_grouped_max_tokens"] = "-1";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "moe_grouped_max_tokens=\"-1\": must be an integer in [0, 1048576]"),
            std::string::npos);
  options.mutable_extra()->erase("moe_grouped_max_tokens");

  EXPECT_EQ(ResolveEngineSettings(options)->gemv_fp8, "convert");  // default
  for (const char* kernel : {"convert", "row_sweep", "tensor_cores", "auto"}) {
    (*options.mutable_extra())["gemv_fp8"] = kernel;
    EXPECT_EQ(ResolveEngineSettings(options)->gemv_fp8, kernel);
  }
  (*options.mutable_extra())["gemv_fp8"] = "mma";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "gemv_fp8 must be convert, row_sweep, tensor_cores or auto, got 'mma'"),
            std::string::npos);
  options.mutable_extra()->erase("gemv_fp8");

  EXPECT_EQ(ResolveEngineSettings(options)->l2_prefetch_percent, 0);  // default: off
  (*options.mutable_extra())["l2_prefetch_percent"] = "30";
  EXPECT_EQ(ResolveEngineSettings(options)->l2_prefetch_percent, 30);
  (*options.mutable_extra())["l2_prefetch_percent"] = "101";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "l2_prefetch_percent=\"101\": must be an integer in [0, 100]"),
            std::string::npos);
  options.mutable_extra()->erase("l2_prefetch_percent");

  EXPECT_EQ(ResolveEngineSettings(options)->one_shot_all_reduce_bytes, 0);  // default: NCCL's
  (*options.mutable_extra())["one_shot_all_reduce_bytes"] = "-1";
  EXPECT_EQ(ResolveEngineSettings(options)->one_shot_all_reduce_bytes, -1);
  (*options.mutable_extra())["one_shot_all_reduce_bytes"] = "65536";
  EXPECT_EQ(ResolveEngineSettings(options)->one_shot_all_reduce_bytes, 65536);
  (*options.mutable_extra())["one_shot_all_reduce_bytes"] = "-2";
  EXPECT_NE(ResolveEngineSettings(options).status().message().find(
                "one_shot_all_reduce_bytes=\"-2\": must be an integer in [-1, 16777216]"),
            std::string::npos);
}

TEST(ShardSettingsTest, SpeculativeOptionsAreResolvedAsTheEngineDoes) {
  spark::v1::EngineOptions options;
  auto automatic = ResolveEngineSettings(options);
  ASSERT_TRUE(automatic.ok());
  EXPECT_FALSE(automatic->speculative.enabled());
  EXPECT_TRUE(automatic->speculative_auto) << "no options: the shard decides";
  options.mutable_speculative()->set_mode(spark::v1::SPECULATIVE_MODE_OFF);
  auto off = ResolveEngineSettings(options);
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->speculative.enabled());
  EXPECT_FALSE(off->speculative_auto);

  // topk 0 on the wire is the default (1); a chain verifies steps + 1 tokens.
  options.mutable_speculative()->set_steps(2);
  auto chain = ResolveEngineSettings(options);
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_FALSE(chain->speculative_auto);
  EXPECT_EQ(chain->speculative.steps, 2);
  EXPECT_EQ(chain->speculative.topk, 1);
  EXPECT_EQ(chain->speculative.draft_tokens, 3);

  options.mutable_speculative()->set_topk(4);
  options.mutable_speculative()->set_draft_tokens(8);
  auto tree = ResolveEngineSettings(options);
  ASSERT_TRUE(tree.ok()) << tree.status().ToString();
  EXPECT_EQ(tree->speculative.topk, 4);
  EXPECT_EQ(tree->speculative.draft_tokens, 8);

  // 1 + 4 + 1 * 16 = 21 nodes at most.
  options.mutable_speculative()->set_draft_tokens(22);
  auto too_big = ResolveEngineSettings(options);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_big.status().message().find("engine option speculative: "), std::string::npos);
  EXPECT_NE(too_big.status().message().find("draft_tokens must be in [2, 21]"), std::string::npos)
      << too_big.status().message();

  options.mutable_speculative()->set_steps(0);
  options.mutable_speculative()->set_draft_tokens(3);
  EXPECT_NE(ResolveEngineSettings(options).status().message().find("need steps >= 1"),
            std::string::npos);
}

TEST(ShardSettingsTest, AutomaticSpeculationNeedsCudaAndTheMtpLayer) {
  engine::ModelConfig config;
  config.num_hidden_layers = 3;
  config.num_nextn_predict_layers = 1;
  EXPECT_TRUE(AutoSpeculation(spark::v1::BACKEND_CUDA, config, 1, false));
  EXPECT_TRUE(AutoSpeculation(spark::v1::BACKEND_CUDA, config, 0, /*dummy_weights=*/true));
  EXPECT_FALSE(AutoSpeculation(spark::v1::BACKEND_CUDA, config, 0, false))
      << "declared in the config, stripped from the files";
  EXPECT_FALSE(AutoSpeculation(spark::v1::BACKEND_CPU, config, 1, false));
  config.num_nextn_predict_layers = 0;
  EXPECT_FALSE(AutoSpeculation(spark::v1::BACKEND_CUDA, config, 0, true));
  const engine::SpeculativeOptions chosen = AutoSpeculativeOptions();
  Result<engine::SpeculativeOptions> resolved = engine::ResolveSpeculativeOptions(chosen);
  ASSERT_TRUE(resolved.ok()) << resolved.status().ToString();
  EXPECT_EQ(resolved->steps, 3);
  EXPECT_EQ(resolved->topk, 1);
  EXPECT_EQ(resolved->draft_tokens, 4);
}

TEST(ShardSettingsTest, SpeculationNeedsTheModelsMtpLayer) {
  engine::ModelConfig config;
  config.num_hidden_layers = 3;
  Status none = CheckSpeculativeModel(config, "/models/glm");
  EXPECT_EQ(none.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(none.message(),
            "model /models/glm has no MTP layer (num_nextn_predict_layers = 0): deploy without "
            "speculative");
  config.num_nextn_predict_layers = 1;
  EXPECT_TRUE(CheckSpeculativeModel(config, "/models/glm").ok());

  // Declared but stripped from the checkpoint.
  Status stripped = CheckMtpWeightsLoaded(config, "/models/glm", 0);
  EXPECT_EQ(stripped.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(stripped.message().find("declares 1 MTP layer(s)"), std::string::npos);
  EXPECT_NE(stripped.message().find("model.layers.3.*"), std::string::npos);
  EXPECT_NE(stripped.message().find("deploy without speculative"), std::string::npos);
  EXPECT_TRUE(CheckMtpWeightsLoaded(config, "/models/glm", 1).ok());
}

TEST(ShardSettingsTest, SpeculationNeedsABackendThatSupportsIt) {
  const fs::path dir = fs::temp_directory_path() / ("shard_mtp_" + std::to_string(getpid()));
  engine::TinyModelOptions tiny;
  tiny.mtp = true;
  ASSERT_TRUE(engine::WriteTinyModel(dir, tiny).ok());
  auto backend = [&](bool load_mtp) {
    engine::LoadOptions load;
    load.load_mtp = load_mtp;
    auto weights = engine::LoadModelWeights(dir, load);
    EXPECT_TRUE(weights.ok()) << weights.status().ToString();
    EXPECT_EQ(weights->mtp.size(), load_mtp ? 1u : 0u);
    engine::CpuBackendOptions cpu;
    cpu.threads = 1;
    cpu.kv_cache_bytes = 1 << 20;
    auto created = engine::CpuBackend::Create(std::move(weights).value(), nullptr, cpu);
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    return std::move(created).value();
  };
  auto with_mtp = backend(true);
  EXPECT_TRUE(CheckSpeculationSupported(*with_mtp, spark::v1::BACKEND_CPU).ok());
  auto without = backend(false);
  Status cpu = CheckSpeculationSupported(*without, spark::v1::BACKEND_CPU);
  EXPECT_EQ(cpu.code(), StatusCode::kUnimplemented);
  EXPECT_NE(cpu.message().find("not supported yet on the cpu backend"), std::string::npos);
  Status cuda = CheckSpeculationSupported(*without, spark::v1::BACKEND_CUDA);
  EXPECT_NE(cuda.message().find("speculative decoding is not supported yet on the cuda backend"),
            std::string::npos);
  EXPECT_NE(cuda.message().find("deploy without speculative"), std::string::npos);
  fs::remove_all(dir);
}

TEST(ShardSettingsTest, SpeculativeStatsCrossTheWireUnchanged) {
  engine::SpeculativeStats stats;
  stats.verify_steps = 7;
  stats.drafted_tokens = 14;
  stats.accepted_tokens = 9;
  stats.emitted_tokens = 16;
  stats.draft_ms = 12.5;
  stats.verify_ms = 40.25;
  const spark::v1::SpeculativeStats wire = SpeculativeStatsToProto(stats);
  EXPECT_EQ(wire.verify_steps(), 7u);
  EXPECT_EQ(wire.drafted_tokens(), 14u);
  EXPECT_EQ(wire.accepted_tokens(), 9u);
  EXPECT_EQ(wire.emitted_tokens(), 16u);
  EXPECT_DOUBLE_EQ(wire.draft_ms(), 12.5);
  EXPECT_DOUBLE_EQ(wire.verify_ms(), 40.25);
}

TEST(ShardSettingsTest, KvCacheBytes) {
  engine::ModelConfig config;
  config.num_hidden_layers = 3;
  config.num_key_value_heads = 2;
  config.head_dim = 64;
  config.max_position_embeddings = 4096;
  spark::v1::EngineOptions options;
  // Nothing set: the default.
  EXPECT_EQ(*ResolveKvCacheBytes(options, config, 2, int64_t{1} << 40), int64_t{256} << 20);
  // Explicit bytes win.
  options.set_kv_cache_bytes(12345);
  EXPECT_EQ(*ResolveKvCacheBytes(options, config, 2, int64_t{1} << 40), 12345);
  // A fraction of MemAvailable, capped at what max_batch x max_seq_len tokens can use:
  // per token per rank 3 layers * 2 (K, V) * 1 local kv head * 64 * 4 bytes = 1536 bytes.
  options.set_kv_cache_bytes(0);
  options.set_kv_cache_fraction(0.5);
  options.set_max_batch(4);
  options.set_max_seq_len(100);
  EXPECT_EQ(*ResolveKvCacheBytes(options, config, 2, int64_t{1} << 40), 1536 * 100 * 4);
  EXPECT_EQ(*ResolveKvCacheBytes(options, config, 2, 200000), 100000);
  options.set_kv_cache_fraction(1.5);
  EXPECT_FALSE(ResolveKvCacheBytes(options, config, 2, 200000).ok());
  EXPECT_GT(MemAvailableBytes(), 0);
}

TEST(EnvelopeStamperTest, SequencesFromOneWithOneIncarnation) {
  EnvelopeStamper stamper("shard/glm/3/0", 3);
  EXPECT_NE(stamper.incarnation(), 0u);
  EXPECT_NE(EnvelopeStamper("x", 1).incarnation(), stamper.incarnation());
  for (uint64_t i = 1; i <= 3; ++i) {
    spark::v1::Envelope e;
    stamper.Stamp(e);
    EXPECT_EQ(e.sequence(), i);
    EXPECT_EQ(e.sender_id(), "shard/glm/3/0");
    EXPECT_EQ(e.generation(), 3u);
    EXPECT_EQ(e.sender_incarnation(), stamper.incarnation());
  }
}

class WatchdogTest : public ::testing::Test {
 protected:
  ManualClock clock_;
  std::atomic<int> fired_{0};
  std::string reason_;
  std::mutex mu_;
  std::unique_ptr<Watchdog> Make() {
    return std::make_unique<Watchdog>(
        clock_, milliseconds(30000),
        [this](const std::string& reason) {
          std::lock_guard<std::mutex> lock(mu_);
          reason_ = reason;
          fired_.fetch_add(1);
        },
        milliseconds(1));
  }
  std::string Reason() {
    std::lock_guard<std::mutex> lock(mu_);
    return reason_;
  }
};

TEST_F(WatchdogTest, AStepPastTheDeadlineFiresOnceNamingTheCollective) {
  auto watchdog = Make();
  {
    Watchdog::Scope step = watchdog->Watch("scheduler step");
    {
      // Nested: the outer scope is what is timed.
      Watchdog::Scope inner = watchdog->Watch("AllReduceSum");
      clock_.Advance(std::chrono::seconds(29));
      std::this_thread::sleep_for(milliseconds(30));
      EXPECT_EQ(fired_.load(), 0);
    }
    clock_.Advance(std::chrono::seconds(2));
    ASSERT_TRUE(Eventually([&] { return fired_.load() == 1; }));
  }
  EXPECT_NE(Reason().find("collective hung: scheduler step"), std::string::npos) << Reason();
  EXPECT_NE(Reason().find("step_timeout_ms"), std::string::npos);
  EXPECT_TRUE(watchdog->expired());
  {
    Watchdog::Scope again = watchdog->Watch("Broadcast");
    clock_.Advance(std::chrono::seconds(60));
    std::this_thread::sleep_for(milliseconds(30));
  }
  EXPECT_EQ(fired_.load(), 1);
}

TEST_F(WatchdogTest, ClosedScopesAndIdleTimeNeverFire) {
  auto watchdog = Make();
  for (int i = 0; i < 5; ++i) {
    Watchdog::Scope s = watchdog->Watch("Broadcast");
    clock_.Advance(std::chrono::seconds(20));
  }
  clock_.Advance(std::chrono::hours(1));
  std::this_thread::sleep_for(milliseconds(30));
  EXPECT_EQ(fired_.load(), 0);
}

TEST_F(WatchdogTest, StartupDeadline) {
  auto watchdog = Make();
  watchdog->SetStartupDeadline(clock_.Now() + std::chrono::seconds(10), "joining the rendezvous");
  clock_.Advance(std::chrono::seconds(5));
  watchdog->SetStartupDeadline(clock_.Now() + std::chrono::seconds(5), "loading the weights");
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(fired_.load(), 0);
  clock_.Advance(std::chrono::seconds(6));
  ASSERT_TRUE(Eventually([&] { return fired_.load() == 1; }));
  EXPECT_NE(Reason().find("not READY within"), std::string::npos) << Reason();
  EXPECT_NE(Reason().find("loading the weights"), std::string::npos) << Reason();

  auto cleared = Make();
  fired_ = 0;
  cleared->SetStartupDeadline(clock_.Now() + std::chrono::seconds(1), "starting");
  cleared->ClearStartupDeadline();
  clock_.Advance(std::chrono::seconds(5));
  std::this_thread::sleep_for(milliseconds(20));
  EXPECT_EQ(fired_.load(), 0);
}

class ControllerLinkTest : public ::testing::Test {
 protected:
  std::unique_ptr<ControllerLink> Connect(const std::string& endpoint,
                                          milliseconds margin = milliseconds(5000)) {
    ControllerLinkOptions options;
    options.endpoint = endpoint;
    options.routing_id = "shard/glm/7/1";
    options.reply_margin = margin;
    auto link = ControllerLink::Connect(options, &stamper_);
    EXPECT_TRUE(link.ok()) << link.status().ToString();
    return std::move(link).value();
  }
  EnvelopeStamper stamper_{"shard/glm/7/1", 7};
};

TEST_F(ControllerLinkTest, KeyValueStoreScopesKeysAndNamesMissingRanks) {
  FakeController controller(3);
  auto link = Connect(controller.endpoint());
  ControllerKeyValueStore store(link.get(), {"glm", 7, 1, "glm/7/"});
  ASSERT_TRUE(store.Set("addr/1", std::string("\x01\x00\x02", 3)).ok());
  auto value = store.Get("addr/1", 1000);
  ASSERT_TRUE(value.ok()) << value.status().ToString();
  EXPECT_EQ(*value, std::string("\x01\x00\x02", 3));
  EXPECT_EQ(controller.Store().count("glm/7/addr/1"), 1u);

  // A key nobody publishes: the broker's error names the ranks it has not heard from.
  auto missing = store.Get("addr/2", 200);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(missing.status().message().find("glm/7/addr/2"), std::string::npos);
  EXPECT_NE(missing.status().message().find("0, 2"), std::string::npos)
      << missing.status().message();

  // A lookup that a later publish answers.
  std::thread later([&] {
    std::this_thread::sleep_for(milliseconds(100));
    ControllerKeyValueStore other(link.get(), {"glm", 7, 2, "glm/7/"});
    EXPECT_TRUE(other.Set("addr/2", "two").ok());
  });
  auto waited = store.Get("addr/2", 5000);
  later.join();
  ASSERT_TRUE(waited.ok()) << waited.status().ToString();
  EXPECT_EQ(*waited, "two");

  // Lookups and publishes carry the run's identity.
  bool saw_lookup = false;
  for (const auto& r : controller.Received()) {
    EXPECT_EQ(r.peer, "shard/glm/7/1");
    if (!r.envelope.has_rendezvous_lookup()) continue;
    saw_lookup = true;
    EXPECT_EQ(r.envelope.rendezvous_lookup().deployment(), "glm");
    EXPECT_EQ(r.envelope.rendezvous_lookup().generation(), 7u);
    EXPECT_EQ(r.envelope.rendezvous_lookup().rank(), 1u);
    EXPECT_EQ(r.envelope.generation(), 7u);
  }
  EXPECT_TRUE(saw_lookup);
}

TEST_F(ControllerLinkTest, ASilentControllerIsUnavailableNotAHang) {
  // Nothing listens there.
  auto link = Connect("tcp://127.0.0.1:1", milliseconds(200));
  ControllerKeyValueStore store(link.get(), {"glm", 7, 1, "glm/7/"});
  const auto start = std::chrono::steady_clock::now();
  auto value = store.Get("k", 100);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  ASSERT_FALSE(value.ok());
  EXPECT_EQ(value.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(value.status().message().find("tcp://127.0.0.1:1"), std::string::npos);
  EXPECT_LT(elapsed, milliseconds(2000));
  link->Close(milliseconds(0));
  EXPECT_EQ(link->Send(spark::v1::Envelope()).code(), StatusCode::kFailedPrecondition);
}

TEST_F(ControllerLinkTest, ReporterSendsOneTerminalStatus) {
  FakeController controller(2);
  auto link = Connect(controller.endpoint());
  ManualClock clock;
  StatusReporter reporter(link.get(), {"glm", 9, 7, 1, 4242, 1700000000000}, clock);
  ASSERT_TRUE(reporter.Report(spark::v1::SHARD_PHASE_STARTING).ok());
  clock.Advance(milliseconds(1500));
  ASSERT_TRUE(reporter.ReportProgress(10, 100, 0.09).ok());
  EXPECT_TRUE(reporter.ReportFailed("it broke; fix it", 3));
  EXPECT_FALSE(reporter.ReportStopped("late", 0));
  EXPECT_FALSE(reporter.ReportFailed("again", 1));
  ASSERT_TRUE(reporter.Report(spark::v1::SHARD_PHASE_READY).ok());  // ignored
  link->Close(milliseconds(2000));                                  // flushes

  ASSERT_TRUE(
      controller.WaitFor([](const auto& all) { return all.size() >= 3; }, milliseconds(5000)));
  std::this_thread::sleep_for(milliseconds(100));
  auto statuses = controller.Statuses(1);
  ASSERT_EQ(statuses.size(), 3u);
  EXPECT_EQ(statuses[0].phase(), spark::v1::SHARD_PHASE_STARTING);
  EXPECT_EQ(statuses[1].phase(), spark::v1::SHARD_PHASE_LOADING);
  EXPECT_EQ(statuses[1].progress().bytes_done(), 10u);
  EXPECT_EQ(statuses[1].progress().bytes_total(), 100u);
  EXPECT_EQ(statuses[1].phase_since_unix_ms() - statuses[0].phase_since_unix_ms(), 1500);
  EXPECT_EQ(statuses[2].phase(), spark::v1::SHARD_PHASE_FAILED);
  EXPECT_EQ(statuses[2].failure_reason(), "it broke; fix it");
  EXPECT_EQ(statuses[2].exit_status(), 3);
  for (const auto& s : statuses) {
    EXPECT_EQ(s.deployment(), "glm");
    EXPECT_EQ(s.run_id(), 9u);
    EXPECT_EQ(s.generation(), 7u);
    EXPECT_EQ(s.pid(), 4242);
    EXPECT_EQ(s.started_unix_ms(), 1700000000000);
  }
}

TEST_F(ControllerLinkTest, ReporterSendsSpeculativeCountersOnlyWhileReady) {
  FakeController controller(2);
  auto link = Connect(controller.endpoint());
  ManualClock clock;
  const fs::path file =
      fs::temp_directory_path() / ("shard_status_" + std::to_string(getpid()) + ".pb");
  StatusReporter reporter(link.get(), {"glm", 9, 7, 0, 4242, 1700000000000}, clock, file.string());
  spark::v1::SpeculativeStats stats;
  stats.set_verify_steps(3);
  stats.set_accepted_tokens(4);
  ASSERT_TRUE(reporter.Report(spark::v1::SHARD_PHASE_LOADING).ok());
  ASSERT_TRUE(reporter.ReportSpeculativeStats(stats).ok());  // not READY: ignored
  ASSERT_TRUE(reporter.ReportReady("tcp://10.0.0.5:4000").ok());
  ASSERT_TRUE(reporter.ReportSpeculativeStats(stats).ok());
  stats.set_verify_steps(5);
  ASSERT_TRUE(reporter.ReportSpeculativeStats(stats).ok());
  // The counters never replace the READY report (with rank 0's data endpoint) in the agent's
  // status file.
  auto written = agent::ReadShardStatusFile(file.string());
  ASSERT_TRUE(written.ok()) << written.status().ToString();
  EXPECT_EQ(written->phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_EQ(written->data_endpoint(), "tcp://10.0.0.5:4000");
  EXPECT_FALSE(written->has_speculative());
  EXPECT_TRUE(reporter.ReportStopped("done", 0));
  ASSERT_TRUE(reporter.ReportSpeculativeStats(stats).ok());  // terminal: ignored
  link->Close(milliseconds(2000));

  ASSERT_TRUE(
      controller.WaitFor([](const auto& all) { return all.size() >= 5; }, milliseconds(5000)));
  std::this_thread::sleep_for(milliseconds(100));
  auto statuses = controller.Statuses(0);
  ASSERT_EQ(statuses.size(), 5u);
  EXPECT_FALSE(statuses[0].has_speculative());
  EXPECT_EQ(statuses[1].phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_FALSE(statuses[1].has_speculative());
  EXPECT_EQ(statuses[2].phase(), spark::v1::SHARD_PHASE_READY);
  EXPECT_EQ(statuses[2].speculative().verify_steps(), 3u);
  EXPECT_EQ(statuses[2].speculative().accepted_tokens(), 4u);
  EXPECT_EQ(statuses[3].speculative().verify_steps(), 5u);
  EXPECT_EQ(statuses[4].phase(), spark::v1::SHARD_PHASE_STOPPED);
  fs::remove(file);
}

TEST(WireConversionsTest, SamplingParamsAreCopiedWithoutDefaults) {
  spark::v1::SamplingParams p;
  p.set_temperature(0.7f);
  p.set_top_p(0.9f);
  p.set_top_k(40);
  p.set_min_p(0.05f);
  p.set_seed(99);
  p.set_repetition_penalty(1.1f);
  p.set_presence_penalty(0.5f);
  p.set_frequency_penalty(-0.5f);
  p.set_max_tokens(64);
  p.add_stop_token_ids(2);
  p.add_stop_token_ids(3);
  p.set_logprobs(true);
  p.set_top_logprobs(5);
  p.set_ignore_eos(true);
  const engine::SamplingParams e = SamplingParamsFromProto(p);
  EXPECT_FLOAT_EQ(e.temperature, 0.7f);
  EXPECT_FLOAT_EQ(e.top_p, 0.9f);
  EXPECT_EQ(e.top_k, 40);
  EXPECT_FLOAT_EQ(e.min_p, 0.05f);
  EXPECT_EQ(e.seed, std::optional<uint64_t>(99));
  EXPECT_FLOAT_EQ(e.repetition_penalty, 1.1f);
  EXPECT_FLOAT_EQ(e.presence_penalty, 0.5f);
  EXPECT_FLOAT_EQ(e.frequency_penalty, -0.5f);
  EXPECT_EQ(e.max_tokens, 64);
  EXPECT_EQ(e.stop_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_TRUE(e.logprobs);
  EXPECT_EQ(e.top_logprobs, 5);
  EXPECT_TRUE(e.ignore_eos);
  EXPECT_TRUE(e.Validate().ok());

  // Unset fields stay zero: no seed, and the validation names what is missing.
  const engine::SamplingParams empty = SamplingParamsFromProto(spark::v1::SamplingParams());
  EXPECT_FALSE(empty.seed.has_value());
  EXPECT_FALSE(empty.Validate().ok());

  EXPECT_EQ(FinishReasonToProto(engine::FinishReason::kStop), spark::v1::FINISH_REASON_STOP);
  EXPECT_EQ(FinishReasonToProto(engine::FinishReason::kLength), spark::v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(FinishReasonToProto(engine::FinishReason::kCancelled),
            spark::v1::FINISH_REASON_CANCELLED);
  EXPECT_EQ(FinishReasonToProto(engine::FinishReason::kError), spark::v1::FINISH_REASON_ERROR);
  EXPECT_EQ(FinishReasonToProto(engine::FinishReason::kNone), spark::v1::FINISH_REASON_NONE);
}

}  // namespace
}  // namespace spark::shard
