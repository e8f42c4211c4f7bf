#include "tests/engine/cpu/test_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <numeric>

#include "common/check.h"

namespace spark::engine::testing {
namespace {

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t HashName(const std::string& name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 1099511628211ull;
  return h;
}

std::vector<float> MakeVector(uint64_t seed, const std::string& name, int64_t n, float center,
                              float spread) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = center + spread * HashUniform(seed, name, 0, i);
  return v;
}

void StoreElement(LinearWeight* w, int64_t index, float value) {
  std::byte* p = w->data.data() + index * static_cast<int64_t>(DTypeSize(w->dtype));
  switch (w->dtype) {
    case DType::kF32:
      std::memcpy(p, &value, 4);
      break;
    case DType::kBF16: {
      uint16_t b = FloatToBf16(value);
      std::memcpy(p, &b, 2);
      break;
    }
    case DType::kF16: {
      uint16_t b = FloatToF16(value);
      std::memcpy(p, &b, 2);
      break;
    }
    case DType::kF8E4M3:
      *p = static_cast<std::byte>(FloatToF8E4M3(value));
      break;
    default:
      SPARK_CHECK(false) << "dtype";
  }
}

}  // namespace

float HashUniform(uint64_t seed, const std::string& name, int64_t row, int64_t col) {
  uint64_t h = SplitMix64(seed ^ HashName(name));
  h = SplitMix64(h ^ static_cast<uint64_t>(row));
  h = SplitMix64(h ^ (static_cast<uint64_t>(col) * 0x2545f4914f6cdd1dull));
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

LinearWeight MakeLinear(uint64_t seed, const std::string& name, int64_t out, int64_t in,
                        const WeightFormat& format, bool bias) {
  LinearWeight w;
  w.dtype = format.dtype;
  w.out = out;
  w.in = in;
  w.data.resize(static_cast<size_t>(out * in) * DTypeSize(format.dtype));
  const float amp = std::sqrt(3.0f / static_cast<float>(in));
  std::vector<float> full(out * in);
  for (int64_t r = 0; r < out; ++r) {
    for (int64_t c = 0; c < in; ++c) full[r * in + c] = amp * HashUniform(seed, name, r, c);
  }
  if (format.dtype == DType::kF8E4M3) {
    w.scale_kind = format.scale_kind;
    SPARK_CHECK(w.scale_kind != ScaleKind::kNone) << "FP8 needs scales";
    const int64_t bn = w.scale_kind == ScaleKind::kBlock ? format.block : 1;
    const int64_t bk = w.scale_kind == ScaleKind::kBlock ? format.block : in;
    if (w.scale_kind == ScaleKind::kBlock) {
      w.block_n = format.block;
      w.block_k = format.block;
    }
    const int64_t nb = (out + bn - 1) / bn;
    const int64_t kb = (in + bk - 1) / bk;
    w.scale.resize(nb * kb);
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t j = 0; j < kb; ++j) {
        float amax = 0.0f;
        for (int64_t r = i * bn; r < std::min(out, (i + 1) * bn); ++r) {
          for (int64_t c = j * bk; c < std::min(in, (j + 1) * bk); ++c) {
            amax = std::max(amax, std::fabs(full[r * in + c]));
          }
        }
        const float s = amax == 0.0f ? 1.0f : amax / 448.0f;
        w.scale[i * kb + j] = s;
        for (int64_t r = i * bn; r < std::min(out, (i + 1) * bn); ++r) {
          for (int64_t c = j * bk; c < std::min(in, (j + 1) * bk); ++c) {
            StoreElement(&w, r * in + c, std::clamp(full[r * in + c] / s, -448.0f, 448.0f));
          }
        }
      }
    }
  } else {
    for (int64_t i = 0; i < out * in; ++i) StoreElement(&w, i, full[i]);
  }
  if (bias) w.bias = MakeVector(seed, name + ".bias", out, 0.0f, 0.02f * std::sqrt(3.0f));
  return w;
}

