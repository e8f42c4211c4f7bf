#include "engine/cpu/kernels.h"
#include "engine/model/weight_checks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <numbers>
#include <vector>

#include "engine/cpu/thread_pool.h"
#include "engine/model/dtype.h"
#include "tests/engine/cpu/test_model.h"

namespace spark::engine {
namespace {

using testing::HashUniform;
using testing::MakeLinear;
using testing::WeightFormat;

std::vector<float> RandomVector(const std::string& name, int64_t n, float amp = 1.0f) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = amp * HashUniform(7, name, 0, i);
  return v;
}

TEST(CpuThreadPoolTest, CoversEveryIndexOnceForAnySize) {
  for (int threads : {1, 2, 5}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int64_t n : {0, 1, 7, 1000, 12345}) {
      std::vector<std::atomic<int>> hits(n);
      pool.ParallelFor(n, 3, [&](int64_t b, int64_t e) {
        EXPECT_LE(0, b);
        EXPECT_LE(e, n);
        for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
    }
  }
}

TEST(CpuThreadPoolTest, NestedParallelForRunsInline) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  pool.ParallelFor(10, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      pool.ParallelFor(100, 1, [&](int64_t b2, int64_t e2) { total.fetch_add(e2 - b2); });
    }
  });
  EXPECT_EQ(total.load(), 1000);
}

TEST(CpuConversionTest, HalfMatchesDtypeLibraryForAllCodes) {
  for (uint32_t v = 0; v < 65536; ++v) {
    const float a = HalfToFloat(static_cast<uint16_t>(v));
    const float b = F16ToFloat(static_cast<uint16_t>(v));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << v;
    } else {
      ASSERT_EQ(std::memcmp(&a, &b, 4), 0) << "code " << v << ": " << a << " vs " << b;
    }
  }
  EXPECT_EQ(HalfToFloat(0x3c00), 1.0f);
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0xc000), -2.0f);
}

