#include "engine/model/loader.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

#include "common/check.h"
#include "engine/model/quantize.h"
#include "engine/model/safetensors.h"

namespace spark::engine {
namespace {

struct Range {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

Range Full(int64_t n) { return Range{0, n}; }

constexpr DType kFloatTypes[] = {DType::kBF16, DType::kF16, DType::kF32};
constexpr DType kWeightTypes[] = {DType::kBF16, DType::kF16, DType::kF32, DType::kF8E4M3};

std::string Str(int64_t v) { return std::to_string(v); }

// What a 1-D float tensor is, for dummy values.
enum class VectorKind { kNorm, kBias, kRouterBias };

// Where weights come from: a checkpoint (slices copied out of the mmap) or the dummy generator.
// Implementations are thread-safe (experts load in parallel).
class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // `prefix` is the module name ("model.layers.0.self_attn.q_proj"); the full weight is [n, k];
  // the result holds rows x cols of it.
  virtual Result<LinearWeight> Linear(const std::string& prefix, int64_t n, int64_t k, Range rows,
                                      Range cols, bool bias, bool quantizable) = 0;
  virtual Result<std::vector<float>> Vector(const std::string& name, int64_t n, Range r,
                                            VectorKind kind) = 0;
  // Full [n, k] tensor as float (router).
  virtual Result<std::vector<float>> Matrix(const std::string& name, int64_t n, int64_t k) = 0;
};

// ---------------------------------------------------------------------------------------------
// Checkpoint source

class CheckpointSource : public WeightSource {
 public:
  CheckpointSource(const Checkpoint& ckpt, const ModelConfig& config, const LoadOptions& options,
                   int64_t bytes_total)
      : ckpt_(ckpt), config_(config), options_(options), bytes_total_(bytes_total) {}

  Result<LinearWeight> Linear(const std::string& prefix, int64_t n, int64_t k, Range rows,
                              Range cols, bool bias, bool quantizable) override {
    const std::string name = prefix + ".weight";
    const int64_t full_shape[] = {n, k};
    SPARK_ASSIGN_OR_RETURN(TensorView view, ckpt_.GetChecked(name, full_shape, kWeightTypes));
    LinearWeight w;
    w.dtype = view.dtype;
    w.out = rows.size();
    w.in = cols.size();
    const size_t elem = DTypeSize(view.dtype);
    w.data.resize(static_cast<size_t>(w.out * w.in) * elem);
    for (int64_t r = 0; r < w.out; ++r) {
      std::memcpy(w.data.data() + static_cast<size_t>(r * w.in) * elem,
                  view.data + static_cast<size_t>((rows.begin + r) * k + cols.begin) * elem,
                  static_cast<size_t>(w.in) * elem);
    }
    Progress(view.nbytes);
    if (view.dtype == DType::kF8E4M3)
      SPARK_RETURN_IF_ERROR(LoadScales(prefix, n, k, rows, cols, w));
    if (bias) {
      const int64_t bias_shape[] = {n};
      SPARK_ASSIGN_OR_RETURN(TensorView b,
                             ckpt_.GetChecked(prefix + ".bias", bias_shape, kFloatTypes));
      w.bias.resize(static_cast<size_t>(rows.size()));
      ConvertToFloat(b.dtype, b.data + static_cast<size_t>(rows.begin) * DTypeSize(b.dtype),
                     w.bias.size(), w.bias.data());
      Progress(b.nbytes);
    }
    return w;
  }

  Result<std::vector<float>> Vector(const std::string& name, int64_t n, Range r,
                                    VectorKind kind) override {
    const int64_t shape[] = {n};
    SPARK_ASSIGN_OR_RETURN(TensorView view, ckpt_.GetChecked(name, shape, kFloatTypes));
    std::vector<float> out(static_cast<size_t>(r.size()));
    ConvertToFloat(view.dtype, view.data + static_cast<size_t>(r.begin) * DTypeSize(view.dtype),
                   out.size(), out.data());
    Progress(view.nbytes);
    return out;
  }