LinearWeight SliceRows(const LinearWeight& w, int64_t begin, int64_t count) {
  LinearWeight s = w;
  const size_t row_bytes = static_cast<size_t>(w.in) * DTypeSize(w.dtype);
  s.out = count;
  s.data.assign(w.data.begin() + begin * row_bytes, w.data.begin() + (begin + count) * row_bytes);
  if (!w.bias.empty()) s.bias.assign(w.bias.begin() + begin, w.bias.begin() + begin + count);
  if (w.scale_kind == ScaleKind::kPerChannel) {
    s.scale.assign(w.scale.begin() + begin, w.scale.begin() + begin + count);
  } else if (w.scale_kind == ScaleKind::kBlock) {
    SPARK_CHECK(begin % w.block_n == 0) << "row slice not block aligned";
    const int64_t kb = (w.in + w.block_k - 1) / w.block_k;
    const int64_t b0 = begin / w.block_n;
    const int64_t b1 = (begin + count + w.block_n - 1) / w.block_n;
    s.scale.assign(w.scale.begin() + b0 * kb, w.scale.begin() + b1 * kb);
  }
  return s;
}

LinearWeight SliceCols(const LinearWeight& w, int64_t begin, int64_t count) {
  SPARK_CHECK(w.bias.empty()) << "row-parallel weights have no bias";
  LinearWeight s = w;
  const size_t elem = DTypeSize(w.dtype);
  s.in = count;
  s.data.resize(static_cast<size_t>(w.out * count) * elem);
  for (int64_t r = 0; r < w.out; ++r) {
    std::memcpy(s.data.data() + r * count * elem, w.data.data() + (r * w.in + begin) * elem,
                count * elem);
  }
  if (w.scale_kind == ScaleKind::kBlock) {
    SPARK_CHECK(begin % w.block_k == 0) << "column slice not block aligned";
    const int64_t nb = (w.out + w.block_n - 1) / w.block_n;
    const int64_t kb = (w.in + w.block_k - 1) / w.block_k;
    const int64_t c0 = begin / w.block_k;
    const int64_t c1 = (begin + count + w.block_k - 1) / w.block_k;
    s.scale.clear();
    for (int64_t i = 0; i < nb; ++i) {
      for (int64_t j = c0; j < c1; ++j) s.scale.push_back(w.scale[i * kb + j]);
    }
  }
  return s;
}

ModelConfig TinyGlmConfig() {
  ModelConfig c;
  c.architecture = Architecture::kGlm4Moe;
  c.architecture_name = "Glm4MoeForCausalLM";
  c.vocab_size = 256;
  c.hidden_size = 128;
  c.intermediate_size = 256;
  c.moe_intermediate_size = 128;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 64;
  c.rope_theta = 1000000.0;
  c.partial_rotary_factor = 0.5;
  c.rotary_dim = 32;
  c.rms_norm_eps = 1e-5;
  c.max_position_embeddings = 4096;
  c.attention_bias = true;
  c.use_qk_norm = true;
  c.n_routed_experts = 8;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 2;
  c.first_k_dense_replace = 1;
  c.n_group = 1;
  c.topk_group = 1;
  c.routed_scaling_factor = 2.5;
  c.norm_topk_prob = true;
  c.router_scoring = RouterScoring::kSigmoid;
  c.router_correction_bias = true;
  return c;
}

ModelConfig TinyLlamaConfig() {
  ModelConfig c;
  c.architecture = Architecture::kLlama;
  c.architecture_name = "LlamaForCausalLM";
  c.vocab_size = 200;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 16;
  c.rope_theta = 500000.0;
  c.partial_rotary_factor = 1.0;
  c.rotary_dim = 16;
  c.rope_llama3_factor = 8.0;
  c.rope_llama3_low_freq_factor = 1.0;
  c.rope_llama3_high_freq_factor = 4.0;
  c.rope_llama3_original_max_position = 64;
  c.rms_norm_eps = 1e-6;
  c.max_position_embeddings = 4096;
  return c;
}

ModelConfig TinyQwen3Config() {
  ModelConfig c;
  c.architecture = Architecture::kQwen3;
  c.architecture_name = "Qwen3ForCausalLM";
  c.vocab_size = 150;
  c.hidden_size = 64;
  c.intermediate_size = 80;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 4;
  c.head_dim = 16;
  c.rope_theta = 1000000.0;
  c.rotary_dim = 16;
  c.rms_norm_eps = 1e-6;
  c.use_qk_norm = true;
  return c;
}

ModelConfig TinyQwen3MoeConfig() {
  ModelConfig c;
  c.architecture = Architecture::kQwen3Moe;
  c.architecture_name = "Qwen3MoeForCausalLM";
  c.vocab_size = 160;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.moe_intermediate_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.rope_theta = 1000000.0;
  c.rotary_dim = 32;
  c.rms_norm_eps = 1e-6;
  c.use_qk_norm = true;
  c.n_routed_experts = 8;
  c.num_experts_per_tok = 2;
  c.norm_topk_prob = true;
  c.router_scoring = RouterScoring::kSoftmax;
  c.decoder_sparse_step = 1;
  c.mlp_only_layers = {0};
  return c;
}

