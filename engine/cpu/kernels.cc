#include "engine/cpu/kernels.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <string>

#include "common/check.h"
#include "engine/cpu/thread_pool.h"
#include "engine/model/dtype.h"

namespace spark::engine {
namespace {

// Work (multiply-adds) below which a parallel chunk is not worth a thread hand-off.
constexpr int64_t kMinChunkWork = 1 << 16;
// Rows of W dequantised together, and rows of x per GEMM job.
constexpr int64_t kTileN = 16;
constexpr int64_t kBlockM = 32;

std::array<float, 256> MakeFp8Table() {
  std::array<float, 256> table{};
  for (int v = 0; v < 256; ++v) {
    const int sign = v >> 7;
    const int exp = (v >> 3) & 0xf;
    const int mant = v & 7;
    float f;
    if (exp == 15 && mant == 7) {
      f = std::numeric_limits<float>::quiet_NaN();
    } else if (exp == 0) {
      f = std::ldexp(static_cast<float>(mant), -9);  // subnormal: mant/8 * 2^-6
    } else {
      f = std::ldexp(1.0f + static_cast<float>(mant) / 8.0f, exp - 7);
    }
    table[v] = sign ? -f : f;
  }
  return table;
}

const std::array<float, 256>& Fp8Table() {
  static const std::array<float, 256> table = MakeFp8Table();
  return table;
}

// Four-lane fp32 vectors (GCC/Clang vector extension: SSE on x86-64, NEON on arm64).
typedef float V4 __attribute__((vector_size(16)));

inline V4 Load4(const float* p) {
  V4 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline V4 LoadTail(const float* p, int64_t count) {
  V4 v = {0.0f, 0.0f, 0.0f, 0.0f};
  std::memcpy(&v, p, static_cast<size_t>(count) * sizeof(float));
  return v;
}

typedef uint32_t U4 __attribute__((vector_size(16)));
typedef int32_t I4 __attribute__((vector_size(16)));
typedef uint8_t B4 __attribute__((vector_size(4)));

// out[i] = e4m3(src[i]) * scale, exactly (the e4m3 value is exact in fp32; one fp32 product).
// Four codes at a time with bit manipulation (vector casts reinterpret bits): normal codes map to
// (em << 20) + (120 << 23) (exponent rebias 7 -> 127), subnormals (exponent 0) to em * 2^-9, 0x7f /
// 0xff to NaN.
inline V4 Fp8x4ToFloat(U4 v, float scale) {
  const U4 em = v & 0x7fu;
  const U4 normal = (em << 20) + (120u << 23);
  const V4 sub_f = __builtin_convertvector((I4)em, V4) * 0x1p-9f;
  const U4 sub = (U4)sub_f;
  const U4 is_sub = (U4)(em < 8u);
  const U4 is_nan = (U4)(em == 0x7fu);
  U4 mag = (sub & is_sub) | (normal & ~is_sub);
  mag = (mag & ~is_nan) | (0x7fc00000u & is_nan);
  const U4 bits = mag | ((v & 0x80u) << 24);
  return (V4)bits * scale;
}

inline void Fp8RowToFloat(const uint8_t* src, int64_t n, float scale, float* out) {
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    B4 bytes;
    std::memcpy(&bytes, src + i, sizeof(bytes));
    const V4 f = Fp8x4ToFloat(__builtin_convertvector(bytes, U4), scale);
    std::memcpy(out + i, &f, sizeof(f));
  }
  const float* table = Fp8Table().data();
  for (; i < n; ++i) out[i] = table[src[i]] * scale;
}

inline float Sum4(V4 v) { return (v[0] + v[1]) + (v[2] + v[3]); }

// c[i * ldc + j] = dot(a row i, b row j) over n, for MR x NR rows. Every dot product uses the
// same lane assignment (element k goes to lane k % 4) and final reduction whatever MR and NR
// are, so a result never depends on how rows were grouped.
template <int MR, int NR>
inline void MicroKernel(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t n,
                        float* c, int64_t ldc) {
  V4 acc[MR][NR] = {};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    V4 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = Load4(b + j * ldb + k);
    for (int i = 0; i < MR; ++i) {
      const V4 av = Load4(a + i * lda + k);
      for (int j = 0; j < NR; ++j) acc[i][j] += av * bv[j];
    }
  }
  if (k < n) {
    const int64_t rem = n - k;
    V4 bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = LoadTail(b + j * ldb + k, rem);
    for (int i = 0; i < MR; ++i) {
      const V4 av = LoadTail(a + i * lda + k, rem);
      for (int j = 0; j < NR; ++j) acc[i][j] += av * bv[j];
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = Sum4(acc[i][j]);
  }
}

// c[i, j] = a[i] . b[j] for i < m, j < n (row-major, leading dims lda / ldb / ldc).
void DotBlock(const float* a, int64_t lda, int64_t m, const float* b, int64_t ldb, int64_t n,
              int64_t k, float* c, int64_t ldc) {
  int64_t i = 0;
  for (; i + 2 <= m; i += 2) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      MicroKernel<2, 4>(a + i * lda, lda, b + j * ldb, ldb, k, c + i * ldc + j, ldc);
    }
    for (; j < n; ++j)
      MicroKernel<2, 1>(a + i * lda, lda, b + j * ldb, ldb, k, c + i * ldc + j, ldc);
  }
  for (; i < m; ++i) {
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      MicroKernel<1, 4>(a + i * lda, lda, b + j * ldb, ldb, k, c + i * ldc + j, ldc);
    }
    for (; j < n; ++j)
      MicroKernel<1, 1>(a + i * lda, lda, b + j * ldb, ldb, k, c + i * ldc + j, ldc);
  }
}