  Result<std::vector<float>> Matrix(const std::string& name, int64_t n, int64_t k) override {
    const int64_t shape[] = {n, k};
    SPARK_ASSIGN_OR_RETURN(TensorView view, ckpt_.GetChecked(name, shape, kFloatTypes));
    Progress(view.nbytes);
    return ToFloatVector(view);
  }

  void Finish() {
    if (options_.progress) {
      std::lock_guard<std::mutex> lock(progress_mu_);
      options_.progress(bytes_total_, bytes_total_);
    }
  }

 private:
  Status LoadScales(const std::string& prefix, int64_t n, int64_t k, Range rows, Range cols,
                    LinearWeight& w) {
    const QuantConfig& q = config_.quant;
    const std::string weight_name = prefix + ".weight";
    if (q.method == QuantMethod::kNone) {
      return InvalidArgument("tensor " + weight_name +
                             " is F8_E4M3 but config.json has no quantization_config; the "
                             "checkpoint's config.json is wrong or incomplete");
    }
    const std::string scale_name =
        prefix + (q.scale_inv_name ? ".weight_scale_inv" : ".weight_scale");
    if (q.method == QuantMethod::kFp8PerChannel) {
      SPARK_ASSIGN_OR_RETURN(TensorView s, ckpt_.Get(scale_name));
      const bool shape_ok = (s.shape.size() == 2 && s.shape[0] == n && s.shape[1] == 1) ||
                            (s.shape.size() == 1 && s.shape[0] == n);
      const bool dtype_ok = std::find(std::begin(kFloatTypes), std::end(kFloatTypes), s.dtype) !=
                            std::end(kFloatTypes);
      if (!shape_ok || !dtype_ok) {
        return InvalidArgument("tensor " + scale_name + ": expected [" + Str(n) +
                               ", 1] BF16/F16/F32 (per-channel FP8 scale), got " + s.Describe() +
                               "; the checkpoint does not match its quantization_config");
      }
      w.scale_kind = ScaleKind::kPerChannel;
      w.scale.resize(static_cast<size_t>(rows.size()));
      ConvertToFloat(s.dtype, s.data + static_cast<size_t>(rows.begin) * DTypeSize(s.dtype),
                     w.scale.size(), w.scale.data());
      Progress(s.nbytes);
      return Status::Ok();
    }
    const int64_t bn = q.block_n;
    const int64_t bk = q.block_k;
    const int64_t nb = (n + bn - 1) / bn;
    const int64_t kb = (k + bk - 1) / bk;
    const int64_t scale_shape[] = {nb, kb};
    SPARK_ASSIGN_OR_RETURN(TensorView s, ckpt_.GetChecked(scale_name, scale_shape, kFloatTypes));
    auto aligned = [](Range r, int64_t full, int64_t block) {
      return r.begin % block == 0 && (r.end % block == 0 || r.end == full);
    };
    if (!aligned(rows, n, bn) || !aligned(cols, k, bk)) {
      return InvalidArgument(
          "tensor " + weight_name + ": this rank's slice rows [" + Str(rows.begin) + ", " +
          Str(rows.end) + ") x cols [" + Str(cols.begin) + ", " + Str(cols.end) +
          ") does not align to the FP8 block [" + Str(bn) + ", " + Str(bk) +
          "]; a block would straddle ranks. Use a TP size whose per-rank sizes are multiples of "
          "the block, or a per-channel FP8 / BF16 checkpoint");
    }
    const int64_t b_r0 = rows.begin / bn;
    const int64_t b_r1 = (rows.end + bn - 1) / bn;
    const int64_t b_c0 = cols.begin / bk;
    const int64_t b_c1 = (cols.end + bk - 1) / bk;
    std::vector<float> all = ToFloatVector(s);
    w.scale_kind = ScaleKind::kBlock;
    w.block_n = static_cast<int>(bn);
    w.block_k = static_cast<int>(bk);
    w.scale.clear();
    w.scale.reserve(static_cast<size_t>((b_r1 - b_r0) * (b_c1 - b_c0)));
    for (int64_t br = b_r0; br < b_r1; ++br) {
      for (int64_t bc = b_c0; bc < b_c1; ++bc) w.scale.push_back(all[br * kb + bc]);
    }
    Progress(s.nbytes);
    return Status::Ok();
  }