namespace {

struct Slicer {
  int rank;
  int tp;
  // Column-parallel: rows split evenly.
  LinearWeight Rows(const LinearWeight& w) const {
    return SliceRows(w, w.out / tp * rank, w.out / tp);
  }
  LinearWeight Cols(const LinearWeight& w) const {
    return SliceCols(w, w.in / tp * rank, w.in / tp);
  }
};

ExpertWeights MakeMlp(uint64_t seed, const std::string& p, int64_t hidden, int64_t inter,
                      const WeightFormat& f, const Slicer& s) {
  ExpertWeights m;
  m.gate = s.Rows(MakeLinear(seed, p + ".gate_proj", inter, hidden, f, false));
  m.up = s.Rows(MakeLinear(seed, p + ".up_proj", inter, hidden, f, false));
  m.down = s.Cols(MakeLinear(seed, p + ".down_proj", hidden, inter, f, false));
  return m;
}

}  // namespace

ModelWeights MakeTestWeights(const ModelConfig& c, const WeightFormat& format, uint64_t seed,
                             int tp_rank, int tp_size) {
  ModelWeights w;
  w.config = c;
  w.tp_rank = tp_rank;
  w.tp_size = tp_size;
  const Slicer s{tp_rank, tp_size};
  const WeightFormat plain{DType::kBF16, ScaleKind::kNone, 0};
  const int64_t H = c.hidden_size;
  const int64_t hd = c.head_dim;
  w.embed = MakeLinear(seed, "model.embed_tokens", c.vocab_size, H, plain, false);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l);
    LayerWeights L;
    L.input_norm = MakeVector(seed, p + ".input_layernorm", H, 1.0f, 0.17f);
    L.post_attn_norm = MakeVector(seed, p + ".post_attention_layernorm", H, 1.0f, 0.17f);
    L.q = s.Rows(MakeLinear(seed, p + ".q_proj", c.q_size(), H, format, c.attention_bias));
    LinearWeight k = MakeLinear(seed, p + ".k_proj", c.kv_size(), H, format, c.attention_bias);
    LinearWeight v = MakeLinear(seed, p + ".v_proj", c.kv_size(), H, format, c.attention_bias);
    if (tp_size <= c.num_key_value_heads) {
      L.k = s.Rows(k);
      L.v = s.Rows(v);
    } else {
      const int head = tp_rank / (tp_size / c.num_key_value_heads);
      L.k = SliceRows(k, head * hd, hd);
      L.v = SliceRows(v, head * hd, hd);
    }
    L.o = s.Cols(MakeLinear(seed, p + ".o_proj", H, c.q_size(), format, false));
    if (c.use_qk_norm) {
      L.q_norm = MakeVector(seed, p + ".q_norm", hd, 1.0f, 0.17f);
      L.k_norm = MakeVector(seed, p + ".k_norm", hd, 1.0f, 0.17f);
    }
    L.is_moe = c.IsMoeLayer(l);
    if (!L.is_moe) {
      L.mlp = MakeMlp(seed, p + ".mlp", H, c.intermediate_size, format, s);
    } else {
      const int64_t E = c.n_routed_experts;
      L.router.resize(E * H);
      const float amp = std::sqrt(3.0f / static_cast<float>(H));
      for (int64_t e = 0; e < E; ++e) {
        for (int64_t h = 0; h < H; ++h) {
          L.router[e * H + h] = amp * HashUniform(seed, p + ".mlp.gate", e, h);
        }
      }
      if (c.router_correction_bias) {
        L.router_bias = MakeVector(seed, p + ".mlp.gate.bias", E, 0.0f, 0.087f);
      }
      for (int64_t e = 0; e < E; ++e) {
        L.experts.push_back(MakeMlp(seed, p + ".mlp.experts." + std::to_string(e), H,
                                    c.moe_intermediate_size, format, s));
      }
      if (c.n_shared_experts > 0) {
        L.has_shared_expert = true;
        L.shared = MakeMlp(seed, p + ".mlp.shared_experts", H,
                           c.moe_intermediate_size * c.n_shared_experts, format, s);
      }
    }
    w.layers.push_back(std::move(L));
  }
  w.final_norm = MakeVector(seed, "model.norm", H, 1.0f, 0.17f);
  LinearWeight head = MakeLinear(seed, "lm_head", c.vocab_size, H, plain, false);
  const int64_t per = (c.vocab_size + tp_size - 1) / tp_size;
  w.vocab_begin = per * tp_rank;
  const int64_t count =
      std::max<int64_t>(0, std::min(c.vocab_size, w.vocab_begin + per) - w.vocab_begin);
  w.lm_head = SliceRows(head, w.vocab_begin, count);
  return w;
}

