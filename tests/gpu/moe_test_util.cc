#include "tests/gpu/moe_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <span>

#include "engine/cpu/kernels.h"
#include "engine/model/dtype.h"
#include "engine/model/quantize.h"

namespace spark::cuda::testing {
namespace {

using engine::DType;
using engine::LinearWeight;

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [-1, 1).
float Uniform(uint64_t& s) {
  return static_cast<float>(static_cast<double>(SplitMix(s) >> 11) * 0x1.0p-52 - 1.0);
}

LinearWeight MakeLinear(int64_t out, int64_t in, MoeWeightFormat format, uint64_t seed) {
  std::vector<float> w(static_cast<size_t>(out * in));
  const float amp = std::sqrt(3.0f / static_cast<float>(in));
  uint64_t s = seed;
  for (float& v : w) v = Uniform(s) * amp;
  LinearWeight lw;
  lw.out = out;
  lw.in = in;
  if (format == MoeWeightFormat::kBf16) {
    lw.dtype = DType::kBF16;
    lw.data.resize(w.size() * 2);
    for (size_t i = 0; i < w.size(); ++i) {
      const uint16_t b = engine::FloatToBf16(w[i]);
      std::memcpy(lw.data.data() + i * 2, &b, 2);
    }
    return lw;
  }
  const bool block = format == MoeWeightFormat::kFp8Block;
  engine::Fp8Tensor q = block ? engine::QuantizeFp8Block(w, out, in, 128, 128)
                              : engine::QuantizeFp8PerChannel(w, out, in);
  lw.dtype = DType::kF8E4M3;
  lw.data.resize(q.q.size());
  std::memcpy(lw.data.data(), q.q.data(), q.q.size());
  lw.scale = std::move(q.scale);
  lw.scale_kind = block ? engine::ScaleKind::kBlock : engine::ScaleKind::kPerChannel;
  if (block) {
    lw.block_n = 128;
    lw.block_k = 128;
  }
  return lw;
}

float RoundBf16(float v) { return engine::Bf16ToFloat(engine::FloatToBf16(v)); }

// The GPU's FP8 activation quantisation, dequantised: groups of `group` (0 = whole row).
void QuantDequantRow(float* v, int64_t n, int group) {
  const int64_t g = group == 0 ? n : group;
  for (int64_t b = 0; b < n; b += g) {
    float amax = 0.f;
    for (int64_t i = b; i < b + g; ++i) amax = std::max(amax, std::fabs(v[i]));
    const float scale = std::max(amax, 1e-10f) / 448.0f;
    for (int64_t i = b; i < b + g; ++i)
      v[i] = engine::F8E4M3ToFloat(engine::FloatToF8E4M3(v[i] / scale)) * scale;
  }
}

}  // namespace

engine::ModelConfig MoeTestConfig(const MoeTestShape& shape) {
  engine::ModelConfig c;
  c.hidden_size = shape.hidden;
  c.moe_intermediate_size = shape.inter;
  c.n_routed_experts = shape.experts;
  c.num_experts_per_tok = shape.top_k;
  c.n_group = shape.n_group;
  c.topk_group = shape.topk_group;
  c.routed_scaling_factor = shape.scaling;
  c.norm_topk_prob = true;
  c.router_scoring = engine::RouterScoring::kSigmoid;
  c.router_correction_bias = true;
  return c;
}

engine::LayerWeights MakeMoeTestLayer(const MoeTestShape& shape, MoeWeightFormat format,
                                      uint64_t seed, engine::ThreadPool* pool) {
  engine::LayerWeights layer;
  layer.is_moe = true;
  const int64_t e_count = shape.experts, h = shape.hidden, im = shape.inter;
  layer.router.resize(e_count * h);
  uint64_t s = seed * 7919 + 1;
  const float router_amp = 4.0f / std::sqrt(static_cast<float>(h));
  for (float& v : layer.router) v = Uniform(s) * router_amp;
  layer.router_bias.resize(e_count);
  for (float& v : layer.router_bias) v = Uniform(s) * 0.05f;
  layer.experts.resize(e_count);
  pool->ParallelFor(e_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) {
      const uint64_t base = seed * 1000003 + static_cast<uint64_t>(e) * 3;
      layer.experts[e].gate = MakeLinear(im, h, format, base);
      layer.experts[e].up = MakeLinear(im, h, format, base + 1);
      layer.experts[e].down = MakeLinear(h, im, format, base + 2);
    }
  });
  return layer;
}