  // Tensors load on several threads: the count and the report happen under one lock, so the
  // reported progress never goes back.
  void Progress(size_t bytes) {
    std::lock_guard<std::mutex> lock(progress_mu_);
    const int64_t done =
        bytes_done_.fetch_add(static_cast<int64_t>(bytes)) + static_cast<int64_t>(bytes);
    if (options_.progress) options_.progress(std::min(done, bytes_total_), bytes_total_);
  }

  const Checkpoint& ckpt_;
  const ModelConfig& config_;
  const LoadOptions& options_;
  const int64_t bytes_total_;
  std::atomic<int64_t> bytes_done_{0};
  std::mutex progress_mu_;
};

// ---------------------------------------------------------------------------------------------
// Dummy source

// Runs fn(i) for i in [0, n) on up to hardware_concurrency threads; returns the first error.
Status ParallelFor(int n, const std::function<Status(int)>& fn) {
  const int threads =
      std::max(1, std::min<int>(n, static_cast<int>(std::thread::hardware_concurrency())));
  if (threads <= 1) {
    for (int i = 0; i < n; ++i) SPARK_RETURN_IF_ERROR(fn(i));
    return Status::Ok();
  }
  std::atomic<int> next{0};
  std::vector<Status> errors(static_cast<size_t>(n));
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      for (int i = next.fetch_add(1); i < n; i = next.fetch_add(1)) {
        errors[static_cast<size_t>(i)] = fn(i);
      }
    });
  }
  for (auto& th : pool) th.join();
  for (const Status& s : errors) SPARK_RETURN_IF_ERROR(s);
  return Status::Ok();
}

uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t NameKey(uint64_t seed, std::string_view name) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a
  for (char c : name) {
    h ^= static_cast<uint8_t>(c);
    h *= 0x100000001b3ull;
  }
  return SplitMix64(h ^ SplitMix64(seed));
}

// Uniform in [-1, 1), a pure function of (key, row, col).
float UnitValue(uint64_t key, int64_t row, int64_t col) {
  uint64_t counter = (static_cast<uint64_t>(row) << 32) ^ static_cast<uint64_t>(col);
  uint64_t h = SplitMix64(key ^ SplitMix64(counter));
  return static_cast<float>(h >> 40) * 0x1p-23f - 1.0f;
}

DType DTypeFromTorch(const std::string& torch_dtype) {
  if (torch_dtype == "float32") return DType::kF32;
  if (torch_dtype == "float16") return DType::kF16;
  return DType::kBF16;
}

void StoreFloat(DType dtype, float v, std::byte* dst) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(dst, &v, 4);
      return;
    case DType::kBF16: {
      uint16_t b = FloatToBf16(v);
      std::memcpy(dst, &b, 2);
      return;
    }
    case DType::kF16: {
      uint16_t b = FloatToF16(v);
      std::memcpy(dst, &b, 2);
      return;
    }
    default:
      SPARK_CHECK(false) << "StoreFloat " << DTypeName(dtype);
  }
}

class DummySource : public WeightSource {
 public:
  DummySource(const ModelConfig& config, uint64_t seed)
      : config_(config), seed_(seed), dtype_(DTypeFromTorch(config.torch_dtype)) {}