void ParallelOrInline(ThreadPool* pool, int64_t n, int64_t grain,
                      const std::function<void(int64_t, int64_t)>& fn) {
  if (pool == nullptr) {
    if (n > 0) fn(0, n);
  } else {
    pool->ParallelFor(n, grain, fn);
  }
}

// y rows [m_begin, m_end) for W rows [n_begin, n_begin + rows), W tile already in fp32.
void GemmTile(const float* x, int64_t m_begin, int64_t m_end, int64_t k, const float* tile,
              int64_t n_begin, int64_t rows, int64_t n_total, const float* bias, float* y) {
  DotBlock(x + m_begin * k, k, m_end - m_begin, tile, k, rows, k, y + m_begin * n_total + n_begin,
           n_total);
  if (bias != nullptr) {
    for (int64_t i = m_begin; i < m_end; ++i) {
      float* yi = y + i * n_total + n_begin;
      for (int64_t r = 0; r < rows; ++r) yi[r] += bias[n_begin + r];
    }
  }
}

}  // namespace

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

float Fp8E4M3ToFloatExact(uint8_t bits) { return Fp8Table()[bits]; }

void DequantizeTile(const LinearWeight& w, int64_t row_begin, int64_t rows, int64_t col_begin,
                    int64_t cols, float* out, int64_t ld) {
  const std::byte* base = w.data.data();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row = row_begin + r;
    float* o = out + r * ld;
    const int64_t offset = row * w.in + col_begin;
    switch (w.dtype) {
      case DType::kF32:
        std::memcpy(o, base + offset * 4, static_cast<size_t>(cols) * 4);
        break;
      case DType::kBF16: {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + offset;
        for (int64_t c = 0; c < cols; ++c) {
          const uint32_t bits = static_cast<uint32_t>(src[c]) << 16;
          std::memcpy(o + c, &bits, 4);
        }
        break;
      }
      case DType::kF16: {
        const uint16_t* src = reinterpret_cast<const uint16_t*>(base) + offset;
        for (int64_t c = 0; c < cols; ++c) o[c] = HalfToFloat(src[c]);
        break;
      }
      case DType::kF8E4M3: {
        const uint8_t* src = reinterpret_cast<const uint8_t*>(base) + offset;
        const float* table = Fp8Table().data();
        if (w.scale_kind == ScaleKind::kBlock) {
          const int64_t k_blocks = (w.in + w.block_k - 1) / w.block_k;
          const float* srow = w.scale.data() + (row / w.block_n) * k_blocks;
          int64_t c = 0;
          while (c < cols) {
            const int64_t col = col_begin + c;
            const int64_t kb = col / w.block_k;
            const int64_t seg_end = std::min(cols, (kb + 1) * w.block_k - col_begin);
            const float s = srow[kb];
            Fp8RowToFloat(src + c, seg_end - c, s, o + c);
            c = seg_end;
          }
        } else if (w.scale_kind == ScaleKind::kPerChannel) {
          Fp8RowToFloat(src, cols, w.scale[row], o);
        } else {
          for (int64_t c = 0; c < cols; ++c) o[c] = table[src[c]];
        }
        break;
      }
      case DType::kI64:
      case DType::kI32:
      case DType::kU8:
      case DType::kBool:
        SPARK_CHECK(false) << "linear weight of dtype " << DTypeName(w.dtype);
    }
  }
}