TEST(CpuConversionTest, Fp8MatchesOcpTable) {
  EXPECT_EQ(Fp8E4M3ToFloatExact(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloatExact(0xfe), -448.0f);
  EXPECT_EQ(Fp8E4M3ToFloatExact(0x38), 1.0f);
  EXPECT_EQ(Fp8E4M3ToFloatExact(0x01), std::ldexp(1.0f, -9));
  EXPECT_TRUE(std::isnan(Fp8E4M3ToFloatExact(0x7f)));
  for (int v = 0; v < 256; ++v) {
    const float a = Fp8E4M3ToFloatExact(static_cast<uint8_t>(v));
    const float b = F8E4M3ToFloat(static_cast<uint8_t>(v));
    if (std::isnan(b)) {
      EXPECT_TRUE(std::isnan(a)) << v;
    } else {
      EXPECT_EQ(a, b) << v;
    }
  }
}

TEST(CpuConversionTest, Fp8DequantizationIsExactForEveryCode) {
  for (ScaleKind kind : {ScaleKind::kPerChannel, ScaleKind::kBlock}) {
    LinearWeight w;
    w.dtype = DType::kF8E4M3;
    w.out = 2;
    w.in = 256;
    w.scale_kind = kind;
    w.data.resize(512);
    for (int i = 0; i < 512; ++i) w.data[i] = static_cast<std::byte>(i % 256);
    if (kind == ScaleKind::kPerChannel) {
      w.scale = {1.0f, 0.0123f};
    } else {
      w.block_n = 1;
      w.block_k = 64;
      w.scale = {1.0f, 3.5f, 1e-3f, 0.25f, 7.0f, 0.0625f, 1.0f / 448.0f, 2.0f};
    }
    ASSERT_EQ(DescribeLinearWeightError(w), "");
    std::vector<float> out(512);
    DequantizeTile(w, 0, 2, 0, 256, out.data(), 256);
    for (int r = 0; r < 2; ++r) {
      for (int c = 0; c < 256; ++c) {
        const float want = w.At(r, c);
        if (std::isnan(want)) {
          EXPECT_TRUE(std::isnan(out[r * 256 + c])) << c;
        } else {
          ASSERT_EQ(out[r * 256 + c], want) << "row " << r << " code " << c;
        }
      }
    }
  }
}

struct FormatCase {
  const char* name;
  WeightFormat format;
};

const FormatCase kFormats[] = {
    {"f32", {DType::kF32, ScaleKind::kNone, 0}},
    {"bf16", {DType::kBF16, ScaleKind::kNone, 0}},
    {"f16", {DType::kF16, ScaleKind::kNone, 0}},
    {"fp8_channel", {DType::kF8E4M3, ScaleKind::kPerChannel, 0}},
    {"fp8_block16", {DType::kF8E4M3, ScaleKind::kBlock, 16}},
};

class CpuGemmTest : public ::testing::TestWithParam<FormatCase> {};

TEST_P(CpuGemmTest, DequantizeTileEqualsAtExactly) {
  // Shapes not multiple of the tile sizes or of the block size.
  const LinearWeight w = MakeLinear(3, "w", 37, 70, GetParam().format, false);
  std::vector<float> tile(13 * 41);
  DequantizeTile(w, 11, 13, 21, 41, tile.data(), 41);
  for (int64_t r = 0; r < 13; ++r) {
    for (int64_t c = 0; c < 41; ++c) {
      ASSERT_EQ(tile[r * 41 + c], w.At(11 + r, 21 + c)) << r << "," << c;
    }
  }
  EXPECT_EQ(DescribeLinearWeightError(w), "");
}

TEST_P(CpuGemmTest, MatchesDoubleReference) {
  for (int64_t m : {1, 3, 45}) {
    for (bool bias : {false, true}) {
      const LinearWeight w = MakeLinear(5, "gemm", 37, 70, GetParam().format, bias);
      const std::vector<float> x = RandomVector("x", m * w.in);
      std::vector<float> y(m * w.out, -1.0f);
      ThreadPool pool(3);
      Linear(x.data(), m, w, y.data(), &pool);
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t n = 0; n < w.out; ++n) {
          double ref = bias ? w.bias[n] : 0.0;
          double mag = bias ? std::fabs(w.bias[n]) : 0.0;
          for (int64_t k = 0; k < w.in; ++k) {
            ref += static_cast<double>(x[i * w.in + k]) * w.At(n, k);
            mag += std::fabs(static_cast<double>(x[i * w.in + k]) * w.At(n, k));
          }
          ASSERT_NEAR(y[i * w.out + n], ref, 1e-6 * mag + 1e-30)
              << "m " << m << " row " << i << " col " << n;
        }
      }
    }
  }
}

TEST_P(CpuGemmTest, RowResultIndependentOfBatchAndThreads) {
  const LinearWeight w = MakeLinear(9, "det", 50, 133, GetParam().format, true);
  const int64_t m = 40;
  const std::vector<float> x = RandomVector("xd", m * w.in);
  std::vector<float> batched(m * w.out);
  ThreadPool pool4(4);
  Linear(x.data(), m, w, batched.data(), &pool4);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<float> single(w.out);
    Linear(x.data() + i * w.in, 1, w, single.data(), nullptr);
    ASSERT_EQ(std::memcmp(single.data(), batched.data() + i * w.out, w.out * sizeof(float)), 0)
        << "row " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CpuGemmTest, ::testing::ValuesIn(kFormats),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(CpuLinearF32Test, MatchesDoubleReference) {
  const int64_t m = 5, n = 11, k = 29;
  const std::vector<float> x = RandomVector("x", m * k);
  const std::vector<float> w = RandomVector("w", n * k);
  std::vector<float> y(m * n);
  ThreadPool pool(2);
  LinearF32(x.data(), m, w.data(), n, k, y.data(), &pool);
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double ref = 0.0;
      for (int64_t l = 0; l < k; ++l) ref += static_cast<double>(x[i * k + l]) * w[j * k + l];
      EXPECT_NEAR(y[i * n + j], ref, 1e-5);
    }
  }
}