  Result<LinearWeight> Linear(const std::string& prefix, int64_t n, int64_t k, Range rows,
                              Range cols, bool bias, bool quantizable) override {
    const std::string name = prefix + ".weight";
    const uint64_t key = NameKey(seed_, name);
    const float bound = std::sqrt(3.0f / static_cast<float>(k));
    LinearWeight w;
    w.out = rows.size();
    w.in = cols.size();
    const bool fp8 = quantizable && config_.quant.method != QuantMethod::kNone;
    w.dtype = fp8 ? DType::kF8E4M3 : dtype_;
    const size_t elem = DTypeSize(w.dtype);
    w.data.resize(static_cast<size_t>(w.out * w.in) * elem);
    // Static scale from the distribution's bound, so every rank's scales equal the full
    // tensor's.
    const float scale = bound / kF8E4M3Max;
    auto fill_rows = [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        for (int64_t c = 0; c < w.in; ++c) {
          const float v = UnitValue(key, rows.begin + r, cols.begin + c) * bound;
          std::byte* dst = w.data.data() + static_cast<size_t>(r * w.in + c) * elem;
          if (fp8) {
            *dst = static_cast<std::byte>(FloatToF8E4M3(v / scale));
          } else {
            StoreFloat(w.dtype, v, dst);
          }
        }
      }
    };
    // Large tensors (embeddings, dense MLPs of real models) are filled by several threads.
    constexpr int64_t kRowsPerTask = 256;
    if (w.out * w.in >= (int64_t{1} << 22) && w.out > kRowsPerTask) {
      const int tasks = static_cast<int>((w.out + kRowsPerTask - 1) / kRowsPerTask);
      Status s = ParallelFor(tasks, [&](int t) {
        fill_rows(t * kRowsPerTask, std::min(w.out, (t + 1) * kRowsPerTask));
        return Status::Ok();
      });
      SPARK_CHECK(s.ok());
    } else {
      fill_rows(0, w.out);
    }
    if (fp8) {
      if (config_.quant.method == QuantMethod::kFp8PerChannel) {
        w.scale_kind = ScaleKind::kPerChannel;
        w.scale.assign(static_cast<size_t>(w.out), scale);
      } else {
        w.scale_kind = ScaleKind::kBlock;
        w.block_n = config_.quant.block_n;
        w.block_k = config_.quant.block_k;
        const int64_t nb = (w.out + w.block_n - 1) / w.block_n;
        const int64_t kb = (w.in + w.block_k - 1) / w.block_k;
        w.scale.assign(static_cast<size_t>(nb * kb), scale);
      }
    }
    if (bias) {
      SPARK_ASSIGN_OR_RETURN(w.bias, Vector(prefix + ".bias", n, rows, VectorKind::kBias));
    }
    return w;
  }

  Result<std::vector<float>> Vector(const std::string& name, int64_t n, Range r,
                                    VectorKind kind) override {
    const uint64_t key = NameKey(seed_, name);
    std::vector<float> out(static_cast<size_t>(r.size()));
    for (int64_t i = 0; i < r.size(); ++i) {
      const float u = UnitValue(key, r.begin + i, 0);
      float v = 0.0f;
      switch (kind) {
        case VectorKind::kNorm:
          v = 1.0f + 0.1f * u;
          break;
        case VectorKind::kBias:
          v = 0.02f * u;
          break;
        case VectorKind::kRouterBias:
          v = 0.05f * u;
          break;
      }
      // Stored dtype rounding as a checkpoint would have it (router bias stays F32).
      if (kind != VectorKind::kRouterBias && dtype_ == DType::kBF16) {
        v = Bf16ToFloat(FloatToBf16(v));
      } else if (kind != VectorKind::kRouterBias && dtype_ == DType::kF16) {
        v = F16ToFloat(FloatToF16(v));
      }
      out[static_cast<size_t>(i)] = v;
    }
    return out;
  }

  Result<std::vector<float>> Matrix(const std::string& name, int64_t n, int64_t k) override {
    const uint64_t key = NameKey(seed_, name);
    const float bound = std::sqrt(3.0f / static_cast<float>(k));
    std::vector<float> out(static_cast<size_t>(n * k));
    for (int64_t r = 0; r < n; ++r) {
      for (int64_t c = 0; c < k; ++c) {
        float v = UnitValue(key, r, c) * bound;
        if (dtype_ == DType::kBF16) v = Bf16ToFloat(FloatToBf16(v));
        out[static_cast<size_t>(r * k + c)] = v;
      }
    }
    return out;
  }

 private:
  const ModelConfig& config_;
  const uint64_t seed_;
  const DType dtype_;
};

