// The MoE autotuner on the GPU (engine/cuda/moe_tuner.h): records for every bucket and GEMM (and
// the GEMV path's split for its buckets),
// within the shared-memory limit (also GB10's cap), valid against the table, launched by the
// serving path once set, and giving the heuristic's results up to summation order.
#include "engine/cuda/moe_tuner.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "engine/runtime/moe_tuning_cache.h"

namespace spark::cuda {
namespace {

MoeShape SmallShape() {
  MoeShape s;
  s.num_experts = 16;
  s.hidden = 512;
  s.inter = 256;
  s.top_k = 4;
  s.routed_scaling_factor = 1.5f;
  return s;
}

class MoeTunerTest : public ::testing::TestWithParam<MoeWeightFormat> {
 protected:
  void SetUp() override {
    Result<DeviceInfo> device = QueryDevice(0);
    if (!device.ok()) GTEST_SKIP() << "no GPU: " << device.status().ToString();
    device_ = *device;
    ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  }

  // MoeForward of `tokens` random rows with `table`; fp32 output on the host.
  std::vector<float> Forward(const MoeRandomLayer& layer, const MoeConfigTable& table,
                             int64_t tokens, MoeTileConfig* gate_up) {
    const MoeShape& s = layer.view().shape;
    Result<MoeWorkspace> ws = MoeWorkspace::Create(s, layer.view().format, tokens, &table);
    EXPECT_TRUE(ws.ok()) << ws.status().ToString();
    std::mt19937 rng(11);
    std::uniform_real_distribution<float> u(-2.f, 2.f);
    std::vector<__nv_bfloat16> x(static_cast<size_t>(tokens * s.hidden));
    for (auto& v : x) v = __float2bfloat16(u(rng));
    __nv_bfloat16* dx = nullptr;
    float* dout = nullptr;
    EXPECT_EQ(cudaMalloc(&dx, x.size() * sizeof(x[0])), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&dout, x.size() * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(dx, x.data(), x.size() * sizeof(x[0]), cudaMemcpyHostToDevice),
              cudaSuccess);
    EXPECT_EQ(MoeForward(layer.view(), dx, tokens, dout, nullptr, *ws, table, nullptr),
              cudaSuccess);
    std::vector<float> out(x.size());
    EXPECT_EQ(cudaMemcpy(out.data(), dout, out.size() * sizeof(float), cudaMemcpyDeviceToHost),
              cudaSuccess);
    cudaFree(dx);
    cudaFree(dout);
    *gate_up = ws->last_plan().gate_up;
    return out;
  }