// ---- Naive double-precision reference ------------------------------------------------------

namespace {

using Mat = std::vector<double>;  // row-major

Mat LinearRef(const Mat& x, int64_t rows, const LinearWeight& w) {
  Mat y(rows * w.out);
  for (int64_t t = 0; t < rows; ++t) {
    for (int64_t n = 0; n < w.out; ++n) {
      double acc = w.bias.empty() ? 0.0 : w.bias[n];
      for (int64_t k = 0; k < w.in; ++k) acc += x[t * w.in + k] * w.At(n, k);
      y[t * w.out + n] = acc;
    }
  }
  return y;
}

void RmsRef(double* x, int64_t dim, const std::vector<float>& weight, double eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < dim; ++i) ss += x[i] * x[i];
  const double inv = 1.0 / std::sqrt(ss / static_cast<double>(dim) + eps);
  for (int64_t i = 0; i < dim; ++i) x[i] = weight[i] * (x[i] * inv);
}

Mat MlpRef(const Mat& x, int64_t rows, const ExpertWeights& m) {
  Mat g = LinearRef(x, rows, m.gate);
  Mat u = LinearRef(x, rows, m.up);
  for (size_t i = 0; i < g.size(); ++i) g[i] = g[i] / (1.0 + std::exp(-g[i])) * u[i];
  return LinearRef(g, rows, m.down);
}

std::vector<double> InvFreqRef(const ModelConfig& c) {
  const int rd = c.rotary_dim;
  std::vector<double> inv(rd / 2);
  for (int j = 0; j < rd / 2; ++j) inv[j] = 1.0 / std::pow(c.rope_theta, 2.0 * j / rd);
  if (c.rope_llama3_factor > 0) {
    const double factor = c.rope_llama3_factor;
    const double low = c.rope_llama3_low_freq_factor;
    const double high = c.rope_llama3_high_freq_factor;
    const double old_len = static_cast<double>(c.rope_llama3_original_max_position);
    for (double& f : inv) {
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen < old_len / high) continue;  // high frequency: unchanged
      if (wavelen > old_len / low) {           // low frequency: divided
        f /= factor;
        continue;
      }
      const double smooth = (old_len / wavelen - low) / (high - low);
      f = (1.0 - smooth) * f / factor + smooth * f;
    }
  }
  return inv;
}

void RopeRef(double* x, int heads, int hd, int rd, int64_t pos, const std::vector<double>& inv) {
  const int half = rd / 2;
  for (int h = 0; h < heads; ++h) {
    double* v = x + h * hd;
    for (int j = 0; j < half; ++j) {
      const double a = pos * inv[j];
      const double x1 = v[j];
      const double x2 = v[j + half];
      v[j] = x1 * std::cos(a) - x2 * std::sin(a);
      v[j + half] = x2 * std::cos(a) + x1 * std::sin(a);
    }
  }
}

// Indices of the k largest, ties to the lower index.
std::vector<int> TopKRef(const std::vector<double>& v, int k) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[a] > v[b]; });
  idx.resize(k);
  return idx;
}