std::vector<uint16_t> MakeMoeTestInput(int64_t tokens, int hidden, uint64_t seed) {
  std::vector<uint16_t> x(static_cast<size_t>(tokens * hidden));
  uint64_t s = seed * 104729 + 5;
  for (uint16_t& v : x) v = engine::FloatToBf16(Uniform(s) * 2.0f);
  return x;
}

MoeReference ComputeMoeReference(const engine::ModelConfig& config,
                                 const engine::LayerWeights& layer, MoeWeightFormat format,
                                 const std::vector<uint16_t>& x, const std::vector<int64_t>& rows,
                                 engine::ThreadPool* pool) {
  const int64_t h = config.hidden_size;
  const int64_t s_count = static_cast<int64_t>(rows.size());
  const engine::RouterParams params = engine::RouterParams::FromConfig(config);
  const int k = params.top_k;
  const int64_t im = layer.experts[0].gate.out;
  MoeReference ref;
  std::vector<float> xs(s_count * h);
  for (int64_t i = 0; i < s_count; ++i)
    for (int64_t j = 0; j < h; ++j) xs[i * h + j] = engine::Bf16ToFloat(x[rows[i] * h + j]);
  std::vector<float> logits(s_count * params.num_experts);
  engine::LinearF32(xs.data(), s_count, layer.router.data(), params.num_experts, h, logits.data(),
                    pool);
  ref.ids.resize(s_count * k);
  ref.weights.resize(s_count * k);
  for (int64_t i = 0; i < s_count; ++i) {
    engine::RouteToken(logits.data() + i * params.num_experts, layer.router_bias.data(), params,
                       ref.ids.data() + i * k, ref.weights.data() + i * k);
  }
  const bool fp8 = format != MoeWeightFormat::kBf16;
  const int group = format == MoeWeightFormat::kFp8Block ? 128 : 0;
  std::vector<float> xq = xs;
  if (fp8) {
    for (int64_t i = 0; i < s_count; ++i) QuantDequantRow(xq.data() + i * h, h, group);
  }
  ref.plain.assign(s_count * h, 0.f);
  ref.mirror.assign(s_count * h, 0.f);
  ref.mirror_gemv.assign(s_count * h, 0.f);
  for (int e = 0; e < params.num_experts; ++e) {
    std::vector<std::pair<int64_t, float>> list;  // (row in subset, weight)
    for (int64_t i = 0; i < s_count; ++i)
      for (int j = 0; j < k; ++j)
        if (ref.ids[i * k + j] == e) list.emplace_back(i, ref.weights[i * k + j]);
    if (list.empty()) continue;
    const int64_t m = static_cast<int64_t>(list.size());
    const engine::ExpertWeights& w = layer.experts[e];
    for (int variant = 0; variant < 3; ++variant) {  // 0 plain, 1 mirror, 2 mirror_gemv
      const std::vector<float>& src = variant == 1 ? xq : xs;
      std::vector<float> in(m * h), g(m * im), u(m * im), y(m * h);
      for (int64_t r = 0; r < m; ++r)
        std::copy_n(src.data() + list[r].first * h, h, in.data() + r * h);
      engine::Linear(in.data(), m, w.gate, g.data(), pool);
      engine::Linear(in.data(), m, w.up, u.data(), pool);
      engine::SiluMul(g.data(), u.data(), m * im, g.data());
      if (variant > 0) {
        for (float& v : g) v = RoundBf16(v);
        if (fp8 && variant == 1) {
          for (int64_t r = 0; r < m; ++r) QuantDequantRow(g.data() + r * im, im, group);
        }
      }
      engine::Linear(g.data(), m, w.down, y.data(), pool);
      std::vector<float>& out = variant == 0   ? ref.plain
                                : variant == 1 ? ref.mirror
                                               : ref.mirror_gemv;
      for (int64_t r = 0; r < m; ++r) {
        float* dst = out.data() + list[r].first * h;
        for (int64_t j = 0; j < h; ++j) dst[j] += y[r * h + j] * list[r].second;
      }
    }
  }
  return ref;
}

float RowRelError(const float* a, const float* b, int64_t n) {
  float err = 0.f, mag = 0.f;
  for (int64_t i = 0; i < n; ++i) {
    err = std::max(err, std::fabs(a[i] - b[i]));
    mag = std::max(mag, std::fabs(b[i]));
  }
  return err / std::max(mag, 1e-6f);
}

}  // namespace spark::cuda::testing