float Dot(const float* a, const float* b, int64_t n) {
  float c;
  MicroKernel<1, 1>(a, 0, b, 0, n, &c, 1);
  return c;
}

void Linear(const float* x, int64_t m, const LinearWeight& w, float* y, ThreadPool* pool) {
  if (m <= 0) return;
  const int64_t n = w.out;
  const int64_t k = w.in;
  const int64_t n_tiles = (n + kTileN - 1) / kTileN;
  const int64_t m_blocks = (m + kBlockM - 1) / kBlockM;
  const int64_t job_work = kTileN * k * std::min(m, kBlockM);
  const int64_t grain = std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, job_work));
  const float* bias = w.bias.empty() ? nullptr : w.bias.data();
  ParallelOrInline(pool, n_tiles * m_blocks, grain, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> tile;
    tile.resize(static_cast<size_t>(kTileN * k));
    int64_t loaded = -1;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t nt = job / m_blocks;
      const int64_t mb = job % m_blocks;
      const int64_t n_begin = nt * kTileN;
      const int64_t rows = std::min(kTileN, n - n_begin);
      if (nt != loaded) {
        DequantizeTile(w, n_begin, rows, 0, k, tile.data(), k);
        loaded = nt;
      }
      GemmTile(x, mb * kBlockM, std::min(m, (mb + 1) * kBlockM), k, tile.data(), n_begin, rows, n,
               bias, y);
    }
  });
}

void LinearF32(const float* x, int64_t m, const float* w, int64_t n, int64_t k, float* y,
               ThreadPool* pool) {
  if (m <= 0) return;
  const int64_t grain = std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, n * k));
  ParallelOrInline(pool, m, grain, [&](int64_t begin, int64_t end) {
    DotBlock(x + begin * k, k, end - begin, w, k, n, k, y + begin * n, n);
  });
}

void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* weight, float eps, float* y) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; ++i) {
      const float sq = xr[i] * xr[i];
      sum += sq;
    }
    const float variance = static_cast<float>(sum / static_cast<double>(dim));
    const float inv = 1.0f / std::sqrt(variance + eps);
    for (int64_t i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv);
  }
}

void AddInPlace(float* y, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    const float silu = g / (1.0f + std::exp(-g));
    out[i] = silu * up[i];
  }
}

void EmbeddingLookup(const LinearWeight& table, const int32_t* ids, int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    SPARK_CHECK(ids[t] >= 0 && ids[t] < table.out) << "token id " << ids[t];
    DequantizeTile(table, ids[t], 1, 0, table.in, out + t * table.in, table.in);
  }
}

// ---- RotaryEmbedding ---------------------------------------------------------------------

RotaryEmbedding::RotaryEmbedding(const ModelConfig& config) {
  head_dim_ = config.head_dim;
  rotary_dim_ = config.rotary_dim > 0
                    ? config.rotary_dim
                    : static_cast<int>(config.head_dim * config.partial_rotary_factor);
  SPARK_CHECK(rotary_dim_ % 2 == 0 && rotary_dim_ <= head_dim_) << "rotary_dim " << rotary_dim_;
  const int half = rotary_dim_ / 2;
  inv_freq_.resize(half);
  // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
  const float base = static_cast<float>(config.rope_theta);
  for (int j = 0; j < half; ++j) {
    const float exponent = static_cast<float>(2 * j) / static_cast<float>(rotary_dim_);
    const float p = static_cast<float>(std::pow(static_cast<double>(base), exponent));
    inv_freq_[j] = 1.0f / p;
  }
  if (config.rope_llama3_factor > 0.0) {
    // transformers _compute_llama3_parameters, fp32 tensors with scalars cast to fp32.
    const float factor = static_cast<float>(config.rope_llama3_factor);
    const double low = config.rope_llama3_low_freq_factor;
    const double high = config.rope_llama3_high_freq_factor;
    const double old_len = static_cast<double>(config.rope_llama3_original_max_position);
    const float low_freq_wavelen = static_cast<float>(old_len / low);
    const float high_freq_wavelen = static_cast<float>(old_len / high);
    const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
    for (int j = 0; j < half; ++j) {
      const float inv = inv_freq_[j];
      const float wavelen = two_pi / inv;
      float llama = wavelen > low_freq_wavelen ? inv / factor : inv;
      const float smooth = (static_cast<float>(old_len) / wavelen - static_cast<float>(low)) /
                           static_cast<float>(high - low);
      const float smoothed = (1.0f - smooth) * llama / factor + smooth * llama;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      inv_freq_[j] = medium ? smoothed : llama;
    }
  }
}