  DeviceInfo device_;
};

TEST_P(MoeTunerTest, TunedRecordsAreValidLaunchedAndMatchTheHeuristicResults) {
  const MoeWeightFormat format = GetParam();
  const MoeShape shape = SmallShape();
  for (int64_t cap : {int64_t{0}, int64_t{101376}}) {
    SCOPED_TRACE("smem cap " + std::to_string(cap));
    Result<MoeConfigTable> table = MoeConfigTable::Create(device_, cap);
    ASSERT_TRUE(table.ok()) << table.status().ToString();
    MoeTunerOptions options;
    options.batches = {1, 16, 256};
    options.iters = 2;
    // With the table's GEMV threshold batch 1 runs no tiles: its record is the GEMV split.
    Result<MoeTuneResult> with_gemv = TuneMoe(device_, *table, shape, format, options);
    ASSERT_TRUE(with_gemv.ok()) << with_gemv.status().ToString();
    EXPECT_EQ(with_gemv->records.size(), 5u);
    EXPECT_EQ(with_gemv->gemv_batches, std::vector<int64_t>{1});
    EXPECT_EQ(std::count_if(with_gemv->records.begin(), with_gemv->records.end(),
                            [](const engine::MoeTuningRecord& r) { return r.gemm == "gemv"; }),
              1);
    // The tiles at every batch from here on.
    table->SetGemvMaxTokens(0);
    Result<MoeTuneResult> tuned = TuneMoe(device_, *table, shape, format, options);
    ASSERT_TRUE(tuned.ok()) << tuned.status().ToString();
    ASSERT_EQ(tuned->records.size(), 6u);
    EXPECT_TRUE(tuned->skipped_batches.empty());
    EXPECT_GT(tuned->timed_forwards, 12);
    const engine::MoeDeviceClass device_class = MoeDeviceClassOf(device_, *table);
    EXPECT_EQ(device_class.smem_limit_bytes, table->smem_limit_bytes());
    for (const engine::MoeTuningRecord& r : tuned->records) {
      EXPECT_TRUE(r.Validate().ok()) << r.Validate().ToString();
      EXPECT_EQ(r.device, device_class);
      EXPECT_LE(r.config.SmemBytes(), table->smem_limit_bytes());
      EXPECT_GT(r.measured_us, 0.0);
      EXPECT_EQ(r.format, MoeWeightFormatName(format));
    }
    std::printf("[moe-tuner] %s cap %lld: %.2f s, %lld forwards\n", MoeWeightFormatName(format),
                static_cast<long long>(cap), tuned->seconds,
                static_cast<long long>(tuned->timed_forwards));

    // Through the cache file's format and back, then onto a table.
    engine::MoeTuningCache cache;
    for (const auto& r : tuned->records) ASSERT_TRUE(cache.Add(r).ok());
    Result<engine::MoeTuningCache> parsed = engine::MoeTuningCache::Parse(cache.Serialize(), "t");
    ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
    Result<std::vector<MoeTunedChoice>> choices =
        MoeTunedChoicesOf(parsed->records(), device_class, shape, format, *table);
    ASSERT_TRUE(choices.ok()) << choices.status().ToString();
    ASSERT_EQ(choices->size(), 6u);
    Result<MoeConfigTable> tuned_table = MoeConfigTable::Create(device_, cap);
    ASSERT_TRUE(tuned_table.ok());
    tuned_table->SetGemvMaxTokens(0);
    ASSERT_TRUE(ApplyMoeTunedChoices(*choices, *tuned_table).ok());

    Result<std::vector<MoeTableComparison>> compared =
        CompareMoeTables(*table, *tuned_table, *choices, shape, format, options.batches, 3);
    ASSERT_TRUE(compared.ok()) << compared.status().ToString();
    for (const MoeTableComparison& c : *compared) {
      EXPECT_FALSE(c.gemv) << "batch " << c.batch;
      EXPECT_TRUE(c.launched_expected)
          << "batch " << c.batch << ": launched " << c.tuned_gate_up.ToString() << " | "
          << c.tuned_down.ToString();
    }

    // Same results as the heuristic's configs up to summation order.
    Result<MoeRandomLayer> layer = MoeRandomLayer::Create(shape, format, 5);
    ASSERT_TRUE(layer.ok()) << layer.status().ToString();
    MoeTileConfig heuristic_gu, tuned_gu;
    const std::vector<float> a = Forward(*layer, *table, 256, &heuristic_gu);
    const std::vector<float> b = Forward(*layer, *tuned_table, 256, &tuned_gu);
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(a[i]));
      max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
    }
    ASSERT_GT(max_ref, 0.f);
    EXPECT_LE(max_diff, 2e-2f * max_ref)
        << heuristic_gu.ToString() << " vs tuned " << tuned_gu.ToString();
  }
}