TEST(CpuRmsNormTest, MatchesDoubleReferenceAndWorksInPlace) {
  const int64_t rows = 3, dim = 77;
  std::vector<float> x = RandomVector("rms", rows * dim, 3.0f);
  const std::vector<float> weight = RandomVector("rmsw", dim);
  std::vector<float> y(rows * dim);
  RmsNorm(x.data(), rows, dim, weight.data(), 1e-5f, y.data());
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int64_t i = 0; i < dim; ++i) {
      const double ref = weight[i] * (x[r * dim + i] * inv);
      EXPECT_NEAR(y[r * dim + i], ref, 1e-6 * std::fabs(ref) + 1e-7);
    }
  }
  RmsNorm(x.data(), rows, dim, weight.data(), 1e-5f, x.data());
  EXPECT_EQ(x, y);
}

TEST(CpuSiluMulTest, MatchesClosedForm) {
  const std::vector<float> g = RandomVector("g", 100, 8.0f);
  const std::vector<float> u = RandomVector("u", 100, 2.0f);
  std::vector<float> out(100);
  SiluMul(g.data(), u.data(), 100, out.data());
  for (int i = 0; i < 100; ++i) {
    const double ref = g[i] / (1.0 + std::exp(-static_cast<double>(g[i]))) * u[i];
    EXPECT_NEAR(out[i], ref, 1e-6 * std::fabs(ref) + 1e-7);
  }
}

TEST(CpuEmbeddingTest, CopiesDequantisedRows) {
  const LinearWeight table =
      MakeLinear(1, "emb", 20, 12, {DType::kBF16, ScaleKind::kNone, 0}, false);
  const int32_t ids[] = {19, 0, 7, 7};
  std::vector<float> out(4 * 12);
  EmbeddingLookup(table, ids, 4, out.data());
  for (int t = 0; t < 4; ++t) {
    for (int h = 0; h < 12; ++h) EXPECT_EQ(out[t * 12 + h], table.At(ids[t], h));
  }
}

ModelConfig RopeConfig(int head_dim, double partial, double theta) {
  ModelConfig c;
  c.head_dim = head_dim;
  c.partial_rotary_factor = partial;
  c.rotary_dim = static_cast<int>(head_dim * partial);
  c.rope_theta = theta;
  return c;
}

TEST(CpuRopeTest, PartialNeoxRotationMatchesClosedForm) {
  const ModelConfig c = RopeConfig(16, 0.5, 10000.0);
  RotaryEmbedding rope(c);
  ASSERT_EQ(rope.rotary_dim(), 8);
  ASSERT_EQ(rope.inv_freq().size(), 4u);
  for (int j = 0; j < 4; ++j) {
    // Exponent denominator is the rotary dim, not head_dim.
    EXPECT_NEAR(rope.inv_freq()[j], 1.0 / std::pow(10000.0, 2.0 * j / 8), 1e-7);
  }
  const int heads = 3;
  for (int64_t pos : {0, 1, 5, 117, 3000}) {
    const std::vector<float> x = RandomVector("rope" + std::to_string(pos), heads * 16);
    std::vector<float> y = x;
    rope.Apply(y.data(), heads, pos);
    for (int h = 0; h < heads; ++h) {
      const float* xi = x.data() + h * 16;
      const float* yi = y.data() + h * 16;
      for (int j = 0; j < 4; ++j) {
        const double a = pos / std::pow(10000.0, 2.0 * j / 8);
        // Pairs (j, j + rd/2): x' = x cos - x[j+4] sin, x'[j+4] = x[j+4] cos + x sin.
        EXPECT_NEAR(yi[j], xi[j] * std::cos(a) - xi[j + 4] * std::sin(a), 2e-6 * (1 + pos / 100));
        EXPECT_NEAR(yi[j + 4], xi[j + 4] * std::cos(a) + xi[j] * std::sin(a),
                    2e-6 * (1 + pos / 100));
      }
      for (int d = 8; d < 16; ++d) EXPECT_EQ(yi[d], xi[d]) << "pass-through dim " << d;
    }
  }
}

TEST(CpuRopeTest, PositionZeroIsIdentityAndFullRotaryTouchesAllDims) {
  const ModelConfig c = RopeConfig(8, 1.0, 1e6);
  RotaryEmbedding rope(c);
  std::vector<float> x = RandomVector("r0", 8);
  std::vector<float> y = x;
  rope.Apply(y.data(), 1, 0);
  EXPECT_EQ(x, y);
  rope.Apply(y.data(), 1, 3);
  for (int d = 0; d < 8; ++d) EXPECT_NE(x[d], y[d]) << d;
}