void RotaryEmbedding::CosSin(int64_t pos, float* cos_out, float* sin_out) const {
  const float p = static_cast<float>(pos);
  for (size_t j = 0; j < inv_freq_.size(); ++j) {
    const float freq = p * inv_freq_[j];
    cos_out[j] = static_cast<float>(std::cos(static_cast<double>(freq)));
    sin_out[j] = static_cast<float>(std::sin(static_cast<double>(freq)));
  }
}

void RotaryEmbedding::Apply(float* x, int heads, int64_t pos) const {
  const int half = rotary_dim_ / 2;
  if (half == 0) return;
  float cos_v[512];
  float sin_v[512];
  std::vector<float> big_cos, big_sin;
  float* c = cos_v;
  float* s = sin_v;
  if (half > 512) {
    big_cos.resize(half);
    big_sin.resize(half);
    c = big_cos.data();
    s = big_sin.data();
  }
  CosSin(pos, c, s);
  for (int h = 0; h < heads; ++h) {
    float* v = x + static_cast<int64_t>(h) * head_dim_;
    for (int j = 0; j < half; ++j) {
      const float x1 = v[j];
      const float x2 = v[j + half];
      const float a = x1 * c[j];
      const float b = x2 * s[j];
      const float d = x2 * c[j];
      const float e = x1 * s[j];
      v[j] = a - b;
      v[j + half] = d + e;
    }
  }
}

// ---- Attention ---------------------------------------------------------------------------

void AttendHeadSlots(const float* q, int64_t prefix_len, const int64_t* tail, int64_t n_tail,
                     int kv_head, const PagedKvView& kv, float scale, std::vector<float>* scores,
                     float* out) {
  const int hd = kv.head_dim;
  const int64_t token_stride = static_cast<int64_t>(kv.kv_heads) * hd;
  const int64_t head_offset = static_cast<int64_t>(kv_head) * hd;
  const int64_t len = prefix_len + n_tail;
  auto slot = [&](int64_t j) { return j < prefix_len ? j : tail[j - prefix_len]; };
  scores->resize(static_cast<size_t>(len));
  float* s = scores->data();
  float max_score = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < len; ++j) {
    const int64_t p = slot(j);
    const float* kj =
        kv.k_blocks[p / kv.block_tokens] + (p % kv.block_tokens) * token_stride + head_offset;
    s[j] = Dot(q, kj, hd) * scale;
    max_score = std::max(max_score, s[j]);
  }
  float sum = 0.0f;
  for (int64_t j = 0; j < len; ++j) {
    s[j] = std::exp(s[j] - max_score);
    sum += s[j];
  }
  for (int d = 0; d < hd; ++d) out[d] = 0.0f;
  for (int64_t j = 0; j < len; ++j) {
    const float p = s[j] / sum;
    const int64_t sl = slot(j);
    const float* vj =
        kv.v_blocks[sl / kv.block_tokens] + (sl % kv.block_tokens) * token_stride + head_offset;
    for (int d = 0; d < hd; ++d) out[d] += p * vj[d];
  }
}

void AttendHead(const float* q, int64_t pos, int kv_head, const PagedKvView& kv, float scale,
                std::vector<float>* scores, float* out) {
  AttendHeadSlots(q, pos + 1, nullptr, 0, kv_head, kv, scale, scores, out);
}