// The GEMV path's buckets: one "gemv" record each, valid, through the cache file onto a table,
// launched by the serving path, and giving the untuned split's results up to summation order.
TEST_P(MoeTunerTest, GemvBucketsGetTheirSplitTunedAndLaunched) {
  const MoeWeightFormat format = GetParam();
  const MoeShape shape = SmallShape();  // Im 256: the down kernel's every-item variant serves
  Result<MoeConfigTable> table = MoeConfigTable::Create(device_, 101376);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  ASSERT_EQ(MoeGemvBatchLimit(*table, shape, format), kMoeGemvMaxTokensDefault);
  MoeTunerOptions options;
  options.batches = {1, 2, 4};
  options.iters = 3;
  int candidates = 0, refused = 0;
  options.candidate_log = [&](const std::string& line) {
    ++candidates;
    if (line.find("refused") != std::string::npos) {
      ++refused;
      std::printf("[moe-tuner] %s\n", line.c_str());
    }
  };
  options.progress = [](const std::string& line) { std::printf("[moe-tuner] %s\n", line.c_str()); };
  Result<MoeTuneResult> tuned = TuneMoe(device_, *table, shape, format, options);
  ASSERT_TRUE(tuned.ok()) << tuned.status().ToString();
  EXPECT_EQ(tuned->gemv_batches, options.batches);
  ASSERT_EQ(tuned->records.size(), 3u);
  // Every split the kernels accept was tried: BF16 has no dequantisation choice.
  EXPECT_GT(candidates, format == MoeWeightFormat::kBf16 ? 3 * 20 : 3 * 50);
  EXPECT_EQ(refused, 0) << "a GEMV split computed another layer";
  const engine::MoeDeviceClass device_class = MoeDeviceClassOf(device_, *table);
  engine::MoeTuningCache cache;
  for (const engine::MoeTuningRecord& r : tuned->records) {
    EXPECT_EQ(r.gemm, "gemv");
    EXPECT_TRUE(r.Validate().ok()) << r.Validate().ToString();
    EXPECT_GT(r.measured_us, 0.0);
    EXPECT_EQ(r.n, 2 * shape.inter);
    EXPECT_EQ(r.k, shape.hidden);
    if (format == MoeWeightFormat::kBf16) {
      EXPECT_EQ(r.gemv.fp8_dequant, "convert");
    }
    ASSERT_TRUE(cache.Add(r).ok());
  }
  Result<engine::MoeTuningCache> parsed = engine::MoeTuningCache::Parse(cache.Serialize(), "t");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_TRUE(parsed
                  ->MissingBatches(device_class, MoeGemmShapeOf(shape, format), options.batches,
                                   MoeGemvBatchLimit(*table, shape, format))
                  .empty());
  Result<std::vector<MoeTunedChoice>> choices =
      MoeTunedChoicesOf(parsed->records(), device_class, shape, format, *table);
  ASSERT_TRUE(choices.ok()) << choices.status().ToString();
  ASSERT_EQ(choices->size(), 3u);
  Result<MoeConfigTable> tuned_table = MoeConfigTable::Create(device_, 101376);
  ASSERT_TRUE(tuned_table.ok());
  ASSERT_TRUE(ApplyMoeTunedChoices(*choices, *tuned_table).ok());
  Result<std::vector<MoeTableComparison>> compared =
      CompareMoeTables(*table, *tuned_table, *choices, shape, format, options.batches, 3);
  ASSERT_TRUE(compared.ok()) << compared.status().ToString();
  for (const MoeTableComparison& c : *compared) {
    EXPECT_TRUE(c.gemv) << "batch " << c.batch;
    EXPECT_TRUE(c.launched_expected)
        << "batch " << c.batch << ": launched " << MoeGemvChoiceOf(c.tuned_gemv).ToString();
    std::printf("[moe-tuner] %s batch %lld: untuned %.1f us, tuned %.1f us (%s)\n",
                MoeWeightFormatName(format), static_cast<long long>(c.batch), c.heuristic_gemm_us,
                c.tuned_gemm_us, MoeGemvChoiceOf(c.tuned_gemv).ToString().c_str());
  }
  Result<MoeRandomLayer> layer = MoeRandomLayer::Create(shape, format, 5);
  ASSERT_TRUE(layer.ok()) << layer.status().ToString();
  for (int64_t tokens : {1, 2, 3, 4}) {
    MoeTileConfig unused;
    const std::vector<float> a = Forward(*layer, *table, tokens, &unused);
    const std::vector<float> b = Forward(*layer, *tuned_table, tokens, &unused);
    float max_ref = 0, max_diff = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(a[i]));
      max_diff = std::max(max_diff, std::fabs(a[i] - b[i]));
    }
    ASSERT_GT(max_ref, 0.f);
    EXPECT_LE(max_diff, 2e-2f * max_ref) << "tokens " << tokens;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, MoeTunerTest,
                         ::testing::Values(MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel,
                                           MoeWeightFormat::kFp8Block),
                         [](const auto& info) {
                           return info.param == MoeWeightFormat::kBf16            ? "bf16"
                                  : info.param == MoeWeightFormat::kFp8PerChannel ? "fp8_channel"
                                                                                  : "fp8_block";
                         });

}  // namespace
}  // namespace spark::cuda