TEST(CpuRopeTest, Llama3ScalingFollowsTheThreeBands) {
  ModelConfig c = RopeConfig(16, 1.0, 500000.0);
  c.rope_llama3_factor = 8.0;
  c.rope_llama3_low_freq_factor = 1.0;
  c.rope_llama3_high_freq_factor = 4.0;
  c.rope_llama3_original_max_position = 64;
  RotaryEmbedding rope(c);
  for (int j = 0; j < 8; ++j) {
    const double base = 1.0 / std::pow(500000.0, 2.0 * j / 16);
    const double wavelen = 2 * std::numbers::pi / base;
    double want;
    if (wavelen < 64.0 / 4.0) {
      want = base;
    } else if (wavelen > 64.0) {
      want = base / 8.0;
    } else {
      const double smooth = (64.0 / wavelen - 1.0) / (4.0 - 1.0);
      want = (1 - smooth) * base / 8.0 + smooth * base;
    }
    EXPECT_NEAR(rope.inv_freq()[j], want, 1e-6 * want) << j;
  }
}

// ---- Attention ---------------------------------------------------------------------------

TEST(CpuAttentionTest, PagedGqaMatchesNaiveCausalAttention) {
  const int q_heads = 6, kv_heads = 2, hd = 8, block = 4;
  const int64_t ctx = 19, start = 12, n = ctx - start;
  const std::vector<float> k = RandomVector("k", ctx * kv_heads * hd, 2.0f);
  const std::vector<float> v = RandomVector("v", ctx * kv_heads * hd);
  const std::vector<float> q = RandomVector("q", n * q_heads * hd, 2.0f);
  // Scatter the cache over blocks in a shuffled order.
  const int num_blocks = (ctx + block - 1) / block;
  const int order[] = {3, 0, 4, 1, 2};
  std::vector<float> kpool(5 * block * kv_heads * hd), vpool(kpool.size());
  std::vector<const float*> kb(num_blocks), vb(num_blocks);
  for (int b = 0; b < num_blocks; ++b) {
    kb[b] = kpool.data() + order[b] * block * kv_heads * hd;
    vb[b] = vpool.data() + order[b] * block * kv_heads * hd;
  }
  for (int64_t t = 0; t < ctx; ++t) {
    std::memcpy(const_cast<float*>(kb[t / block]) + (t % block) * kv_heads * hd,
                k.data() + t * kv_heads * hd, kv_heads * hd * sizeof(float));
    std::memcpy(const_cast<float*>(vb[t / block]) + (t % block) * kv_heads * hd,
                v.data() + t * kv_heads * hd, kv_heads * hd * sizeof(float));
  }
  PagedKvView view{kb.data(), vb.data(), block, kv_heads, hd};
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::vector<float> out(n * q_heads * hd);
  ThreadPool pool(3);
  PagedAttention(q.data(), n, start, q_heads, view, scale, out.data(), &pool);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t;
    for (int h = 0; h < q_heads; ++h) {
      const int j = h / (q_heads / kv_heads);
      std::vector<double> s(pos + 1);
      double mx = -1e300, sum = 0.0;
      for (int64_t u = 0; u <= pos; ++u) {
        double d = 0.0;
        for (int e = 0; e < hd; ++e) {
          d += static_cast<double>(q[(t * q_heads + h) * hd + e]) * k[(u * kv_heads + j) * hd + e];
        }
        s[u] = d / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, s[u]);
      }
      for (double& e : s) sum += (e = std::exp(e - mx));
      for (int e = 0; e < hd; ++e) {
        double ref = 0.0;
        for (int64_t u = 0; u <= pos; ++u) ref += s[u] / sum * v[(u * kv_heads + j) * hd + e];
        EXPECT_NEAR(out[(t * q_heads + h) * hd + e], ref, 1e-6) << t << " " << h << " " << e;
      }
    }
  }
}