Mat MoeRef(const Mat& x, int64_t rows, const LayerWeights& L, const ModelConfig& c) {
  const int64_t H = c.hidden_size;
  const int E = c.n_routed_experts;
  Mat out(rows * H, 0.0);
  for (int64_t t = 0; t < rows; ++t) {
    std::vector<double> scores(E);
    for (int e = 0; e < E; ++e) {
      double logit = 0.0;
      for (int64_t h = 0; h < H; ++h) logit += x[t * H + h] * L.router[e * H + h];
      scores[e] = logit;
    }
    if (c.router_scoring == RouterScoring::kSigmoid) {
      for (double& s : scores) s = 1.0 / (1.0 + std::exp(-s));
    } else {
      const double mx = *std::max_element(scores.begin(), scores.end());
      double sum = 0.0;
      for (double& s : scores) sum += (s = std::exp(s - mx));
      for (double& s : scores) s /= sum;
    }
    std::vector<double> choice = scores;
    if (!L.router_bias.empty()) {
      for (int e = 0; e < E; ++e) choice[e] += L.router_bias[e];
    }
    if (c.n_group > 1) {
      const int per = E / c.n_group;
      std::vector<double> gs(c.n_group);
      for (int g = 0; g < c.n_group; ++g) {
        std::vector<double> part(choice.begin() + g * per, choice.begin() + (g + 1) * per);
        std::vector<int> top = TopKRef(part, std::min(2, per));
        for (int i : top) gs[g] += part[i];
      }
      std::vector<int> keep = TopKRef(gs, c.topk_group);
      for (int e = 0; e < E; ++e) {
        if (std::find(keep.begin(), keep.end(), e / per) == keep.end()) choice[e] = 0.0;
      }
    }
    std::vector<int> top = TopKRef(choice, c.num_experts_per_tok);
    std::sort(top.begin(), top.end());
    double sum = 0.0;
    for (int e : top) sum += scores[e];
    Mat xt(x.begin() + t * H, x.begin() + (t + 1) * H);
    for (int e : top) {
      double weight = scores[e];
      if (c.norm_topk_prob) weight /= sum + 1e-20;
      weight *= c.routed_scaling_factor;
      Mat y = MlpRef(xt, 1, L.experts[e]);
      for (int64_t h = 0; h < H; ++h) out[t * H + h] += weight * y[h];
    }
  }
  if (L.has_shared_expert) {
    Mat sh = MlpRef(x, rows, L.shared);
    for (size_t i = 0; i < out.size(); ++i) out[i] += sh[i];
  }
  return out;
}

}  // namespace

std::vector<double> ReferenceLogits(const ModelWeights& full, const std::vector<int32_t>& tokens) {
  SPARK_CHECK(full.tp_size == 1) << "reference needs full weights";
  const ModelConfig& c = full.config;
  const int64_t T = static_cast<int64_t>(tokens.size());
  const int64_t H = c.hidden_size;
  const int hd = c.head_dim;
  const int nh = c.num_attention_heads;
  const int nkv = c.num_key_value_heads;
  const double eps = c.rms_norm_eps;
  const std::vector<double> inv = InvFreqRef(c);
  Mat x(T * H);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h) x[t * H + h] = full.embed.At(tokens[t], h);
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerWeights& L = full.layers[l];
    Mat h = x;
    for (int64_t t = 0; t < T; ++t) RmsRef(&h[t * H], H, L.input_norm, eps);
    Mat q = LinearRef(h, T, L.q);
    Mat k = LinearRef(h, T, L.k);
    Mat v = LinearRef(h, T, L.v);
    for (int64_t t = 0; t < T; ++t) {
      if (c.use_qk_norm) {
        for (int i = 0; i < nh; ++i) RmsRef(&q[(t * nh + i) * hd], hd, L.q_norm, eps);
        for (int i = 0; i < nkv; ++i) RmsRef(&k[(t * nkv + i) * hd], hd, L.k_norm, eps);
      }
      RopeRef(&q[t * nh * hd], nh, hd, c.rotary_dim, t, inv);
      RopeRef(&k[t * nkv * hd], nkv, hd, c.rotary_dim, t, inv);
    }
    Mat attn(T * nh * hd, 0.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
    for (int64_t t = 0; t < T; ++t) {
      for (int i = 0; i < nh; ++i) {
        const int j = i / (nh / nkv);
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int64_t u = 0; u <= t; ++u) {
          double d = 0.0;
          for (int e = 0; e < hd; ++e) d += q[(t * nh + i) * hd + e] * k[(u * nkv + j) * hd + e];
          s[u] = d * scale;
          mx = std::max(mx, s[u]);
        }
        double sum = 0.0;
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int64_t u = 0; u <= t; ++u) {
          for (int e = 0; e < hd; ++e) {
            attn[(t * nh + i) * hd + e] += s[u] / sum * v[(u * nkv + j) * hd + e];
          }
        }
      }
    }
    Mat o = LinearRef(attn, T, L.o);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];
    h = x;
    for (int64_t t = 0; t < T; ++t) RmsRef(&h[t * H], H, L.post_attn_norm, eps);
    Mat m = L.is_moe ? MoeRef(h, T, L, c) : MlpRef(h, T, L.mlp);
    for (size_t i = 0; i < x.size(); ++i) x[i] += m[i];
  }
  for (int64_t t = 0; t < T; ++t) RmsRef(&x[t * H], H, full.final_norm, eps);
  return LinearRef(x, T, full.lm_head);
}

}  // namespace spark::engine::testing