// ---------------------------------------------------------------------------------------------
// The TP plan (shared/docs/glm4-moe.md §2.9), shared by both sources.

class Builder {
 public:
  Builder(const ModelConfig& config, const LoadOptions& options, WeightSource& source)
      : c_(config),
        tp_(options.tp_size),
        rank_(options.tp_rank),
        on_layer_(options.on_layer),
        src_(source) {}

  Result<ModelWeights> Build(bool load_mtp, bool mtp_present, int layers_to_load) {
    ModelWeights mw;
    mw.config = c_;
    mw.config.num_hidden_layers = layers_to_load;
    mw.tp_rank = rank_;
    mw.tp_size = tp_;
    const int64_t v = c_.vocab_size;
    const int64_t h = c_.hidden_size;
    SPARK_ASSIGN_OR_RETURN(mw.embed,
                           src_.Linear("model.embed_tokens", v, h, Full(v), Full(h), false, false));
    mw.layers.resize(static_cast<size_t>(layers_to_load));
    for (int l = 0; l < layers_to_load; ++l) {
      Status s = BuildLayer(l, mw.layers[static_cast<size_t>(l)]);
      if (!s.ok()) return s.WithContext("layer " + std::to_string(l));
      if (on_layer_) {
        s = on_layer_(l, std::move(mw.layers[static_cast<size_t>(l)]));
        mw.layers[static_cast<size_t>(l)] = LayerWeights{};
        if (!s.ok()) return s.WithContext("layer " + std::to_string(l));
      }
    }
    SPARK_ASSIGN_OR_RETURN(mw.final_norm,
                           src_.Vector("model.norm.weight", h, Full(h), VectorKind::kNorm));
    const int64_t chunk = (v + tp_ - 1) / tp_;
    const Range vocab{std::min(v, rank_ * chunk), std::min(v, (rank_ + 1) * chunk)};
    mw.vocab_begin = vocab.begin;
    if (c_.tie_word_embeddings) {
      LinearWeight& head = mw.lm_head;
      head.dtype = mw.embed.dtype;
      head.out = vocab.size();
      head.in = h;
      const size_t row_bytes = static_cast<size_t>(h) * DTypeSize(head.dtype);
      head.data.assign(mw.embed.data.begin() + static_cast<ptrdiff_t>(vocab.begin * row_bytes),
                       mw.embed.data.begin() + static_cast<ptrdiff_t>(vocab.end * row_bytes));
    } else {
      SPARK_ASSIGN_OR_RETURN(mw.lm_head,
                             src_.Linear("lm_head", v, h, vocab, Full(h), false, false));
    }
    if (load_mtp && mtp_present) {
      for (int i = 0; i < c_.num_nextn_predict_layers; ++i) {
        const int l = c_.num_hidden_layers + i;
        const std::string p = "model.layers." + std::to_string(l) + ".";
        MtpWeights mtp;
        Status s = BuildMtp(l, p, mtp);
        if (!s.ok()) return s.WithContext("MTP layer " + std::to_string(l));
        mw.mtp.push_back(std::move(mtp));
      }
    }
    return mw;
  }

 private:
  Status BuildMtp(int l, const std::string& p, MtpWeights& mtp) {
    const int64_t h = c_.hidden_size;
    SPARK_ASSIGN_OR_RETURN(mtp.enorm,
                           src_.Vector(p + "enorm.weight", h, Full(h), VectorKind::kNorm));
    SPARK_ASSIGN_OR_RETURN(mtp.hnorm,
                           src_.Vector(p + "hnorm.weight", h, Full(h), VectorKind::kNorm));
    SPARK_ASSIGN_OR_RETURN(
        mtp.eh_proj, src_.Linear(p + "eh_proj", h, 2 * h, Full(h), Full(2 * h), false, false));
    SPARK_ASSIGN_OR_RETURN(mtp.shared_head_norm, src_.Vector(p + "shared_head.norm.weight", h,
                                                             Full(h), VectorKind::kNorm));
    return BuildLayer(l, mtp.layer);
  }