// Tree attention: the prefix slots, then an explicit slot list (ancestors and self).
TEST(CpuAttentionTest, SlotListAttendsToPrefixThenTailOnly) {
  const int kv_heads = 2, hd = 8, block = 4;
  const int64_t slots = 14, prefix = 9;
  const std::vector<float> k = RandomVector("tk", slots * kv_heads * hd, 2.0f);
  const std::vector<float> v = RandomVector("tv", slots * kv_heads * hd);
  const std::vector<float> q = RandomVector("tq", hd, 2.0f);
  std::vector<const float*> kb, vb;
  for (int64_t b = 0; b * block < slots; ++b) {
    kb.push_back(k.data() + b * block * kv_heads * hd);
    vb.push_back(v.data() + b * block * kv_heads * hd);
  }
  PagedKvView view{kb.data(), vb.data(), block, kv_heads, hd};
  const int64_t tail[] = {9, 11, 13};  // slots 10 and 12 (other branches) are not visible
  const float scale = 0.35f;
  std::vector<float> scores, out(hd);
  for (int j = 0; j < kv_heads; ++j) {
    AttendHeadSlots(q.data(), prefix, tail, 3, j, view, scale, &scores, out.data());
    std::vector<int64_t> keys;
    for (int64_t u = 0; u < prefix; ++u) keys.push_back(u);
    keys.insert(keys.end(), std::begin(tail), std::end(tail));
    std::vector<double> s;
    double mx = -1e300, sum = 0.0;
    for (int64_t u : keys) {
      double d = 0.0;
      for (int e = 0; e < hd; ++e) d += double{q[e]} * k[(u * kv_heads + j) * hd + e];
      s.push_back(d * scale);
      mx = std::max(mx, s.back());
    }
    for (double& e : s) sum += (e = std::exp(e - mx));
    for (int e = 0; e < hd; ++e) {
      double ref = 0.0;
      for (size_t i = 0; i < keys.size(); ++i)
        ref += s[i] / sum * v[(keys[i] * kv_heads + j) * hd + e];
      EXPECT_NEAR(out[e], ref, 1e-6) << j << " " << e;
    }
    // A contiguous tail is exactly the causal result over those slots.
    const int64_t chain[] = {9, 10, 11};
    std::vector<float> a(hd), b(hd);
    AttendHeadSlots(q.data(), prefix, chain, 3, j, view, scale, &scores, a.data());
    AttendHead(q.data(), 11, j, view, scale, &scores, b.data());
    EXPECT_EQ(a, b);
  }
}

TEST(CpuAttentionTest, FirstTokenReturnsItsOwnValue) {
  const int hd = 4;
  const float k[] = {1, 2, 3, 4};
  const float v[] = {0.5f, -1, 2, 7};
  const float* kb[] = {k};
  const float* vb[] = {v};
  PagedKvView view{kb, vb, 16, 1, hd};
  const float q[] = {9, 9, 9, 9, 1, 1, 1, 1};
  float out[8];
  PagedAttention(q, 1, 0, 2, view, 0.5f, out, nullptr);
  for (int h = 0; h < 2; ++h) {
    for (int e = 0; e < hd; ++e) EXPECT_EQ(out[h * hd + e], v[e]);
  }
}

// ---- Router ------------------------------------------------------------------------------

float Logit(double p) { return static_cast<float>(std::log(p / (1 - p))); }

RouterParams Sigmoid(int experts, int k) {
  RouterParams p;
  p.scoring = RouterScoring::kSigmoid;
  p.num_experts = experts;
  p.top_k = k;
  return p;
}

TEST(CpuRouterTest, SigmoidTopKRenormalisedAndScaled) {
  RouterParams p = Sigmoid(4, 2);
  p.routed_scaling_factor = 2.5f;
  const float logits[] = {Logit(0.2), Logit(0.9), Logit(0.6), Logit(0.1)};
  int32_t ids[2];
  float w[2];
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], 0.9 / 1.5 * 2.5, 1e-6);
  EXPECT_NEAR(w[1], 0.6 / 1.5 * 2.5, 1e-6);
  p.norm_topk_prob = false;
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_NEAR(w[0], 0.9 * 2.5, 1e-6);
  EXPECT_NEAR(w[1], 0.6 * 2.5, 1e-6);
}

