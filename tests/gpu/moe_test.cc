// CUDA MoE (engine/cuda/moe.h) against the CPU backend's MoE math over GLM-4.5-Air and GLM-4.7
// (tp=4) expert shapes, tiny shapes and odd batch sizes, in BF16, FP8 per-channel and FP8
// 128x128 block, with and without GB10's 101,376-byte shared-memory cap.
//
// Tolerances (max |gpu - ref| / max |ref| per token):
//   vs `mirror` (the CPU math with the GPU's roundings: FP8 activations, BF16 intermediate):
//     2e-3 BF16, 2e-2 FP8 (an intermediate element that lands on the other side of an FP8
//     rounding boundary moves by one FP8 step).
//   vs `plain` (the CPU backend exactly): 2e-2 BF16, 1.5e-1 FP8 (activation quantisation error).
#include "engine/cuda/moe.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cpu/thread_pool.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/moe_grouped.h"
#include "engine/cuda/moe_pack.h"
#include "engine/cuda/programmatic_launch.h"
#include "engine/model/dtype.h"
#include "tests/gpu/moe_test_util.h"

namespace spark::cuda {
namespace {

using testing::ComputeMoeReference;
using testing::MakeMoeTestInput;
using testing::MakeMoeTestLayer;
using testing::MoeReference;
using testing::MoeTestConfig;
using testing::MoeTestShape;
using testing::RowRelError;

constexpr int64_t kGb10SmemBytes = 101376;

const MoeTestShape kTiny{"tiny", 8, 256, 128, 2, 1, 1, 1.0f};
const MoeTestShape kTinyGrouped{"tiny_grouped", 16, 128, 256, 4, 4, 2, 2.5f};
const MoeTestShape kAir{"glm45air", 128, 4096, 1408, 8, 1, 1, 1.0f};
const MoeTestShape kGlm47Tp4{"glm47_tp4", 160, 5120, 384, 8, 1, 1, 2.5f};

engine::ThreadPool* Pool() {
  static auto* pool = new engine::ThreadPool(0);
  return pool;
}

const DeviceInfo& Device() {
  static DeviceInfo* info = [] {
    auto r = QueryDevice(0);
    SPARK_CHECK(r.ok()) << r.status().ToString();
    return new DeviceInfo(*r);
  }();
  return *info;
}

template <class T>
struct DeviceBuffer {
  T* ptr = nullptr;
  explicit DeviceBuffer(size_t n) {
    SPARK_CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(1, n) * sizeof(T)));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

float MirrorTol(MoeWeightFormat f) { return f == MoeWeightFormat::kBf16 ? 2e-3f : 2e-2f; }
float PlainTol(MoeWeightFormat f) { return f == MoeWeightFormat::kBf16 ? 2e-2f : 1.5e-1f; }

// A layer packed and uploaded once, with its host weights for the reference.
struct Fixture {
  MoeTestShape shape;
  MoeWeightFormat format;
  engine::ModelConfig config;
  engine::LayerWeights layer;
  MoeDeviceLayer device;
};

std::unique_ptr<Fixture> MakeFixture(const MoeTestShape& shape, MoeWeightFormat format,
                                     uint64_t seed) {
  auto f = std::make_unique<Fixture>();
  f->shape = shape;
  f->format = format;
  f->config = MoeTestConfig(shape);
  f->layer = MakeMoeTestLayer(shape, format, seed, Pool());
  auto packed = PackMoeLayer(f->layer, f->config);
  SPARK_CHECK(packed.ok()) << packed.status().ToString();
  EXPECT_EQ(packed->format, format);
  auto dev = MoeDeviceLayer::Upload(*packed, nullptr);
  SPARK_CHECK(dev.ok()) << dev.status().ToString();
  f->device = std::move(*dev);
  return f;
}

struct RunResult {
  std::vector<float> out;    // [T, H]
  std::vector<int32_t> ids;  // [T, k]
  MoePlan plan;
};

RunResult RunGpu(const Fixture& f, const std::vector<uint16_t>& x, int64_t tokens,
                 const MoeConfigTable& table, MoeWorkspace& ws,
                 const MoeTileConfig* forced = nullptr) {
  const int64_t h = f.shape.hidden;
  DeviceBuffer<__nv_bfloat16> dx(tokens * h);
  DeviceBuffer<float> dout(tokens * h);
  SPARK_CUDA_CHECK(cudaMemcpy(dx.ptr, x.data(), tokens * h * 2, cudaMemcpyHostToDevice));
  cudaError_t err =
      forced != nullptr
          ? MoeForwardWithConfigs(f.device.view(), dx.ptr, tokens, dout.ptr, ws, table, *forced,
                                  *forced, nullptr)
          : MoeForward(f.device.view(), dx.ptr, tokens, dout.ptr, nullptr, ws, table, nullptr);
  EXPECT_EQ(err, cudaSuccess) << cudaGetErrorString(err);
  SPARK_CUDA_CHECK(cudaDeviceSynchronize());
  RunResult r;
  r.out.resize(tokens * h);
  r.ids.resize(tokens * f.shape.top_k);
  SPARK_CUDA_CHECK(cudaMemcpy(r.out.data(), dout.ptr, r.out.size() * 4, cudaMemcpyDeviceToHost));
  SPARK_CUDA_CHECK(
      cudaMemcpy(r.ids.data(), ws.topk_ids(), r.ids.size() * 4, cudaMemcpyDeviceToHost));
  r.plan = ws.last_plan();
  return r;
}

struct Errors {
  float mirror = 0.f, plain = 0.f;
  int route_mismatches = 0;
};

Errors Compare(const Fixture& f, const RunResult& r, const MoeReference& ref,
               const std::vector<int64_t>& rows) {
  Errors e;
  const int64_t h = f.shape.hidden;
  const int k = f.shape.top_k;
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t t = rows[i];
    if (!std::equal(ref.ids.begin() + i * k, ref.ids.begin() + (i + 1) * k,
                    r.ids.begin() + t * k)) {
      ++e.route_mismatches;
      continue;
    }
    // The GEMV and grouped paths keep BF16 activations: their mirror has no FP8 activation
    // rounding.
    const std::vector<float>& mirror = r.plan.gemv || r.plan.grouped ? ref.mirror_gemv : ref.mirror;
    e.mirror = std::max(e.mirror, RowRelError(r.out.data() + t * h, mirror.data() + i * h, h));
    e.plain = std::max(e.plain, RowRelError(r.out.data() + t * h, ref.plain.data() + i * h, h));
  }
  return e;
}

// ---- Router ----------------------------------------------------------------------------------

TEST(MoeRouterTest, TopKMatchesCpuRouteTokenExactly) {
  struct Case {
    int experts, top_k, n_group, topk_group;
    bool softmax, bias, ties;
    int shared = 0;  // fused shared expert slots after the routed choice
  };
  const Case cases[] = {
      {128, 8, 1, 1, false, true, false},    {160, 8, 1, 1, false, true, false},
      {64, 6, 8, 3, false, true, false},     {160, 8, 1, 1, false, true, true},
      {128, 8, 1, 1, true, false, false},    {32, 4, 4, 2, false, false, true},
      {512, 32, 1, 1, false, true, false},   {128, 8, 1, 1, false, true, false, 1},
      {512, 31, 1, 1, false, true, false, 1}};
  for (const Case& c : cases) {
    const int64_t tokens = 257;
    std::mt19937 rng(c.experts * 31 + c.top_k);
    std::normal_distribution<float> dist(0.f, 2.f);
    std::vector<float> logits(tokens * c.experts), bias(c.experts);
    for (float& v : logits) v = c.ties ? std::round(dist(rng)) * 0.5f : dist(rng);
    for (float& v : bias) v = c.ties ? 0.f : 0.05f * dist(rng);
    MoeShape shape;
    shape.num_experts = c.experts;
    shape.top_k = c.top_k;
    shape.n_group = c.n_group;
    shape.topk_group = c.topk_group;
    shape.softmax_scoring = c.softmax;
    shape.routed_scaling_factor = 2.5f;
    shape.shared_experts = c.shared;
    const int stride = c.top_k + c.shared;
    DeviceBuffer<float> dl(logits.size()), db(bias.size()), dw(tokens * stride);
    DeviceBuffer<int32_t> di(tokens * stride);
    SPARK_CUDA_CHECK(cudaMemcpy(dl.ptr, logits.data(), logits.size() * 4, cudaMemcpyHostToDevice));
    SPARK_CUDA_CHECK(cudaMemcpy(db.ptr, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
    ASSERT_EQ(MoeTopK(shape, dl.ptr, c.bias ? db.ptr : nullptr, tokens, di.ptr, dw.ptr, nullptr),
              cudaSuccess);
    std::vector<int32_t> ids(tokens * stride);
    std::vector<float> w(tokens * stride);
    SPARK_CUDA_CHECK(cudaMemcpy(ids.data(), di.ptr, ids.size() * 4, cudaMemcpyDeviceToHost));
    SPARK_CUDA_CHECK(cudaMemcpy(w.data(), dw.ptr, w.size() * 4, cudaMemcpyDeviceToHost));
    engine::RouterParams p;
    p.scoring = c.softmax ? engine::RouterScoring::kSoftmax : engine::RouterScoring::kSigmoid;
    p.num_experts = c.experts;
    p.top_k = c.top_k;
    p.n_group = c.n_group;
    p.topk_group = c.topk_group;
    p.routed_scaling_factor = 2.5f;
    std::vector<int32_t> cpu_ids(c.top_k);
    std::vector<float> cpu_w(c.top_k);
    for (int64_t t = 0; t < tokens; ++t) {
      engine::RouteToken(logits.data() + t * c.experts, c.bias ? bias.data() : nullptr, p,
                         cpu_ids.data(), cpu_w.data());
      for (int j = 0; j < c.top_k; ++j) {
        ASSERT_EQ(ids[t * stride + j], cpu_ids[j])
            << "E=" << c.experts << " groups=" << c.n_group << " ties=" << c.ties << " token " << t;
        EXPECT_NEAR(w[t * stride + j], cpu_w[j], 2e-6f * std::fabs(cpu_w[j]) + 1e-7f);
      }
      for (int j = 0; j < c.shared; ++j) {
        EXPECT_EQ(ids[t * stride + c.top_k + j], c.experts + j);
        EXPECT_EQ(w[t * stride + c.top_k + j], 1.0f);
      }
    }
  }
}

// ---- Packing
// -------------------------------------------------------------------------------------

// The GEMV path's router (logits and top-k in one kernel, last block selects) chooses exactly
// what MoeRoute's two kernels choose, for 1..8 tokens (then two kernels again).
TEST(MoeRouterTest, FusedRouterTopKEqualsTwoKernels) {
  // GLM shapes, then the block-wide top-k's edges: 512 experts with tied logits, an expert count
  // that is not a multiple of 32, top-k 6 and 16.
  const MoeTestShape e512{"e512_ties", 512, 256, 128, 8, 1, 1, 2.5f};
  const MoeTestShape e40{"e40_k6", 40, 256, 128, 6, 1, 1, 1.0f};
  const MoeTestShape e33{"e33_k16", 33, 128, 128, 16, 1, 1, 1.0f};
  for (const MoeTestShape& shape : {kTinyGrouped, kAir, kGlm47Tp4, e512, e40, e33}) {
    auto f = MakeFixture(shape, MoeWeightFormat::kFp8PerChannel, 5);
    if (shape.experts == 512) {
      // Router rows 2e+1 = 2e for the first 64 experts: tied logits, ties go to the lower index.
      auto* router = const_cast<float*>(f->device.view().router);
      for (int e = 0; e < 64; e += 2) {
        SPARK_CUDA_CHECK(cudaMemcpy(router + (e + 1) * shape.hidden, router + e * shape.hidden,
                                    shape.hidden * sizeof(float), cudaMemcpyDeviceToDevice));
      }
    }
    const int64_t max_tokens = 10, h = shape.hidden;
    const int pairs = shape.top_k;
    auto ws = MoeWorkspace::Create(f->device.view().shape, f->format, max_tokens);
    ASSERT_TRUE(ws.ok()) << ws.status().ToString();
    auto table = MoeConfigTable::Create(Device(), 0);
    ASSERT_TRUE(table.ok());
    table->SetGemvMaxTokens(static_cast<int>(max_tokens));
    const auto x = MakeMoeTestInput(max_tokens, shape.hidden, 19);
    DeviceBuffer<__nv_bfloat16> dx(max_tokens * h);
    DeviceBuffer<float> dout(max_tokens * h), logits(max_tokens * shape.experts);
    DeviceBuffer<int32_t> ids(max_tokens * pairs);
    DeviceBuffer<float> weights(max_tokens * pairs);
    SPARK_CUDA_CHECK(cudaMemcpy(dx.ptr, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
    for (int64_t tokens = 1; tokens <= max_tokens; ++tokens) {
      // Twice: the arrival counter must be back at zero after a forward.
      for (int rep = 0; rep < 2; ++rep) {
        ASSERT_EQ(
            MoeForward(f->device.view(), dx.ptr, tokens, dout.ptr, nullptr, *ws, *table, nullptr),
            cudaSuccess);
        ASSERT_TRUE(ws->last_plan().gemv);
        ASSERT_EQ(
            MoeRoute(f->device.view(), dx.ptr, tokens, logits.ptr, ids.ptr, weights.ptr, nullptr),
            cudaSuccess);
        const size_t n = static_cast<size_t>(tokens * pairs);
        std::vector<int32_t> got_ids(n), want_ids(n);
        std::vector<float> got_w(n), want_w(n);
        SPARK_CUDA_CHECK(cudaMemcpy(got_ids.data(), ws->topk_ids(), n * 4, cudaMemcpyDeviceToHost));
        SPARK_CUDA_CHECK(cudaMemcpy(want_ids.data(), ids.ptr, n * 4, cudaMemcpyDeviceToHost));
        SPARK_CUDA_CHECK(
            cudaMemcpy(got_w.data(), ws->topk_weights(), n * 4, cudaMemcpyDeviceToHost));
        SPARK_CUDA_CHECK(cudaMemcpy(want_w.data(), weights.ptr, n * 4, cudaMemcpyDeviceToHost));
        EXPECT_EQ(got_ids, want_ids) << shape.name << " T=" << tokens;
        EXPECT_EQ(std::memcmp(got_w.data(), want_w.data(), n * 4), 0)
            << shape.name << " T=" << tokens;
      }
    }
  }
}

TEST(MoePackTest, InterleavesGateAndUpRowsWithTheirScales) {
  const MoeTestShape shape = kTiny;
  for (MoeWeightFormat format :
       {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel, MoeWeightFormat::kFp8Block}) {
    engine::LayerWeights layer = MakeMoeTestLayer(shape, format, 3, Pool());
    auto packed = PackMoeLayer(layer, MoeTestConfig(shape));
    ASSERT_TRUE(packed.ok()) << packed.status().ToString();
    const int64_t h = shape.hidden, im = shape.inter;
    const size_t es = format == MoeWeightFormat::kBf16 ? 2 : 1;
    for (int e : {0, shape.experts - 1}) {
      for (int64_t i : {int64_t{0}, im - 1}) {
        const std::byte* row_g = packed->w13.data() + ((e * 2 * im) + 2 * i) * h * es;
        const std::byte* row_u = row_g + h * es;
        EXPECT_EQ(std::memcmp(row_g, layer.experts[e].gate.data.data() + i * h * es, h * es), 0);
        EXPECT_EQ(std::memcmp(row_u, layer.experts[e].up.data.data() + i * h * es, h * es), 0);
        if (format == MoeWeightFormat::kFp8PerChannel) {
          EXPECT_EQ(packed->w13_scale[e * 2 * im + 2 * i], layer.experts[e].gate.scale[i]);
          EXPECT_EQ(packed->w13_scale[e * 2 * im + 2 * i + 1], layer.experts[e].up.scale[i]);
        }
      }
      EXPECT_EQ(std::memcmp(packed->w2.data() + e * h * im * es, layer.experts[e].down.data.data(),
                            h * im * es),
                0);
    }
  }
  // A shared expert of the routed shape goes into slot E with its scales; one of another size
  // (or without fuse_shared) stays out.
  for (MoeWeightFormat format :
       {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel, MoeWeightFormat::kFp8Block}) {
    engine::LayerWeights layer = MakeMoeTestLayer(shape, format, 5, Pool());
    layer.has_shared_expert = true;
    layer.shared = layer.experts[1];
    EXPECT_TRUE(CanFuseSharedExpert(layer));
    auto plain = PackMoeLayer(layer, MoeTestConfig(shape));
    ASSERT_TRUE(plain.ok());
    EXPECT_EQ(plain->shape.shared_experts, 0);
    auto fused = PackMoeLayer(layer, MoeTestConfig(shape), true);
    ASSERT_TRUE(fused.ok()) << fused.status().ToString();
    EXPECT_EQ(fused->shape.shared_experts, 1);
    EXPECT_EQ(fused->shape.gemm_experts(), shape.experts + 1);
    const int64_t e = shape.experts;
    const int64_t slot13 = static_cast<int64_t>(plain->w13.size()) / e;
    const int64_t slot2 = static_cast<int64_t>(plain->w2.size()) / e;
    ASSERT_EQ(static_cast<int64_t>(fused->w13.size()), slot13 * (e + 1));
    EXPECT_EQ(std::memcmp(fused->w13.data(), plain->w13.data(), plain->w13.size()), 0);
    EXPECT_EQ(std::memcmp(fused->w13.data() + e * slot13, plain->w13.data() + slot13, slot13), 0);
    EXPECT_EQ(std::memcmp(fused->w2.data() + e * slot2, plain->w2.data() + slot2, slot2), 0);
    if (format != MoeWeightFormat::kBf16) {
      const int64_t s13 = static_cast<int64_t>(plain->w13_scale.size()) / e;
      const int64_t s2 = static_cast<int64_t>(plain->w2_scale.size()) / e;
      ASSERT_EQ(static_cast<int64_t>(fused->w13_scale.size()), s13 * (e + 1));
      for (int64_t i = 0; i < s13; ++i)
        EXPECT_EQ(fused->w13_scale[e * s13 + i], plain->w13_scale[s13 + i]);
      for (int64_t i = 0; i < s2; ++i)
        EXPECT_EQ(fused->w2_scale[e * s2 + i], plain->w2_scale[s2 + i]);
    }
    layer.shared.gate.out /= 2;  // a shared expert of another size
    EXPECT_FALSE(CanFuseSharedExpert(layer));
    auto other = PackMoeLayer(layer, MoeTestConfig(shape), true);
    ASSERT_TRUE(other.ok());
    EXPECT_EQ(other->shape.shared_experts, 0);
  }
  // Unsupported shapes name the problem.
  MoeShape bad = MoeShapeFromConfig(MoeTestConfig(kTiny), 192);
  Status st = bad.Validate(MoeWeightFormat::kFp8Block);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("multiples of 128"), std::string::npos) << st.message();
}

// ---- Whole MoE vs the CPU --------------------------------------------------------------------

struct MoeCase {
  MoeTestShape shape;
  MoeWeightFormat format;
  std::vector<int64_t> token_counts;
  int64_t max_reference_rows;  // tokens checked against the host reference per run
};

class MoeForwardTest : public ::testing::TestWithParam<MoeCase> {};

TEST_P(MoeForwardTest, MatchesCpuReferenceWithAndWithoutSmemCap) {
  const MoeCase& c = GetParam();
  auto f = MakeFixture(c.shape, c.format, 11);
  const int64_t max_tokens = *std::max_element(c.token_counts.begin(), c.token_counts.end());
  auto ws = MoeWorkspace::Create(f->device.view().shape, c.format, max_tokens);
  ASSERT_TRUE(ws.ok()) << ws.status().ToString();
  for (int64_t tokens : c.token_counts) {
    const auto x = MakeMoeTestInput(tokens, c.shape.hidden, tokens * 7 + 1);
    std::vector<int64_t> rows;
    const int64_t step = std::max<int64_t>(1, tokens / c.max_reference_rows);
    for (int64_t t = 0; t < tokens; t += step) rows.push_back(t);
    if (rows.back() != tokens - 1) rows.push_back(tokens - 1);
    const MoeReference ref = ComputeMoeReference(f->config, f->layer, c.format, x, rows, Pool());
    // Each shared-memory limit with the table's GEMV threshold, then both paths forced: tiles
    // only (threshold 0) and GEMVs at every token count, with the per-shape work split and each
    // gate/up K split and down block width, FP8 weights converted by the hardware, by bit
    // placement and into f16 tensor-core fragments.
    struct Setting {
      int64_t cap;
      int gemv_max_tokens;
      MoeGemvTiling tiling;
      int grouped_max_tokens = 0;
    };
    for (const Setting& setting :
         {Setting{0, -1, {}}, Setting{kGb10SmemBytes, -1, {}}, Setting{0, 0, {}},
          Setting{0, 1 << 20, {}}, Setting{0, 1 << 20, {1, 16, 3}}, Setting{0, 1 << 20, {2, 4, 1}},
          Setting{0, 1 << 20, {4, 8, 2}}, Setting{0, 1 << 20, {8, 4, 3}},
          // Every down item of a warp in flight (rows of one vector per lane; else 1 vector).
          Setting{0, 1 << 20, {1, 8, 4}}, Setting{0, 1 << 20, {2, 4, 4}},
          Setting{0, 1 << 20, {1, 16, 4}}, Setting{0, 1 << 20, {1, 8, 4, kMoeGemvScaledBits}},
          // Gate/up as row sweeps over a persistent grid, both CUDA-core dequantisations.
          Setting{0, 1 << 20, {0, 8, 4, kMoeGemvHardwareConvert, 1}},
          Setting{0, 1 << 20, {0, 16, 1, kMoeGemvScaledBits, 1}},
          Setting{0, 1 << 20, {1, 8, 1, kMoeGemvScaledBits}},
          Setting{0, 1 << 20, {2, 16, 2, kMoeGemvScaledBits}},
          Setting{0, 1 << 20, {1, 8, 1, kMoeGemvHardwareConvert}},
          Setting{0, 1 << 20, {1, 8, 1, kMoeGemvHalfMma}},
          Setting{0, 1 << 20, {4, 16, 1, kMoeGemvHalfMma}},
          Setting{0, 1 << 20, {8, 16, 1, kMoeGemvHalfMma}},
          // The expert-grouped kernels at every token count (GEMVs off), each warp split.
          Setting{0, 0, {}, 1 << 20}, Setting{0, 0, {2, 0, 0}, 1 << 20},
          Setting{kGb10SmemBytes, 0, {4, 0, 0}, 1 << 20}, Setting{0, 0, {8, 0, 0}, 1 << 20}}) {
      auto table = MoeConfigTable::Create(Device(), setting.cap);
      ASSERT_TRUE(table.ok()) << table.status().ToString();
      if (setting.gemv_max_tokens >= 0) table->SetGemvMaxTokens(setting.gemv_max_tokens);
      table->SetGroupedMaxTokens(setting.grouped_max_tokens);
      ASSERT_TRUE(table->SetGemvTiling(setting.tiling).ok());
      const RunResult r = RunGpu(*f, x, tokens, *table, *ws);
      const Errors e = Compare(*f, r, ref, rows);
      std::printf(
          "[moe] %s %s T=%lld cap=%lld gemv<=%d: %s; err vs mirror %.2e, vs cpu %.2e, routing "
          "mismatches %d/%zu\n",
          c.shape.name, MoeWeightFormatName(c.format), static_cast<long long>(tokens),
          static_cast<long long>(setting.cap), table->gemv_max_tokens(),
          r.plan.grouped
              ? ("grouped w" + std::to_string(r.plan.gemv_tiling.gate_up_k_splits)).c_str()
          : r.plan.gemv
              ? ("GEMV k" + std::to_string(r.plan.gemv_tiling.gate_up_k_splits) + " d" +
                 std::to_string(r.plan.gemv_tiling.down_outputs) + " v" +
                 std::to_string(r.plan.gemv_tiling.down_vectors) +
                 (r.plan.gemv_tiling.fp8_dequant == kMoeGemvScaledBits
                      ? " scaled-bits"
                      : (r.plan.gemv_tiling.fp8_dequant == kMoeGemvHalfMma ? " half-mma" : "")))
                    .c_str()
              : (r.plan.gate_up.ToString() + " | " + r.plan.down.ToString()).c_str(),
          e.mirror, e.plain, e.route_mismatches, rows.size());
      EXPECT_EQ(r.plan.gemv, tokens <= table->gemv_max_tokens());
      if (r.plan.gemv) {
        EXPECT_EQ(r.plan.gemv_tiling.gate_up_sweep, setting.tiling.gate_up_sweep);
      }
      // The grouped kernels serve FP8 wherever their staged activations fit the limit.
      const bool grouped_fits =
          c.format != MoeWeightFormat::kBf16 &&
          moe_internal::MoeGroupedSupports(c.format, c.shape.hidden, c.shape.inter,
                                           table->smem_limit_bytes());
      EXPECT_EQ(r.plan.grouped,
                !r.plan.gemv && tokens <= table->grouped_max_tokens() && grouped_fits);
      if (r.plan.grouped && setting.tiling.gate_up_k_splits > 0) {
        EXPECT_EQ(r.plan.gemv_tiling.gate_up_k_splits, setting.tiling.gate_up_k_splits);
      }
      if (r.plan.gemv && setting.tiling.gate_up_k_splits > 0) {
        EXPECT_EQ(r.plan.gemv_tiling.gate_up_k_splits, setting.tiling.gate_up_k_splits);
        EXPECT_EQ(r.plan.gemv_tiling.down_outputs, setting.tiling.down_outputs);
        const bool all_items_serve =
            c.shape.inter <= 32 * (c.format == MoeWeightFormat::kBf16 ? 8 : 16) &&
            setting.tiling.down_outputs / 4 * f->device.view().shape.pairs_per_token() <= 32;
        EXPECT_EQ(
            r.plan.gemv_tiling.down_vectors,
            setting.tiling.down_vectors == 4 && !all_items_serve ? 1 : setting.tiling.down_vectors);
        if (setting.tiling.fp8_dequant > 0) {
          EXPECT_EQ(r.plan.gemv_tiling.fp8_dequant, setting.tiling.fp8_dequant);
        }
      }
      EXPECT_LE(r.plan.gate_up.SmemBytes(), table->smem_limit_bytes());
      EXPECT_LE(r.plan.down.SmemBytes(), table->smem_limit_bytes());
      if (setting.cap > 0) {
        EXPECT_LE(r.plan.gate_up.SmemBytes(), kGb10SmemBytes);
        EXPECT_LE(r.plan.down.SmemBytes(), kGb10SmemBytes);
      }
      // Near-ties of the fp32 logits may pick differently; they must stay rare.
      EXPECT_LE(e.route_mismatches, static_cast<int>(rows.size() / 20));
      EXPECT_LE(e.mirror, r.plan.gemv || r.plan.grouped ? MirrorTol(MoeWeightFormat::kBf16)
                                                        : MirrorTol(c.format))
          << c.shape.name << " T=" << tokens;
      EXPECT_LE(e.plain, PlainTol(c.format)) << c.shape.name << " T=" << tokens;
    }
  }
}

std::string CaseName(const ::testing::TestParamInfo<MoeCase>& info) {
  std::string n = std::string(info.param.shape.name) + "_" + MoeWeightFormatName(info.param.format);
  for (char& ch : n)
    if (ch == '-') ch = '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MoeForwardTest,
    ::testing::Values(
        MoeCase{kTiny, MoeWeightFormat::kBf16, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kTiny, MoeWeightFormat::kFp8PerChannel, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kTiny, MoeWeightFormat::kFp8Block, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kTinyGrouped, MoeWeightFormat::kBf16, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kTinyGrouped, MoeWeightFormat::kFp8PerChannel, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kTinyGrouped, MoeWeightFormat::kFp8Block, {1, 3, 17, 64, 257}, 1 << 20},
        MoeCase{kGlm47Tp4, MoeWeightFormat::kBf16, {1, 3, 17, 64, 257}, 8},
        MoeCase{kGlm47Tp4, MoeWeightFormat::kFp8PerChannel, {1, 3, 17, 64, 257}, 8},
        MoeCase{kGlm47Tp4, MoeWeightFormat::kFp8Block, {1, 3, 17, 64, 257}, 8},
        MoeCase{kAir, MoeWeightFormat::kFp8PerChannel, {1, 3, 17, 64, 257}, 6},
        MoeCase{kAir, MoeWeightFormat::kFp8Block, {1, 17, 257}, 6}),
    CaseName);

// ---- Every tile config, the shared-memory cap ------------------------------------------------

TEST(MoeConfigTest, EveryConfigWithinTheLimitIsCorrectAndNoneAboveIsLaunched) {
  const MoeTestShape shape{"cfg", 16, 256, 256, 4, 1, 1, 1.0f};
  for (MoeWeightFormat format :
       {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel, MoeWeightFormat::kFp8Block}) {
    auto f = MakeFixture(shape, format, 5);
    const int64_t tokens = 45;
    const auto x = MakeMoeTestInput(tokens, shape.hidden, 99);
    std::vector<int64_t> rows(tokens);
    for (int64_t t = 0; t < tokens; ++t) rows[t] = t;
    const MoeReference ref = ComputeMoeReference(f->config, f->layer, format, x, rows, Pool());
    auto ws = MoeWorkspace::Create(f->device.view().shape, format, tokens);
    ASSERT_TRUE(ws.ok());
    auto uncapped = MoeConfigTable::Create(Device(), 0);
    auto capped = MoeConfigTable::Create(Device(), kGb10SmemBytes);
    ASSERT_TRUE(uncapped.ok() && capped.ok());
    EXPECT_EQ(capped->smem_limit_bytes(),
              std::min(kGb10SmemBytes, Device().smem_optin_per_block_bytes));
    int above_cap = 0, run = 0;
    float worst = 0.f;
    std::vector<float> first;
    for (const MoeTileConfig& cfg : uncapped->Candidates(format)) {
      ASSERT_LE(cfg.SmemBytes(), uncapped->smem_limit_bytes());
      const bool fits_cap = cfg.SmemBytes() <= kGb10SmemBytes;
      if (!fits_cap) {
        ++above_cap;
        // The capped table refuses it: nothing is launched, the call fails cleanly.
        EXPECT_FALSE(capped->Check(format, cfg).ok());
        EXPECT_FALSE(capped->SetTuned(format, MoeGemm::kGateUp, tokens * 4, cfg).ok());
        DeviceBuffer<__nv_bfloat16> dx(tokens * shape.hidden);
        DeviceBuffer<float> dout(tokens * shape.hidden);
        EXPECT_EQ(MoeForwardWithConfigs(f->device.view(), dx.ptr, tokens, dout.ptr, *ws, *capped,
                                        cfg, cfg, nullptr),
                  cudaErrorInvalidConfiguration);
        continue;
      }
      ++run;
      const RunResult r = RunGpu(*f, x, tokens, *capped, *ws, &cfg);
      const Errors e = Compare(*f, r, ref, rows);
      EXPECT_LE(e.mirror, MirrorTol(format)) << cfg.ToString();
      worst = std::max(worst, e.mirror);
      // Split-K and tiling do not change the routing; all configs agree closely.
      if (first.empty()) first = r.out;
      EXPECT_LT(RowRelError(r.out.data(), first.data(), static_cast<int64_t>(first.size())), 1e-2f)
          << cfg.ToString();
    }
    std::printf(
        "[moe] %s: %d configs run under the %lld-byte cap (worst err vs mirror %.2e), %d "
        "above it refused\n",
        MoeWeightFormatName(format), run, static_cast<long long>(kGb10SmemBytes), worst, above_cap);
    EXPECT_GT(run, 10);
    if (Device().smem_optin_per_block_bytes > kGb10SmemBytes) {
      EXPECT_GT(above_cap, 0);
    }
    // The heuristic never leaves the cap either.
    for (int64_t pairs = 1; pairs <= (int64_t{1} << 16); pairs *= 3) {
      for (MoeGemm gemm : {MoeGemm::kGateUp, MoeGemm::kDown}) {
        const MoeTileConfig c = capped->Select(format, gemm, pairs, 160, 5120, 1536, 8);
        EXPECT_TRUE(capped->Check(format, c).ok()) << c.ToString();
        EXPECT_LE(c.SmemBytes(), kGb10SmemBytes);
      }
    }
  }
}

// Every batch size at GLM-4.5-Air widths under GB10's cap and uncapped, with the workspace sized
// by the capped table as CudaBackend sizes it: every forward launches (the plan fits the
// workspace, the heuristic's split-K is kept) and both tables agree.
TEST(MoeForwardMiscTest, AirWidthsEveryBatchSizeWithAndWithoutGb10Cap) {
  auto f = MakeFixture(kAir, MoeWeightFormat::kFp8PerChannel, 13);
  const int64_t max_tokens = 300, h = kAir.hidden;
  auto capped = MoeConfigTable::Create(Device(), kGb10SmemBytes);
  auto full = MoeConfigTable::Create(Device(), 0);
  ASSERT_TRUE(capped.ok() && full.ok());
  auto ws = MoeWorkspace::Create(f->device.view().shape, f->format, max_tokens, &*capped);
  ASSERT_TRUE(ws.ok()) << ws.status().ToString();
  const auto x = MakeMoeTestInput(max_tokens, h, 77);
  DeviceBuffer<__nv_bfloat16> dx(max_tokens * h);
  DeviceBuffer<float> da(max_tokens * h), db(max_tokens * h);
  SPARK_CUDA_CHECK(cudaMemcpy(dx.ptr, x.data(), max_tokens * h * 2, cudaMemcpyHostToDevice));
  std::vector<float> a(max_tokens * h), b(max_tokens * h);
  float worst = 0.f;
  for (int64_t tokens = 1; tokens <= max_tokens; ++tokens) {
    ASSERT_EQ(MoeForward(f->device.view(), dx.ptr, tokens, da.ptr, nullptr, *ws, *capped, nullptr),
              cudaSuccess)
        << "capped, T=" << tokens;
    const MoePlan capped_plan = ws->last_plan();
    ASSERT_EQ(MoeForward(f->device.view(), dx.ptr, tokens, db.ptr, nullptr, *ws, *full, nullptr),
              cudaSuccess)
        << "uncapped, T=" << tokens;
    const int64_t pairs = tokens * kAir.top_k;
    EXPECT_EQ(capped_plan.gemv, tokens <= capped->gemv_max_tokens()) << "T=" << tokens;
    if (!capped_plan.gemv) {  // the GEMV path has no tiles
      EXPECT_EQ(capped_plan.gate_up.block_m, capped->BlockMFor(f->format, pairs, kAir.experts));
      EXPECT_LE(capped_plan.gate_up.SmemBytes(), kGb10SmemBytes);
      EXPECT_LE(capped_plan.down.SmemBytes(), kGb10SmemBytes);
      const MoeTileConfig want = capped->Select(f->format, MoeGemm::kDown, pairs, kAir.experts,
                                                kAir.hidden, kAir.inter, 8);
      EXPECT_EQ(capped_plan.down.split_k, want.split_k) << "T=" << tokens;
    }
    SPARK_CUDA_CHECK(cudaMemcpy(a.data(), da.ptr, tokens * h * 4, cudaMemcpyDeviceToHost));
    SPARK_CUDA_CHECK(cudaMemcpy(b.data(), db.ptr, tokens * h * 4, cudaMemcpyDeviceToHost));
    for (int64_t t = 0; t < tokens; ++t)
      worst = std::max(worst, RowRelError(a.data() + t * h, b.data() + t * h, h));
  }
  std::printf("[moe] glm45air fp8 T=1..%lld: capped vs uncapped worst row error %.2e\n",
              static_cast<long long>(max_tokens), worst);
  EXPECT_LE(worst, 1e-2f);
}

// The GEMV work splits not yet in the defaults, on a layer with a fused shared expert (P = top_k
// + 1: more down items per warp, up to 32 at 16 outputs), with and without programmatic launch,
// FP32 and BF16 + addend outputs: the every-item down equals the one-vector item loop bit for bit
// (same per-lane sums), the row sweep equals the row-group gate/up up to summation order, and
// programmatic launch changes no bit.
TEST(MoeForwardMiscTest, NewGemvSplitsWithSharedSlotAndProgrammaticLaunch) {
  for (MoeWeightFormat format :
       {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel, MoeWeightFormat::kFp8Block}) {
    const MoeTestShape shape = kGlm47Tp4;
    engine::LayerWeights layer = MakeMoeTestLayer(shape, format, 9, Pool());
    layer.has_shared_expert = true;
    layer.shared = layer.experts[3];
    auto packed = PackMoeLayer(layer, MoeTestConfig(shape), /*fuse_shared=*/true);
    ASSERT_TRUE(packed.ok()) << packed.status().ToString();
    ASSERT_EQ(packed->shape.shared_experts, 1);
    auto dev = MoeDeviceLayer::Upload(*packed, nullptr);
    ASSERT_TRUE(dev.ok()) << dev.status().ToString();
    const int64_t max_tokens = 4, h = shape.hidden;
    auto ws = MoeWorkspace::Create(dev->view().shape, format, max_tokens);
    ASSERT_TRUE(ws.ok()) << ws.status().ToString();
    const auto x = MakeMoeTestInput(max_tokens, h, 31);
    const auto addend = MakeMoeTestInput(max_tokens, h, 32);
    DeviceBuffer<__nv_bfloat16> dx(max_tokens * h), dadd(max_tokens * h), dbf(max_tokens * h);
    DeviceBuffer<float> dout(max_tokens * h);
    SPARK_CUDA_CHECK(cudaMemcpy(dx.ptr, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
    SPARK_CUDA_CHECK(
        cudaMemcpy(dadd.ptr, addend.data(), addend.size() * 2, cudaMemcpyHostToDevice));
    // fp32 output, then BF16 output plus the addend, as bytes.
    auto run = [&](const MoeGemvTiling& tiling, int64_t tokens, bool pdl, MoePlan* plan) {
      auto table = MoeConfigTable::Create(Device(), 0);
      EXPECT_TRUE(table.ok());
      EXPECT_TRUE(table->SetGemvTiling(tiling).ok());
      ProgrammaticLaunchScope scope(pdl);
      EXPECT_EQ(MoeForward(dev->view(), dx.ptr, tokens, dout.ptr, nullptr, *ws, *table, nullptr),
                cudaSuccess);
      *plan = ws->last_plan();
      EXPECT_EQ(MoeForward(dev->view(), dx.ptr, tokens, dbf.ptr, dadd.ptr, *ws, *table, nullptr),
                cudaSuccess);
      SPARK_CUDA_CHECK(cudaDeviceSynchronize());
      std::vector<uint8_t> bytes(static_cast<size_t>(tokens * h * 6));
      SPARK_CUDA_CHECK(cudaMemcpy(bytes.data(), dout.ptr, tokens * h * 4, cudaMemcpyDeviceToHost));
      SPARK_CUDA_CHECK(cudaMemcpy(bytes.data() + tokens * h * 4, dbf.ptr, tokens * h * 2,
                                  cudaMemcpyDeviceToHost));
      return bytes;
    };
    auto fp32_of = [&](const std::vector<uint8_t>& bytes, int64_t tokens) {
      std::vector<float> v(static_cast<size_t>(tokens * h));
      std::memcpy(v.data(), bytes.data(), v.size() * 4);
      return v;
    };
    const bool fp8 = format != MoeWeightFormat::kBf16;
    for (int64_t tokens = 1; tokens <= max_tokens; ++tokens) {
      SCOPED_TRACE(std::string(MoeWeightFormatName(format)) + " T=" + std::to_string(tokens));
      for (int dequant : {kMoeGemvHardwareConvert, kMoeGemvScaledBits}) {
        if (!fp8 && dequant != kMoeGemvHardwareConvert) continue;
        for (int outputs : {4, 8, 16}) {
          MoePlan plan;
          const auto one = run({1, outputs, 1, dequant}, tokens, false, &plan);
          const auto all = run({1, outputs, 4, dequant}, tokens, false, &plan);
          // FP8 rows of 384 elements are one vector on 24 lanes (BF16 rows need 48: never
          // served); a warp holds up to 32 (pair, 4 outputs) items.
          const bool serves = fp8 && outputs / 4 * (shape.top_k + 1) <= 32;
          EXPECT_EQ(plan.gemv_tiling.down_vectors, serves ? 4 : 1) << "outputs " << outputs;
          EXPECT_EQ(all, one) << "every-item down, outputs " << outputs << " dequant " << dequant;
          EXPECT_EQ(run({1, outputs, 4, dequant}, tokens, true, &plan), all)
              << "programmatic launch, outputs " << outputs;
        }
        MoePlan plan;
        const auto rows = run({1, 8, 1, dequant}, tokens, false, &plan);
        const auto sweep = run({0, 8, 1, dequant, 1}, tokens, false, &plan);
        EXPECT_EQ(plan.gemv_tiling.gate_up_sweep, 1);
        const std::vector<float> a = fp32_of(rows, tokens), b = fp32_of(sweep, tokens);
        for (int64_t t = 0; t < tokens; ++t) {
          EXPECT_LE(RowRelError(b.data() + t * h, a.data() + t * h, h), 5e-3f) << "row sweep";
        }
        EXPECT_EQ(run({0, 8, 1, dequant, 1}, tokens, true, &plan), sweep)
            << "programmatic launch, row sweep";
      }
    }
  }
}

TEST(MoeForwardMiscTest, DeterministicBf16OutputWithAddendAndLimits) {
  auto f = MakeFixture(kTinyGrouped, MoeWeightFormat::kFp8PerChannel, 21);
  const int64_t tokens = 33, h = kTinyGrouped.hidden;
  auto ws = MoeWorkspace::Create(f->device.view().shape, f->format, tokens);
  ASSERT_TRUE(ws.ok());
  auto table = MoeConfigTable::Create(Device(), 0);
  ASSERT_TRUE(table.ok());
  const auto x = MakeMoeTestInput(tokens, h, 3);
  std::vector<uint16_t> addend = MakeMoeTestInput(tokens, h, 4);
  DeviceBuffer<__nv_bfloat16> dx(tokens * h), dadd(tokens * h), dout(tokens * h);
  SPARK_CUDA_CHECK(cudaMemcpy(dx.ptr, x.data(), tokens * h * 2, cudaMemcpyHostToDevice));
  SPARK_CUDA_CHECK(cudaMemcpy(dadd.ptr, addend.data(), tokens * h * 2, cudaMemcpyHostToDevice));
  // The tile path (33 tokens), then the GEMV path at the same token count.
  for (const int gemv_max_tokens : {0, 1 << 20}) {
    table->SetGemvMaxTokens(gemv_max_tokens);
    const RunResult a = RunGpu(*f, x, tokens, *table, *ws);
    const RunResult b = RunGpu(*f, x, tokens, *table, *ws);
    EXPECT_EQ(a.plan.gemv, gemv_max_tokens > 0);
    EXPECT_EQ(std::memcmp(a.out.data(), b.out.data(), a.out.size() * 4), 0) << "not deterministic";

    // BF16 output plus an addend (the shared expert's output).
    ASSERT_EQ(
        MoeForward(f->device.view(), dx.ptr, tokens, dout.ptr, dadd.ptr, *ws, *table, nullptr),
        cudaSuccess);
    std::vector<uint16_t> out(tokens * h);
    SPARK_CUDA_CHECK(cudaMemcpy(out.data(), dout.ptr, out.size() * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < tokens * h; ++i) {
      const float want = a.out[i] + engine::Bf16ToFloat(addend[i]);
      ASSERT_NEAR(engine::Bf16ToFloat(out[i]), want, std::fabs(want) * 8e-3f + 1e-6f)
          << i << " gemv " << a.plan.gemv;
    }
  }
  // More tokens than the workspace holds, or a workspace of another shape: an error, no launch.
  DeviceBuffer<__nv_bfloat16> big(2 * tokens * h);
  EXPECT_EQ(
      MoeForward(f->device.view(), big.ptr, tokens + 1, dout.ptr, nullptr, *ws, *table, nullptr),
      cudaErrorInvalidValue);
  auto other = MoeWorkspace::Create(f->device.view().shape, MoeWeightFormat::kBf16, tokens);
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(
      MoeForward(f->device.view(), dx.ptr, tokens, dout.ptr, nullptr, *other, *table, nullptr),
      cudaErrorInvalidValue);
  EXPECT_EQ(MoeForward(f->device.view(), dx.ptr, 0, dout.ptr, nullptr, *ws, *table, nullptr),
            cudaSuccess);
}

}  // namespace
}  // namespace spark::cuda