  Range QRows() const {
    const int64_t per = int64_t{c_.num_attention_heads / tp_} * c_.head_dim;
    return Range{rank_ * per, (rank_ + 1) * per};
  }
  Range KvRows() const {
    const int64_t hd = c_.head_dim;
    const int nkv = c_.num_key_value_heads;
    if (tp_ <= nkv) {
      const int64_t per = int64_t{nkv / tp_} * hd;
      return Range{rank_ * per, (rank_ + 1) * per};
    }
    const int64_t head = rank_ / (tp_ / nkv);
    return Range{head * hd, (head + 1) * hd};
  }
  Range Split(int64_t n) const {
    const int64_t per = n / tp_;
    return Range{rank_ * per, (rank_ + 1) * per};
  }

  Status BuildMlp(const std::string& p, int64_t inter, ExpertWeights& out) {
    const int64_t h = c_.hidden_size;
    const Range r = Split(inter);
    SPARK_ASSIGN_OR_RETURN(out.gate,
                           src_.Linear(p + "gate_proj", inter, h, r, Full(h), false, true));
    SPARK_ASSIGN_OR_RETURN(out.up, src_.Linear(p + "up_proj", inter, h, r, Full(h), false, true));
    SPARK_ASSIGN_OR_RETURN(out.down,
                           src_.Linear(p + "down_proj", h, inter, Full(h), r, false, true));
    return Status::Ok();
  }

  Status BuildLayer(int l, LayerWeights& out) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const int64_t h = c_.hidden_size;
    const int64_t hd = c_.head_dim;
    const int64_t q_size = c_.q_size();
    const int64_t kv_size = c_.kv_size();
    SPARK_ASSIGN_OR_RETURN(
        out.input_norm, src_.Vector(p + "input_layernorm.weight", h, Full(h), VectorKind::kNorm));
    SPARK_ASSIGN_OR_RETURN(out.post_attn_norm, src_.Vector(p + "post_attention_layernorm.weight", h,
                                                           Full(h), VectorKind::kNorm));
    const std::string a = p + "self_attn.";
    const bool bias = c_.attention_bias;
    SPARK_ASSIGN_OR_RETURN(out.q,
                           src_.Linear(a + "q_proj", q_size, h, QRows(), Full(h), bias, true));
    SPARK_ASSIGN_OR_RETURN(out.k,
                           src_.Linear(a + "k_proj", kv_size, h, KvRows(), Full(h), bias, true));
    SPARK_ASSIGN_OR_RETURN(out.v,
                           src_.Linear(a + "v_proj", kv_size, h, KvRows(), Full(h), bias, true));
    SPARK_ASSIGN_OR_RETURN(out.o,
                           src_.Linear(a + "o_proj", h, q_size, Full(h), QRows(), false, true));
    if (c_.use_qk_norm) {
      SPARK_ASSIGN_OR_RETURN(out.q_norm,
                             src_.Vector(a + "q_norm.weight", hd, Full(hd), VectorKind::kNorm));
      SPARK_ASSIGN_OR_RETURN(out.k_norm,
                             src_.Vector(a + "k_norm.weight", hd, Full(hd), VectorKind::kNorm));
    }
    out.is_moe = c_.IsMoeLayer(l);
    if (!out.is_moe) return BuildMlp(p + "mlp.", c_.intermediate_size, out.mlp);

    const int e = c_.n_routed_experts;
    SPARK_ASSIGN_OR_RETURN(out.router, src_.Matrix(p + "mlp.gate.weight", e, h));
    if (c_.router_correction_bias) {
      SPARK_ASSIGN_OR_RETURN(out.router_bias, src_.Vector(p + "mlp.gate.e_score_correction_bias", e,
                                                          Full(e), VectorKind::kRouterBias));
    }
    out.experts.resize(static_cast<size_t>(e));
    SPARK_RETURN_IF_ERROR(ParallelFor(e, [&](int i) {
      return BuildMlp(p + "mlp.experts." + std::to_string(i) + ".", c_.moe_intermediate_size,
                      out.experts[static_cast<size_t>(i)]);
    }));
    out.has_shared_expert = c_.n_shared_experts > 0;
    if (out.has_shared_expert) {
      SPARK_RETURN_IF_ERROR(BuildMlp(p + "mlp.shared_experts.",
                                     c_.moe_intermediate_size * c_.n_shared_experts, out.shared));
    }
    return Status::Ok();
  }

  const ModelConfig& c_;
  const int tp_;
  const int rank_;
  const std::function<Status(int, LayerWeights&&)> on_layer_;
  WeightSource& src_;
};

