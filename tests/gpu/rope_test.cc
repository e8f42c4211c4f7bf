// Attention input preparation (q/k/v bias, per-head q/k RMSNorm, partial NeoX RoPE, paged KV
// write) on the GPU against the CPU backend's RmsNorm and RotaryEmbedding (engine/cpu/kernels.h):
// GLM-4.5-Air (no qk norm), GLM-4.7 per TP size (qk norm), a Llama-3 scaled full rotation and a
// tiny head_dim; positions up to 200k. Outputs are BF16: tolerance 1e-2 * max(1, |ref|). With
// an FP8 E4M3 cache, K and V are the reference rounded to nearest even (at most one step off
// where the GPU's fp32 lands across a rounding boundary) and saturated at 448.
#include "engine/cuda/rope.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/model/config.h"
#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

struct RopeCase {
  const char* name;
  int q_heads, kv_heads, head_dim;
  double partial;
  bool qk_norm, bias;
  double llama3_factor;
};

TEST(QkvRopeTest, MatchesCpuNormAndRotary) {
  const RopeCase cases[] = {
      {"air_tp1", 96, 8, 128, 0.5, false, true, 0.0},
      {"glm47_tp8", 12, 1, 128, 0.5, true, true, 0.0},
      {"glm47_tp4", 24, 2, 128, 0.5, true, true, 0.0},
      {"llama3_full", 8, 2, 64, 1.0, false, false, 8.0},
      {"tiny_quarter", 8, 4, 16, 0.25, true, false, 0.0},
  };
  const std::vector<int32_t> positions = {0, 1, 7, 1000, 131071, 202751, 5};
  const int tokens = static_cast<int>(positions.size());
  for (const RopeCase& c : cases) {
    engine::ModelConfig cfg;
    cfg.head_dim = c.head_dim;
    cfg.partial_rotary_factor = c.partial;
    cfg.rotary_dim = static_cast<int>(c.head_dim * c.partial);
    cfg.rope_theta = 1e6;
    cfg.rope_llama3_factor = c.llama3_factor;
    engine::RotaryEmbedding rope(cfg);
    const int hd = c.head_dim;
    const int heads = c.q_heads + 2 * c.kv_heads;
    std::mt19937 rng(hd + heads);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<float> qkv(static_cast<size_t>(tokens) * heads * hd);
    for (float& v : qkv) v = dist(rng);
    // One value beyond the FP8 range (the last token's first V element): saturates at 448.
    const size_t big = (static_cast<size_t>(tokens - 1) * heads + c.q_heads + c.kv_heads) * hd;
    qkv[big] = 5000.f;
    std::vector<float> bias(static_cast<size_t>(heads) * hd), qn(hd), kn(hd);
    for (float& v : bias) v = 0.1f * dist(rng);
    for (float& v : qn) v = 1.f + 0.1f * dist(rng);
    for (float& v : kn) v = 1.f + 0.1f * dist(rng);

    // CPU reference.
    std::vector<float> want = qkv;
    for (int t = 0; t < tokens; ++t) {
      float* row = want.data() + static_cast<size_t>(t) * heads * hd;
      if (c.bias) {
        for (int i = 0; i < heads * hd; ++i) row[i] += bias[static_cast<size_t>(i)];
      }
      if (c.qk_norm) {
        engine::RmsNorm(row, c.q_heads, hd, qn.data(), 1e-5f, row);
        engine::RmsNorm(row + c.q_heads * hd, c.kv_heads, hd, kn.data(), 1e-5f,
                        row + c.q_heads * hd);
      }
      rope.Apply(row, c.q_heads + c.kv_heads, positions[static_cast<size_t>(t)]);
    }

    const int bt = 16;
    const int blocks = 8;
    std::vector<int64_t> slots(static_cast<size_t>(tokens));
    for (int t = 0; t < tokens; ++t) slots[static_cast<size_t>(t)] = (t * 37 + 5) % (blocks * bt);
    DeviceBuffer<float> dqkv(qkv), dbias(bias), dqn(qn), dkn(kn);
    DeviceBuffer<float> dfreq(rope.inv_freq().empty() ? std::vector<float>{0.f} : rope.inv_freq());
    DeviceBuffer<int32_t> dpos(positions);
    DeviceBuffer<int64_t> dslots(slots);
    DeviceBuffer<__nv_bfloat16> dq(int64_t{tokens} * c.q_heads * hd);
    DeviceBuffer<__nv_bfloat16> dk(int64_t{blocks} * c.kv_heads * bt * hd);
    DeviceBuffer<__nv_bfloat16> dv(int64_t{blocks} * c.kv_heads * bt * hd);
    QkvRopeParams p;
    p.q_heads = c.q_heads;
    p.kv_heads = c.kv_heads;
    p.head_dim = hd;
    p.rotary_dim = rope.rotary_dim();
    p.inv_freq = dfreq.get();
    if (c.bias) {
      p.q_bias = dbias.get();
      p.k_bias = dbias.get() + c.q_heads * hd;
      p.v_bias = dbias.get() + (c.q_heads + c.kv_heads) * hd;
    }
    if (c.qk_norm) {
      p.q_norm = dqn.get();
      p.k_norm = dkn.get();
    }
    p.eps = 1e-5f;
    p.block_tokens = bt;
    ASSERT_EQ(QkvRopeCacheWrite(dqkv.get(), tokens, dpos.get(), dslots.get(), p, dq.get(), dk.get(),
                                dv.get(), nullptr),
              cudaSuccess);
    std::vector<__nv_bfloat16> q = dq.Download(), k = dk.Download(), v = dv.Download();
    double worst = 0;
    for (int t = 0; t < tokens; ++t) {
      const float* row = want.data() + static_cast<size_t>(t) * heads * hd;
      const int64_t slot = slots[static_cast<size_t>(t)];
      for (int h = 0; h < heads; ++h) {
        for (int d = 0; d < hd; ++d) {
          float got;
          if (h < c.q_heads) {
            got = __bfloat162float(q[(static_cast<size_t>(t) * c.q_heads + h) * hd + d]);
          } else {
            const int g = h < c.q_heads + c.kv_heads ? h - c.q_heads : h - c.q_heads - c.kv_heads;
            const auto& cache = h < c.q_heads + c.kv_heads ? k : v;
            got = __bfloat162float(cache[((slot / bt * c.kv_heads + g) * bt + slot % bt) * hd + d]);
          }
          const float ref = row[h * hd + d];
          const double err = std::fabs(got - ref) / std::max(1.0, std::fabs(double(ref)));
          worst = std::max(worst, err);
        }
      }
    }
    std::printf("[rope] %-14s max rel err %.3g\n", c.name, worst);
    EXPECT_LE(worst, 1e-2) << c.name;

    // The same write into an FP8 E4M3 cache.
    DeviceBuffer<__nv_fp8_e4m3> dk8(int64_t{blocks} * c.kv_heads * bt * hd);
    DeviceBuffer<__nv_fp8_e4m3> dv8(int64_t{blocks} * c.kv_heads * bt * hd);
    p.cache_dtype = KvCacheDtype::kFp8E4m3;
    ASSERT_EQ(QkvRopeCacheWrite(dqkv.get(), tokens, dpos.get(), dslots.get(), p, dq.get(),
                                dk8.get(), dv8.get(), nullptr),
              cudaSuccess);
    std::vector<__nv_fp8_e4m3> k8 = dk8.Download(), v8 = dv8.Download();
    int64_t exact = 0, total = 0;
    double worst8 = 0;
    for (int t = 0; t < tokens; ++t) {
      const float* row = want.data() + static_cast<size_t>(t) * heads * hd;
      const int64_t slot = slots[static_cast<size_t>(t)];
      for (int h = c.q_heads; h < heads; ++h) {
        const bool is_k = h < c.q_heads + c.kv_heads;
        const int g = is_k ? h - c.q_heads : h - c.q_heads - c.kv_heads;
        for (int d = 0; d < hd; ++d) {
          const auto& cache = is_k ? k8 : v8;
          const float got =
              static_cast<float>(cache[((slot / bt * c.kv_heads + g) * bt + slot % bt) * hd + d]);
          const float ref = row[h * hd + d];
          const float rounded = static_cast<float>(__nv_fp8_e4m3(ref));
          exact += got == rounded;
          ++total;
          // One E4M3 step is 1/8 of the value's power of two: within 1.5 steps of the reference.
          if (std::fabs(ref) > 448.f) continue;  // saturated: checked below
          const double step = std::ldexp(1.0, std::max(-6, std::ilogb(std::fabs(ref) + 1e-30)) - 3);
          worst8 = std::max(worst8, std::fabs(got - ref) / step);
        }
      }
    }
    const float saturated = static_cast<float>(v8[static_cast<size_t>(
        ((slots.back() / bt * c.kv_heads + 0) * bt + slots.back() % bt) * hd)]);
    std::printf(
        "[rope] %-14s fp8 cache: %lld / %lld equal to the rounded reference, worst %.2f "
        "steps, saturated %g\n",
        c.name, static_cast<long long>(exact), static_cast<long long>(total), worst8, saturated);
    EXPECT_GE(exact, total * 99 / 100) << c.name;
    EXPECT_LE(worst8, 1.5) << c.name;
    EXPECT_EQ(saturated, 448.f) << c.name;
  }
}

}  // namespace
}  // namespace spark::cuda