TEST(CpuRouterTest, CorrectionBiasSelectsButDoesNotWeigh) {
  RouterParams p = Sigmoid(4, 2);
  const float logits[] = {Logit(0.2), Logit(0.9), Logit(0.6), Logit(0.1)};
  const float bias[] = {0.5f, 0.0f, 0.0f, 0.0f};  // expert 0 beats expert 2 only through bias
  int32_t ids[2];
  float w[2];
  RouteToken(logits, bias, p, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 1);
  // Weights from the unbiased scores 0.2 and 0.9.
  EXPECT_NEAR(w[0], 0.2 / 1.1, 1e-6);
  EXPECT_NEAR(w[1], 0.9 / 1.1, 1e-6);
}

TEST(CpuRouterTest, TiesGoToTheLowerExpertIndex) {
  RouterParams p = Sigmoid(6, 2);
  const float logits[] = {0.0f, 1.0f, 0.5f, 1.0f, 1.0f, 0.5f};
  int32_t ids[2];
  float w[2];
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], 0.5, 1e-6);
  EXPECT_NEAR(w[1], 0.5, 1e-6);
}

TEST(CpuRouterTest, GroupLimitedSelectionUsesSumOfTopTwo) {
  // 8 experts in 4 groups of 2, keep 2 groups, top-3.
  RouterParams p = Sigmoid(8, 3);
  p.n_group = 4;
  p.topk_group = 2;
  p.norm_topk_prob = false;
  // Group scores: g0 = 0.95 + 0.05 = 1.0, g1 = 0.6 + 0.6 = 1.2, g2 = 0.9 + 0.2 = 1.1,
  // g3 = 0.3 + 0.3 = 0.6. Kept: g1, g2. Expert 0 (0.95, the best single) is excluded.
  const double probs[] = {0.95, 0.05, 0.6, 0.6, 0.9, 0.2, 0.3, 0.3};
  float logits[8];
  for (int e = 0; e < 8; ++e) logits[e] = Logit(probs[e]);
  int32_t ids[3];
  float w[3];
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_EQ(ids[0], 2);
  EXPECT_EQ(ids[1], 3);
  EXPECT_EQ(ids[2], 4);
  EXPECT_NEAR(w[0], 0.6, 1e-6);
  EXPECT_NEAR(w[1], 0.6, 1e-6);
  EXPECT_NEAR(w[2], 0.9, 1e-6);
}

TEST(CpuRouterTest, MaskedGroupsScoreZeroLikeTransformers) {
  // Negative biased scores in the kept group lose to masked experts (masked to 0.0, as HF does).
  RouterParams p = Sigmoid(4, 2);
  p.n_group = 2;
  p.topk_group = 1;
  const float logits[] = {Logit(0.5), Logit(0.5), Logit(0.1), Logit(0.1)};
  const float bias[] = {-0.4f, -0.6f, -0.5f, -0.5f};
  // choice = {0.1, -0.1, -0.4, -0.4}; groups {0.0, -0.8} -> keep g0; masked {0.1, -0.1, 0, 0}.
  int32_t ids[2];
  float w[2];
  RouteToken(logits, bias, p, ids, w);
  EXPECT_EQ(ids[0], 0);
  EXPECT_EQ(ids[1], 2);
  EXPECT_NEAR(w[0], 0.5 / 0.6, 1e-6);
  EXPECT_NEAR(w[1], 0.1 / 0.6, 1e-6);
}

TEST(CpuRouterTest, SoftmaxScoringForQwen3Moe) {
  RouterParams p;
  p.scoring = RouterScoring::kSoftmax;
  p.num_experts = 4;
  p.top_k = 2;
  const float logits[] = {1.0f, 3.0f, 0.0f, 2.0f};
  double z = std::exp(1.0) + std::exp(3.0) + std::exp(0.0) + std::exp(2.0);
  int32_t ids[2];
  float w[2];
  p.norm_topk_prob = false;
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 3);
  EXPECT_NEAR(w[0], std::exp(3.0) / z, 1e-6);
  EXPECT_NEAR(w[1], std::exp(2.0) / z, 1e-6);
  p.norm_topk_prob = true;
  RouteToken(logits, nullptr, p, ids, w);
  EXPECT_NEAR(w[0], std::exp(3.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
  EXPECT_NEAR(w[1], std::exp(2.0) / (std::exp(3.0) + std::exp(2.0)), 1e-6);
}

}  // namespace
}  // namespace spark::engine