Status ValidateOptions(const ModelConfig& config, const LoadOptions& options) {
  if (options.tp_size < 1 || options.tp_rank < 0 || options.tp_rank >= options.tp_size) {
    return InvalidArgument("tp_rank " + std::to_string(options.tp_rank) + " / tp_size " +
                           std::to_string(options.tp_size) +
                           " is invalid; need tp_size >= 1 and 0 <= tp_rank < tp_size");
  }
  if (options.max_layers == 0 || options.max_layers < -1) {
    return InvalidArgument("max_layers must be -1 (all) or > 0, got " +
                           std::to_string(options.max_layers));
  }
  return ValidateTensorParallel(config, options.tp_size);
}

int LayersToLoad(const ModelConfig& config, const LoadOptions& options) {
  return options.max_layers < 0 ? config.num_hidden_layers
                                : std::min(options.max_layers, config.num_hidden_layers);
}

// Checkpoint bytes of the tensors this load touches (for progress reports).
int64_t BytesToProcess(const Checkpoint& ckpt, const ModelConfig& config, int layers,
                       bool load_mtp) {
  int64_t total = 0;
  const std::string layer_prefix = "model.layers.";
  for (const auto& file : ckpt.files()) {
    for (const std::string& name : file->names()) {
      if (name.rfind(layer_prefix, 0) == 0) {
        const int l = std::atoi(name.c_str() + layer_prefix.size());
        const bool mtp = l >= config.num_hidden_layers;
        if (mtp ? !load_mtp : l >= layers) continue;
        if (mtp && (name.find(".embed_tokens.") != std::string::npos ||
                    name.find(".shared_head.head.") != std::string::npos)) {
          continue;
        }
      }
      total += static_cast<int64_t>(file->Get(name)->nbytes);
    }
  }
  return total;
}

Status DivisibleError(const std::string& what, int64_t value, const std::string& key, int tp) {
  return InvalidArgument(what + " " + std::to_string(value) + " (\"" + key +
                         "\") is not divisible by tp_size " + std::to_string(tp) +
                         "; use a tensor-parallel size that divides it");
}

}  // namespace