void PagedAttention(const float* q, int64_t n, int64_t start_pos, int q_heads,
                    const PagedKvView& kv, float scale, float* out, ThreadPool* pool) {
  const int hd = kv.head_dim;
  const int group = q_heads / kv.kv_heads;
  SPARK_CHECK(group * kv.kv_heads == q_heads) << q_heads << " q heads, " << kv.kv_heads;
  const int64_t row = static_cast<int64_t>(q_heads) * hd;
  const int64_t ctx = start_pos + n;
  const int64_t grain = std::max<int64_t>(1, kMinChunkWork / std::max<int64_t>(1, 2 * ctx * hd));
  ParallelOrInline(pool, n * q_heads, grain, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> scores;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t t = job / q_heads;
      const int h = static_cast<int>(job % q_heads);
      const int64_t offset = t * row + static_cast<int64_t>(h) * hd;
      AttendHead(q + offset, start_pos + t, h / group, kv, scale, &scores, out + offset);
    }
  });
}

// ---- Router ------------------------------------------------------------------------------

RouterParams RouterParams::FromConfig(const ModelConfig& config) {
  RouterParams p;
  p.scoring = config.router_scoring;
  p.num_experts = config.n_routed_experts;
  p.top_k = config.num_experts_per_tok;
  p.n_group = std::max(1, config.n_group);
  p.topk_group = std::max(1, config.topk_group);
  p.norm_topk_prob = config.norm_topk_prob;
  p.routed_scaling_factor = static_cast<float>(config.routed_scaling_factor);
  return p;
}

namespace {

// Indices of the k largest values, ties to the lower index; order: descending value.
void TopK(const float* v, int n, int k, int* out) {
  thread_local std::vector<int> idx;
  idx.resize(n);
  for (int i = 0; i < n; ++i) idx[i] = i;
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) {
    if (v[a] != v[b]) return v[a] > v[b];
    return a < b;
  });
  std::copy(idx.begin(), idx.begin() + k, out);
}

}  // namespace

void RouteToken(const float* logits, const float* correction_bias, const RouterParams& params,
                int32_t* experts, float* weights) {
  const int e_count = params.num_experts;
  const int k = params.top_k;
  SPARK_CHECK(k > 0 && k <= e_count) << "top_k " << k << " of " << e_count;
  thread_local std::vector<float> scores, choice;
  scores.resize(e_count);
  choice.resize(e_count);
  if (params.scoring == RouterScoring::kSigmoid) {
    for (int e = 0; e < e_count; ++e) scores[e] = 1.0f / (1.0f + std::exp(-logits[e]));
  } else {
    float max_logit = -std::numeric_limits<float>::infinity();
    for (int e = 0; e < e_count; ++e) max_logit = std::max(max_logit, logits[e]);
    float sum = 0.0f;
    for (int e = 0; e < e_count; ++e) {
      scores[e] = std::exp(logits[e] - max_logit);
      sum += scores[e];
    }
    for (int e = 0; e < e_count; ++e) scores[e] /= sum;
  }
  for (int e = 0; e < e_count; ++e) {
    choice[e] = correction_bias != nullptr ? scores[e] + correction_bias[e] : scores[e];
  }
  if (params.n_group > 1) {
    const int groups = params.n_group;
    const int per = e_count / groups;
    SPARK_CHECK(per * groups == e_count) << e_count << " experts in " << groups << " groups";
    std::vector<float> group_score(groups);
    for (int g = 0; g < groups; ++g) {
      int top[2];
      const int take = std::min(2, per);
      TopK(choice.data() + g * per, per, take, top);
      float s = 0.0f;
      for (int i = 0; i < take; ++i) s += choice[g * per + top[i]];
      group_score[g] = s;
    }
    std::vector<int> kept(params.topk_group);
    TopK(group_score.data(), groups, params.topk_group, kept.data());
    std::vector<bool> keep(groups, false);
    for (int g : kept) keep[g] = true;
    for (int e = 0; e < e_count; ++e) {
      if (!keep[e / per]) choice[e] = 0.0f;
    }
  }
  std::vector<int> top(k);
  TopK(choice.data(), e_count, k, top.data());
  std::sort(top.begin(), top.end());
  float sum = 0.0f;
  for (int i = 0; i < k; ++i) sum += scores[top[i]];
  const float denom = sum + 1e-20f;
  for (int i = 0; i < k; ++i) {
    float w = scores[top[i]];
    if (params.norm_topk_prob) w = w / denom;
    experts[i] = top[i];
    weights[i] = w * params.routed_scaling_factor;
  }
}

}  // namespace spark::engine