Status ValidateTensorParallel(const ModelConfig& c, int tp) {
  if (tp < 1) return InvalidArgument("tp_size must be >= 1, got " + std::to_string(tp));
  if (c.num_attention_heads % tp != 0) {
    return DivisibleError("the number of attention heads", c.num_attention_heads,
                          "num_attention_heads", tp);
  }
  const int nkv = c.num_key_value_heads;
  if (tp <= nkv ? nkv % tp != 0 : tp % nkv != 0) {
    return InvalidArgument("num_key_value_heads " + std::to_string(nkv) + " and tp_size " +
                           std::to_string(tp) +
                           " do not fit: tp_size must divide the kv heads, or be a multiple of "
                           "them (kv heads are then replicated)");
  }
  bool any_dense = false;
  bool any_moe = false;
  const int layers = c.num_hidden_layers + c.num_nextn_predict_layers;
  for (int l = 0; l < layers; ++l) (c.IsMoeLayer(l) ? any_moe : any_dense) = true;
  if (any_dense && c.intermediate_size % tp != 0) {
    return DivisibleError("the dense MLP size", c.intermediate_size, "intermediate_size", tp);
  }
  if (any_moe && c.moe_intermediate_size % tp != 0) {
    return DivisibleError("the expert MLP size", c.moe_intermediate_size, "moe_intermediate_size",
                          tp);
  }
  if (any_moe && (c.moe_intermediate_size * c.n_shared_experts) % tp != 0) {
    return DivisibleError("the shared expert MLP size",
                          c.moe_intermediate_size * c.n_shared_experts,
                          "moe_intermediate_size * n_shared_experts", tp);
  }
  if (c.quant.method == QuantMethod::kFp8Block && tp > 1) {
    const int64_t bn = c.quant.block_n;
    const int64_t bk = c.quant.block_k;
    struct Sliced {
      const char* what;
      int64_t per_rank;
      int64_t block;
      const char* block_name;
    };
    const int64_t q_local = int64_t{c.num_attention_heads / tp} * c.head_dim;
    const int64_t kv_local = int64_t{std::max(1, nkv / tp)} * c.head_dim;
    std::vector<Sliced> checks = {{"q_proj output", q_local, bn, "block_n"},
                                  {"o_proj input", q_local, bk, "block_k"}};
    checks.push_back({"k/v_proj output", kv_local, bn, "block_n"});
    if (any_dense) {
      checks.push_back({"dense gate/up output", c.intermediate_size / tp, bn, "block_n"});
      checks.push_back({"dense down_proj input", c.intermediate_size / tp, bk, "block_k"});
    }
    if (any_moe) {
      checks.push_back({"expert gate/up output", c.moe_intermediate_size / tp, bn, "block_n"});
      checks.push_back({"expert down_proj input", c.moe_intermediate_size / tp, bk, "block_k"});
      if (c.n_shared_experts > 0) {
        const int64_t s = c.moe_intermediate_size * c.n_shared_experts / tp;
        checks.push_back({"shared expert gate/up output", s, bn, "block_n"});
        checks.push_back({"shared expert down_proj input", s, bk, "block_k"});
      }
    }
    for (const Sliced& s : checks) {
      if (s.per_rank % s.block != 0) {
        return InvalidArgument(
            std::string("block FP8 at tp_size ") + std::to_string(tp) + ": the per-rank " + s.what +
            " size " + std::to_string(s.per_rank) +
            " is not divisible by weight "
            "quantization " +
            s.block_name + " = " + std::to_string(s.block) +
            " (a block would straddle ranks); use a smaller tp_size or a per-channel FP8 / BF16 "
            "checkpoint");
      }
    }
  }
  return Status::Ok();
}

Result<ModelWeights> MakeDummyWeights(const ModelConfig& config, const LoadOptions& options) {
  SPARK_RETURN_IF_ERROR(ValidateOptions(config, options));
  DummySource source(config, options.seed);
  Builder builder(config, options, source);
  const int layers = LayersToLoad(config, options);
  return builder.Build(options.load_mtp, config.num_nextn_predict_layers > 0, layers);
}

Result<ModelWeights> LoadModelWeights(const std::filesystem::path& dir,
                                      const LoadOptions& options) {
  SPARK_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(dir));
  if (options.dummy) return MakeDummyWeights(config, options);
  SPARK_RETURN_IF_ERROR(ValidateOptions(config, options));
  SPARK_ASSIGN_OR_RETURN(Checkpoint ckpt, Checkpoint::Open(dir));
  const int layers = LayersToLoad(config, options);
  bool mtp_present = false;
  if (options.load_mtp && config.num_nextn_predict_layers > 0) {
    mtp_present =
        ckpt.Has("model.layers." + std::to_string(config.num_hidden_layers) + ".eh_proj.weight");
  }
  const int64_t total = BytesToProcess(ckpt, config, layers, options.load_mtp && mtp_present);
  CheckpointSource source(ckpt, config, options, total);
  Builder builder(config, options, source);
  Result<ModelWeights> weights = builder.Build(options.load_mtp, mtp_present, layers);
  if (!weights.ok()) return weights.status().WithContext("loading " + dir.string());
  source.Finish();
  return weights;
}

float DummyWeightValue(uint64_t seed, std::string_view name, int64_t row, int64_t col,
                       int64_t in_features) {
  return UnitValue(NameKey(seed, name), row, col) *
         std::sqrt(3.0f / static_cast<float>(in_features));
}

}  // namespace spark::engine
