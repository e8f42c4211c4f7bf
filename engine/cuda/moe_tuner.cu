#include "engine/cuda/moe_tuner.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <tuple>
#include <utility>

#include "common/check.h"
#include "engine/cuda/cuda_check.h"
#include "engine/cuda/moe_gemv.h"
#include "engine/cuda/moe_pack.h"
#include "engine/cuda/tuning_stats.h"

namespace spark::cuda {
namespace {

__device__ __forceinline__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9E3779B97F4A7C15ull + seed;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}
__device__ __forceinline__ float HashUniform(uint64_t i, uint32_t seed) {
  return static_cast<float>(Hash(i, seed) >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

__global__ void FillFloat(float* p, int64_t n, float amp, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = HashUniform(i, seed) * amp;
}
__global__ void FillBf16(__nv_bfloat16* p, int64_t n, float amp, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = __float2bfloat16(HashUniform(i, seed) * amp);
}
__global__ void FillFp8(uint8_t* p, int64_t n, uint32_t seed) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x)
    p[i] = static_cast<uint8_t>(
        __nv_cvt_float_to_fp8(HashUniform(i, seed) * 448.f, __NV_SATFINITE, __NV_E4M3));
}

bool SameConfig(const MoeTileConfig& a, const MoeTileConfig& b) {
  return a.kernel == b.kernel && a.block_m == b.block_m && a.block_n == b.block_n &&
         a.block_k_bytes == b.block_k_bytes && a.warps == b.warps && a.stages == b.stages &&
         a.split_k == b.split_k;
}

int64_t WallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Runs forwards of one layer with an L2 flush before each and reads the phase times.
class ForwardTimer {
 public:
  static Result<ForwardTimer> Create(const MoeShape& shape, MoeWeightFormat format,
                                     int64_t max_tokens) {
    ForwardTimer t;
    SPARK_ASSIGN_OR_RETURN(t.layer_, MoeRandomLayer::Create(shape, format));
    SPARK_ASSIGN_OR_RETURN(t.ws_, MoeWorkspace::Create(shape, format, max_tokens));
    SPARK_RETURN_IF_ERROR(t.ws_.SetPhaseTiming(true));
    t.max_tokens_ = max_tokens;
    t.hidden_ = shape.hidden;
    const int64_t x_elems = kInputs * max_tokens * shape.hidden;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&t.x_, x_elems * sizeof(__nv_bfloat16)));
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&t.out_, max_tokens * shape.hidden * sizeof(float)));
    FillBf16<<<4096, 256>>>(t.x_, x_elems, 2.0f, 7);
    SPARK_CUDA_RETURN_IF_ERROR(cudaGetLastError());
    int device = 0, l2 = 0;
    SPARK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&device));
    SPARK_CUDA_RETURN_IF_ERROR(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    t.flush_bytes_ = std::max<size_t>(size_t{2} * static_cast<size_t>(l2), size_t{64} << 20);
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&t.flush_, t.flush_bytes_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreate(&t.start_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventCreate(&t.stop_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
    return std::move(t);
  }
  ForwardTimer() = default;
  ForwardTimer(ForwardTimer&& o) noexcept { *this = std::move(o); }
  ForwardTimer& operator=(ForwardTimer&& o) noexcept {
    if (this != &o) {
      Release();
      layer_ = std::move(o.layer_);
      ws_ = std::move(o.ws_);
      x_ = std::exchange(o.x_, nullptr);
      out_ = std::exchange(o.out_, nullptr);
      flush_ = std::exchange(o.flush_, nullptr);
      start_ = std::exchange(o.start_, nullptr);
      stop_ = std::exchange(o.stop_, nullptr);
      flush_bytes_ = o.flush_bytes_;
      max_tokens_ = o.max_tokens_;
      hidden_ = o.hidden_;
      runs_ = o.runs_;
    }
    return *this;
  }
  ~ForwardTimer() { Release(); }

  // One forward of `tokens` tokens: explicit configs when given, else `table`'s choice.
  Result<MoePhaseTimes> Run(int64_t tokens, const MoeConfigTable& table,
                            const MoeTileConfig* gate_up, const MoeTileConfig* down) {
    SPARK_ASSIGN_OR_RETURN(const __nv_bfloat16* x, NextInput());
    const cudaError_t err =
        gate_up != nullptr
            ? MoeForwardWithConfigs(layer_.view(), x, tokens, out_, ws_, table, *gate_up, *down,
                                    nullptr)
            : MoeForward(layer_.view(), x, tokens, out_, nullptr, ws_, table, nullptr);
    if (err != cudaSuccess) {
      return Internal(std::string("MoE forward while tuning: ") + cudaGetErrorString(err));
    }
    return ws_.PhaseTimes();
  }

  // One forward of `tokens` tokens with `table`'s choice timed as a whole, without events between
  // its kernels (so programmatic launches overlap them as when serving); microseconds.
  Result<double> RunWhole(int64_t tokens, const MoeConfigTable& table) {
    SPARK_ASSIGN_OR_RETURN(const __nv_bfloat16* x, NextInput());
    SPARK_RETURN_IF_ERROR(ws_.SetPhaseTiming(false));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(start_));
    const cudaError_t err =
        MoeForward(layer_.view(), x, tokens, out_, nullptr, ws_, table, nullptr);
    SPARK_RETURN_IF_ERROR(ws_.SetPhaseTiming(true));
    if (err != cudaSuccess) {
      return Internal(std::string("MoE forward while tuning: ") + cudaGetErrorString(err));
    }
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventRecord(stop_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(stop_));
    float ms = 0;
    SPARK_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, start_, stop_));
    return 1e3 * static_cast<double>(ms);
  }

  // The output [tokens, H] of one forward of the first input set with `table`'s choice.
  Result<std::vector<float>> Output(int64_t tokens, const MoeConfigTable& table) {
    const cudaError_t err =
        MoeForward(layer_.view(), x_, tokens, out_, nullptr, ws_, table, nullptr);
    if (err != cudaSuccess) {
      return Internal(std::string("MoE forward while tuning: ") + cudaGetErrorString(err));
    }
    std::vector<float> host(static_cast<size_t>(tokens * hidden_));
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMemcpy(host.data(), out_, host.size() * sizeof(float), cudaMemcpyDeviceToHost));
    return host;
  }

  const MoePlan& last_plan() const { return ws_.last_plan(); }
  int64_t runs() const { return runs_; }

 private:
  static constexpr int kInputs = 4;  // input sets rotated over, so activations are not cached
  // Flushes L2 (on the default stream, before the forward) and returns the next input set.
  Result<const __nv_bfloat16*> NextInput() {
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMemsetAsync(flush_, static_cast<int>(runs_ & 0xff), flush_bytes_));
    const __nv_bfloat16* x = x_ + (runs_ % kInputs) * max_tokens_ * hidden_;
    ++runs_;
    return x;
  }
  void Release() {
    if (x_ != nullptr) cudaFree(x_);
    if (out_ != nullptr) cudaFree(out_);
    if (flush_ != nullptr) cudaFree(flush_);
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
    x_ = nullptr;
    out_ = nullptr;
    flush_ = nullptr;
    start_ = nullptr;
    stop_ = nullptr;
  }
  MoeRandomLayer layer_;
  MoeWorkspace ws_;
  __nv_bfloat16* x_ = nullptr;
  float* out_ = nullptr;
  void* flush_ = nullptr;
  cudaEvent_t start_ = nullptr;
  cudaEvent_t stop_ = nullptr;
  size_t flush_bytes_ = 0;
  int64_t max_tokens_ = 0;
  int64_t hidden_ = 0;
  int64_t runs_ = 0;
};

struct Timed {
  MoeTileConfig config;  // as launched
  double us = 1e30;
};

// Times `cands` for `gemm` (the other GEMM fixed at `other`) with pruning; the best as launched.
Result<Timed> SearchGemm(ForwardTimer& timer, const MoeConfigTable& table, int64_t tokens,
                         MoeGemm gemm, const std::vector<MoeTileConfig>& cands,
                         const MoeTileConfig& other, const MoeTunerOptions& options) {
  Timed best;
  std::vector<MoeTileConfig> launched_seen;
  // Deeper pipelines of (kernel, split) are tried only while they keep getting faster.
  std::map<std::pair<int, int>, double> best_of_tile;
  for (const MoeTileConfig& c : cands) {
    const auto tile = std::make_pair(c.kernel, c.split_k);
    auto it = best_of_tile.find(tile);
    if (it != best_of_tile.end() && it->second < 0) continue;  // a shallower one was better
    const MoeTileConfig* gu = gemm == MoeGemm::kGateUp ? &c : &other;
    const MoeTileConfig* dn = gemm == MoeGemm::kGateUp ? &other : &c;
    SPARK_ASSIGN_OR_RETURN(MoePhaseTimes warm, timer.Run(tokens, table, gu, dn));
    (void)warm;
    const MoeTileConfig launched =
        gemm == MoeGemm::kGateUp ? timer.last_plan().gate_up : timer.last_plan().down;
    bool duplicate = false;
    for (const MoeTileConfig& s : launched_seen) duplicate = duplicate || SameConfig(s, launched);
    if (duplicate) continue;  // the workspace lowered its split-K to one already timed
    launched_seen.push_back(launched);
    std::vector<double> us;
    for (int i = 0; i < std::max(1, options.iters); ++i) {
      SPARK_ASSIGN_OR_RETURN(MoePhaseTimes t, timer.Run(tokens, table, gu, dn));
      us.push_back(1e3 * (gemm == MoeGemm::kGateUp ? t.gate_up_ms : t.down_ms));
      if (i == 0 && us[0] > best.us * options.prune_ratio) break;
    }
    const double m = Median(us);
    if (options.candidate_log) {
      char line[256];
      std::snprintf(line, sizeof(line), "batch %lld %s %s: %.1f us%s",
                    static_cast<long long>(tokens), gemm == MoeGemm::kGateUp ? "gate_up" : "down",
                    launched.ToString().c_str(), m,
                    us.size() == 1 && options.iters > 1 ? " (pruned after one run)" : "");
      options.candidate_log(line);
    }
    if (it == best_of_tile.end()) {
      best_of_tile[tile] = m;
    } else if (m > it->second) {
      it->second = -1;  // deeper got slower: stop this tile
    } else {
      it->second = m;
    }
    if (m < best.us) {
      best.us = m;
      best.config = launched;
    }
  }
  if (best.config.kernel < 0) return Internal("MoE tuning found no runnable config");
  return best;
}

moe_internal::MoeGemvParams GemvParamsOf(const MoeShape& shape, MoeWeightFormat format,
                                         int64_t tokens, const MoeGemvTiling& tiling) {
  moe_internal::MoeGemvParams p;
  p.format = format;
  p.tokens = tokens;
  p.pairs_per_token = shape.pairs_per_token();
  p.hidden = shape.hidden;
  p.inter = shape.inter;
  p.tiling = tiling;
  return p;
}

// Every split CheckMoeGemvTiling allows, one per distinct launch (MoeGemvEffectiveTiling), with
// `baseline` (the untuned table's) first.
std::vector<MoeGemvTiling> GemvCandidates(const MoeShape& shape, MoeWeightFormat format,
                                          int64_t tokens, const MoeGemvTiling& baseline) {
  std::vector<MoeGemvTiling> out = {baseline};
  const bool fp8 = format != MoeWeightFormat::kBf16;
  for (int q : {kMoeGemvHardwareConvert, kMoeGemvScaledBits, kMoeGemvHalfMma}) {
    if (!fp8 && q != kMoeGemvHardwareConvert) continue;
    for (int sweep : {0, 1}) {
      for (int k : {1, 2, 4, 8}) {
        for (int d : {4, 8, 16}) {
          for (int v : {1, 2, 3, 4}) {
            MoeGemvTiling t{k, d, v, q, sweep};
            t = moe_internal::MoeGemvEffectiveTiling(GemvParamsOf(shape, format, tokens, t));
            bool seen = false;
            for (const MoeGemvTiling& o : out) seen = seen || moe_internal::SameMoeGemvTiling(o, t);
            if (!seen) out.push_back(t);
          }
        }
      }
    }
  }
  return out;
}

struct TimedGemv {
  MoeGemvTiling tiling;
  double us = 1e30;
};

// The GEMV path's split for a bucket of `tokens`: every candidate's output checked against the
// baseline's (a split whose kernels compute something else is refused), timed as whole forwards
// with pruning, then the fastest few and the baseline timed again in turns; the baseline is kept
// unless another is more than 1% faster.
Result<TimedGemv> SearchGemv(ForwardTimer& timer, const MoeConfigTable& table,
                             const MoeShape& shape, MoeWeightFormat format, int64_t tokens,
                             const MoeTunerOptions& options) {
  const MoeGemvTiling baseline = moe_internal::MoeGemvEffectiveTiling(
      GemvParamsOf(shape, format, tokens, table.GemvTilingFor(format, tokens)));
  const std::vector<MoeGemvTiling> cands = GemvCandidates(shape, format, tokens, baseline);
  auto table_with = [&](const MoeGemvTiling& t) -> Result<MoeConfigTable> {
    MoeConfigTable copy = table;
    SPARK_RETURN_IF_ERROR(copy.SetTunedGemv(format, tokens, t));
    return copy;
  };
  auto describe = [&](const MoeGemvTiling& t) { return MoeGemvChoiceOf(t).ToString(); };
  auto log = [&](const std::string& line) {
    if (options.candidate_log)
      options.candidate_log("batch " + std::to_string(tokens) + " gemv " + line);
  };
  // Outputs are compared at the bucket's size and, for buckets of more than 2 tokens, at one
  // token fewer (the bucket serves both).
  std::vector<int64_t> check_tokens = {tokens};
  if (tokens > 2) check_tokens.push_back(tokens - 1);
  SPARK_ASSIGN_OR_RETURN(MoeConfigTable base_table, table_with(baseline));
  std::vector<std::vector<float>> references;
  for (int64_t n : check_tokens) {
    SPARK_ASSIGN_OR_RETURN(std::vector<float> r, timer.Output(n, base_table));
    references.push_back(std::move(r));
  }
  std::vector<TimedGemv> timed;
  double best = 1e30;
  for (const MoeGemvTiling& c : cands) {
    SPARK_ASSIGN_OR_RETURN(MoeConfigTable t, table_with(c));
    const bool mma = c.fp8_dequant == kMoeGemvHalfMma || baseline.fp8_dequant == kMoeGemvHalfMma;
    const double limit =
        mma ? options.gemv_max_relative_error_half_mma : options.gemv_max_relative_error;
    double err = 0;
    for (size_t i = 0; i < check_tokens.size(); ++i) {
      SPARK_ASSIGN_OR_RETURN(std::vector<float> out, timer.Output(check_tokens[i], t));
      err = std::max(err, RelativeError(out, references[i]));
    }
    if (!(err <= limit)) {
      char line[256];
      std::snprintf(line, sizeof(line), "%s: refused, output differs from %s by %.3g (relative L2)",
                    describe(c).c_str(), describe(baseline).c_str(), err);
      log(line);
      continue;
    }
    SPARK_RETURN_IF_ERROR(timer.RunWhole(tokens, t).status());  // warm-up
    std::vector<double> us;
    for (int i = 0; i < std::max(1, options.iters); ++i) {
      SPARK_ASSIGN_OR_RETURN(double u, timer.RunWhole(tokens, t));
      us.push_back(u);
      if (i == 0 && u > best * options.prune_ratio) break;
    }
    const double m = Median(us);
    char line[256];
    std::snprintf(line, sizeof(line), "%s: %.1f us%s", describe(c).c_str(), m,
                  us.size() == 1 && options.iters > 1 ? " (pruned after one run)" : "");
    log(line);
    best = std::min(best, m);
    timed.push_back({c, m});
  }
  if (timed.empty() || !moe_internal::SameMoeGemvTiling(timed.front().tiling, baseline)) {
    return Internal("MoE GEMV tuning: the baseline split " + describe(baseline) +
                    " did not run at batch " + std::to_string(tokens));
  }
  // The fastest few and the baseline again, in turns, so that drift and noise hit all alike.
  std::vector<TimedGemv> finalists(timed.begin() + 1, timed.end());
  std::sort(finalists.begin(), finalists.end(),
            [](const TimedGemv& a, const TimedGemv& b) { return a.us < b.us; });
  if (finalists.size() > 3) finalists.resize(3);
  finalists.insert(finalists.begin(), timed.front());
  std::vector<MoeConfigTable> tables;
  for (const TimedGemv& f : finalists) {
    SPARK_ASSIGN_OR_RETURN(MoeConfigTable t, table_with(f.tiling));
    tables.push_back(std::move(t));
  }
  std::vector<std::vector<double>> rounds(finalists.size());
  for (int i = 0; i < 3 * std::max(1, options.iters); ++i) {
    for (size_t f = 0; f < finalists.size(); ++f) {
      SPARK_ASSIGN_OR_RETURN(double u, timer.RunWhole(tokens, tables[f]));
      rounds[f].push_back(u);
    }
  }
  TimedGemv chosen{finalists.front().tiling, Median(rounds.front())};
  const double baseline_us = chosen.us;
  for (size_t f = 1; f < finalists.size(); ++f) {
    const double m = Median(rounds[f]);
    if (m < chosen.us && m * 1.01 < baseline_us) chosen = {finalists[f].tiling, m};
  }
  return chosen;
}

}  // namespace

int64_t MoeGemvBatchLimit(const MoeConfigTable& table, const MoeShape& shape,
                          MoeWeightFormat format) {
  return moe_internal::MoeGemvSupports(format, shape.hidden, shape.inter) ? table.gemv_max_tokens()
                                                                          : 0;
}

engine::MoeGemvChoice MoeGemvChoiceOf(const MoeGemvTiling& t) {
  engine::MoeGemvChoice c;
  c.gate_up_k_splits = t.gate_up_k_splits;
  c.gate_up_sweep = t.gate_up_sweep;
  c.down_outputs = t.down_outputs;
  c.down_vectors = t.down_vectors;
  c.fp8_dequant = MoeGemvDequantName(t.fp8_dequant);
  return c;
}

Result<MoeGemvTiling> MoeGemvTilingOf(const engine::MoeGemvChoice& c) {
  MoeGemvTiling t;
  t.gate_up_k_splits = c.gate_up_k_splits;
  t.gate_up_sweep = c.gate_up_sweep;
  t.down_outputs = c.down_outputs;
  t.down_vectors = c.down_vectors;
  SPARK_ASSIGN_OR_RETURN(t.fp8_dequant, ParseMoeGemvDequant(c.fp8_dequant));
  SPARK_RETURN_IF_ERROR(CheckMoeGemvTiling(t));
  return t;
}

Result<MoeWeightFormat> ParseMoeWeightFormat(std::string_view name) {
  if (name == "bf16") return MoeWeightFormat::kBf16;
  if (name == "fp8-per-channel" || name == "fp8-channel") return MoeWeightFormat::kFp8PerChannel;
  if (name == "fp8-block128" || name == "fp8-block") return MoeWeightFormat::kFp8Block;
  return InvalidArgument("unknown MoE weight format '" + std::string(name) +
                         "'; use bf16, fp8-channel (fp8-per-channel) or fp8-block (fp8-block128)");
}

MoeWeightFormat MoeWeightFormatOfModel(const engine::ModelConfig& config) {
  switch (config.quant.method) {
    case engine::QuantMethod::kFp8PerChannel:
      return MoeWeightFormat::kFp8PerChannel;
    case engine::QuantMethod::kFp8Block:
      return MoeWeightFormat::kFp8Block;
    case engine::QuantMethod::kNone:
      break;
  }
  return MoeWeightFormat::kBf16;
}

Result<MoeShape> MoeShapeOfModel(const engine::ModelConfig& config, int tp,
                                 bool fuse_shared_experts) {
  if (config.n_routed_experts <= 0 || config.moe_intermediate_size <= 0) {
    return InvalidArgument("the model (" + config.architecture_name +
                           ") has no routed experts: there is no MoE GEMM to tune");
  }
  if (tp < 1 || config.moe_intermediate_size % tp != 0) {
    return InvalidArgument("tensor-parallel size " + std::to_string(tp) +
                           " does not divide the experts' intermediate size " +
                           std::to_string(config.moe_intermediate_size));
  }
  MoeShape shape = MoeShapeFromConfig(config, static_cast<int>(config.moe_intermediate_size / tp));
  // As the backend decides (a shared expert of the routed experts' size, engine/cuda/moe_pack.h).
  shape.shared_experts = FusedSharedExperts(config, fuse_shared_experts);
  return shape;
}

engine::MoeDeviceClass MoeDeviceClassOf(const DeviceInfo& device, const MoeConfigTable& table) {
  return {device.name, device.cc_major, device.cc_minor, table.smem_limit_bytes()};
}

engine::MoeGemmShape MoeGemmShapeOf(const MoeShape& shape, MoeWeightFormat format) {
  return {MoeWeightFormatName(format), shape.gemm_experts(), shape.hidden, shape.inter,
          shape.pairs_per_token()};
}

engine::MoeTileChoice MoeTileChoiceOf(const MoeTileConfig& c) {
  return {c.block_m, c.block_n, c.block_k_bytes, c.warps, c.stages, c.split_k};
}

Result<MoeTileConfig> MoeTileConfigOf(const engine::MoeTileChoice& choice, MoeWeightFormat format) {
  const auto& variants = MoeKernelVariants();
  for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
    const MoeKernelVariant& k = variants[v];
    if (k.block_m != choice.block_m || k.block_n != choice.block_n ||
        k.block_k_bytes != choice.block_k_bytes || k.warps != choice.warps ||
        !MoeVariantServes(k, format))
      continue;
    const MoeTileConfig c = MoeVariantConfig(v, choice.stages, choice.split_k);
    SPARK_CHECK(MoeTileChoiceOf(c).SmemBytes() == c.SmemBytes())
        << "tuning records and the kernel disagree on shared memory";
    return c;
  }
  return NotFound("MoE tile " + choice.ToString() + " is not compiled into this build for " +
                  MoeWeightFormatName(format) + " weights; retune (spark-model tune-moe)");
}

std::vector<engine::MoeTileShape> MoeTileShapesFor(MoeWeightFormat format) {
  std::vector<engine::MoeTileShape> out;
  for (const MoeKernelVariant& k : MoeKernelVariants()) {
    if (MoeVariantServes(k, format))
      out.push_back({k.block_m, k.block_n, k.block_k_bytes, k.warps});
  }
  return out;
}

Result<std::vector<MoeTunedChoice>> MoeTunedChoicesOf(
    const std::vector<engine::MoeTuningRecord>& records, const engine::MoeDeviceClass& device,
    const MoeShape& shape, MoeWeightFormat format, const MoeConfigTable& table) {
  const engine::MoeGemmShape gemm_shape = MoeGemmShapeOf(shape, format);
  const std::vector<engine::MoeGemmDims> dims = engine::MoeGemmDimsOf(gemm_shape);
  std::vector<MoeTunedChoice> out;
  for (const engine::MoeTuningRecord& r : records) {
    if (r.device != device || r.format != gemm_shape.format || r.experts != gemm_shape.experts ||
        r.top_k != gemm_shape.top_k)
      continue;
    if (r.gemm == "gemv") {
      const engine::MoeGemmDims gemv = engine::MoeGemvDimsOf(gemm_shape);
      if (r.n != gemv.n || r.k != gemv.k) continue;
      Result<MoeGemvTiling> tiling = MoeGemvTilingOf(r.gemv);
      if (!tiling.ok()) return tiling.status().WithContext("MoE tuning record " + r.Key());
      MoeTunedChoice c;
      c.format = format;
      c.gemv = true;
      c.tokens = r.batch;
      c.pairs = r.batch * shape.pairs_per_token();
      c.gemv_tiling = *tiling;
      out.push_back(c);
      continue;
    }
    const engine::MoeGemmDims* d = nullptr;
    for (const auto& x : dims) {
      if (x.gemm == r.gemm && x.n == r.n && x.k == r.k) d = &x;
    }
    if (d == nullptr) continue;
    Result<MoeTileConfig> config = MoeTileConfigOf(r.config, format);
    if (!config.ok()) return config.status().WithContext("MoE tuning record " + r.Key());
    SPARK_RETURN_IF_ERROR(table.Check(format, *config).WithContext("MoE tuning record " + r.Key()));
    MoeTunedChoice c;
    c.format = format;
    c.gemm = r.gemm == "gate_up" ? MoeGemm::kGateUp : MoeGemm::kDown;
    c.pairs = r.batch * shape.pairs_per_token();
    c.config = *config;
    out.push_back(c);
  }
  return out;
}

Status ApplyMoeTunedChoices(const std::vector<MoeTunedChoice>& choices, MoeConfigTable& table) {
  for (const MoeTunedChoice& c : choices) {
    SPARK_RETURN_IF_ERROR(c.gemv ? table.SetTunedGemv(c.format, c.tokens, c.gemv_tiling)
                                 : table.SetTuned(c.format, c.gemm, c.pairs, c.config));
  }
  return Status::Ok();
}

// ---- MoeRandomLayer ---------------------------------------------------------------------------

Result<MoeRandomLayer> MoeRandomLayer::Create(const MoeShape& shape, MoeWeightFormat format,
                                              uint32_t seed) {
  SPARK_RETURN_IF_ERROR(shape.Validate(format));
  MoeRandomLayer l;
  auto alloc = [&](int64_t bytes) -> Result<void*> {
    void* p = nullptr;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 4))));
    l.buffers_.push_back(p);
    return p;
  };
  l.view_.shape = shape;
  l.view_.format = format;
  // Router over the routed experts; weights for every expert slot (shared ones included).
  const int64_t routed = shape.num_experts, e = shape.gemm_experts();
  const int64_t h = shape.hidden, im = shape.inter;
  const int64_t w13 = e * 2 * im * h, w2 = e * h * im;
  SPARK_ASSIGN_OR_RETURN(void* router, alloc(routed * h * 4));
  SPARK_ASSIGN_OR_RETURN(void* bias, alloc(routed * 4));
  FillFloat<<<1024, 256>>>(static_cast<float*>(router), routed * h,
                           4.0f / std::sqrt(static_cast<float>(h)), seed + 1);
  FillFloat<<<1, 256>>>(static_cast<float*>(bias), routed, 0.05f, seed + 2);
  l.view_.router = static_cast<const float*>(router);
  l.view_.router_bias = static_cast<const float*>(bias);
  if (format == MoeWeightFormat::kBf16) {
    SPARK_ASSIGN_OR_RETURN(void* a, alloc(w13 * 2));
    SPARK_ASSIGN_OR_RETURN(void* b, alloc(w2 * 2));
    FillBf16<<<4096, 256>>>(static_cast<__nv_bfloat16*>(a), w13,
                            std::sqrt(3.0f / static_cast<float>(h)), seed + 3);
    FillBf16<<<4096, 256>>>(static_cast<__nv_bfloat16*>(b), w2,
                            std::sqrt(3.0f / static_cast<float>(im)), seed + 4);
    l.view_.w13 = a;
    l.view_.w2 = b;
    l.expert_bytes_ = (2 * im * h + h * im) * 2;
  } else {
    SPARK_ASSIGN_OR_RETURN(void* a, alloc(w13));
    SPARK_ASSIGN_OR_RETURN(void* b, alloc(w2));
    FillFp8<<<4096, 256>>>(static_cast<uint8_t*>(a), w13, seed + 3);
    FillFp8<<<4096, 256>>>(static_cast<uint8_t*>(b), w2, seed + 4);
    l.view_.w13 = a;
    l.view_.w2 = b;
    const bool block = format == MoeWeightFormat::kFp8Block;
    const int64_t s13 = block ? e * 2 * (im / 128) * (h / 128) : e * 2 * im;
    const int64_t s2 = block ? e * (h / 128) * (im / 128) : e * h;
    SPARK_ASSIGN_OR_RETURN(void* sa, alloc(s13 * 4));
    SPARK_ASSIGN_OR_RETURN(void* sb, alloc(s2 * 4));
    FillFloat<<<256, 256>>>(static_cast<float*>(sa), s13,
                            0.5f / (448.f * std::sqrt(static_cast<float>(h))), seed + 5);
    FillFloat<<<256, 256>>>(static_cast<float*>(sb), s2,
                            0.5f / (448.f * std::sqrt(static_cast<float>(im))), seed + 6);
    l.view_.w13_scale = static_cast<const float*>(sa);
    l.view_.w2_scale = static_cast<const float*>(sb);
    l.expert_bytes_ = 2 * im * h + h * im + (s13 + s2) / e * 4;
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetLastError());
  SPARK_CUDA_RETURN_IF_ERROR(cudaDeviceSynchronize());
  return std::move(l);
}

MoeRandomLayer::MoeRandomLayer(MoeRandomLayer&& other) noexcept { *this = std::move(other); }

MoeRandomLayer& MoeRandomLayer::operator=(MoeRandomLayer&& other) noexcept {
  if (this != &other) {
    Release();
    view_ = other.view_;
    buffers_ = std::move(other.buffers_);
    expert_bytes_ = other.expert_bytes_;
    other.buffers_.clear();
    other.view_ = MoeLayerDevice{};
  }
  return *this;
}

MoeRandomLayer::~MoeRandomLayer() { Release(); }

void MoeRandomLayer::Release() {
  for (void* p : buffers_) cudaFree(p);
  buffers_.clear();
}

// ---- Tuner -----------------------------------------------------------------------------------

Result<MoeTuneResult> TuneMoe(const DeviceInfo& device, const MoeConfigTable& table,
                              const MoeShape& shape, MoeWeightFormat format,
                              const MoeTunerOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto elapsed_s = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::vector<int64_t> batches =
      options.batches.empty() ? engine::MoeBatchBuckets(2048) : options.batches;
  for (int64_t b : batches) {
    if (b < 1 || engine::MoeBatchBucket(b) != b) {
      return InvalidArgument("MoE tuning batch " + std::to_string(b) +
                             " is not a power of two (the table keeps one config per "
                             "power-of-two bucket)");
    }
  }
  std::sort(batches.begin(), batches.end());
  batches.erase(std::unique(batches.begin(), batches.end()), batches.end());
  SPARK_ASSIGN_OR_RETURN(ForwardTimer timer, ForwardTimer::Create(shape, format, batches.back()));

  const engine::MoeDeviceClass device_class = MoeDeviceClassOf(device, table);
  const engine::MoeGemmShape gemm_shape = MoeGemmShapeOf(shape, format);
  const std::vector<MoeTileConfig> all = table.Candidates(format);
  const int sms = std::max(1, table.multiprocessors());
  MoeTuneResult result;
  const int64_t now_ms = WallMs();
  // A record of this tuning run without its config or split.
  auto tuner_record = [&](const char* gemm, int64_t n, int64_t k, int64_t tokens, double us) {
    engine::MoeTuningRecord r;
    r.device = device_class;
    r.format = gemm_shape.format;
    r.gemm = gemm;
    r.experts = gemm_shape.experts;
    r.n = n;
    r.k = k;
    r.top_k = gemm_shape.top_k;
    r.batch = tokens;
    r.measured_us = us;
    r.tuned_unix_ms = now_ms;
    r.source = "tuner";
    return r;
  };
  for (int64_t tokens : batches) {
    if (elapsed_s() > options.max_seconds) {
      result.skipped_batches.push_back(tokens);
      continue;
    }
    const auto bucket_start = std::chrono::steady_clock::now();
    auto bucket_seconds = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - bucket_start).count();
    };
    if (moe_internal::MoeGemvServes(table, format, shape.hidden, shape.inter, tokens)) {
      SPARK_ASSIGN_OR_RETURN(TimedGemv best,
                             SearchGemv(timer, table, shape, format, tokens, options));
      const engine::MoeGemmDims dims = engine::MoeGemvDimsOf(gemm_shape);
      engine::MoeTuningRecord r = tuner_record(dims.gemm.c_str(), dims.n, dims.k, tokens, best.us);
      r.gemv = MoeGemvChoiceOf(best.tiling);
      SPARK_RETURN_IF_ERROR(r.Validate());
      result.records.push_back(std::move(r));
      result.gemv_batches.push_back(tokens);
      if (options.progress) {
        char line[512];
        std::snprintf(line, sizeof(line), "batch %5lld: GEMV path %s %.1f us forward (%.1f s)",
                      static_cast<long long>(tokens),
                      MoeGemvChoiceOf(best.tiling).ToString().c_str(), best.us, bucket_seconds());
        options.progress(line);
      }
      continue;
    }
    const int64_t pairs = tokens * shape.pairs_per_token();
    const int64_t rows_per_expert = (pairs + shape.gemm_experts() - 1) / shape.gemm_experts();
    const int64_t max_bm = std::max<int64_t>(32, 2 * rows_per_expert);
    std::vector<int> block_ms;
    for (const MoeTileConfig& c : all) {
      if (c.block_m <= max_bm &&
          std::find(block_ms.begin(), block_ms.end(), c.block_m) == block_ms.end())
        block_ms.push_back(c.block_m);
    }
    std::sort(block_ms.begin(), block_ms.end());
    double best_sum = 1e30;
    Timed best_gu, best_dn;
    for (int bm : block_ms) {
      const int64_t mblocks = std::min<int64_t>(shape.gemm_experts(), pairs) + pairs / bm;
      auto candidates_for = [&](MoeGemm gemm) {
        const int64_t n = gemm == MoeGemm::kGateUp ? int64_t{2} * shape.inter : shape.hidden;
        const int64_t k = gemm == MoeGemm::kGateUp ? shape.hidden : shape.inter;
        const int64_t k_bytes = k * (format == MoeWeightFormat::kBf16 ? 2 : 1);
        std::vector<MoeTileConfig> out;
        for (const MoeTileConfig& c : all) {
          if (c.block_m != bm) continue;
          const int64_t ctas = mblocks * ((n + c.block_n - 1) / c.block_n);
          const int64_t ktiles = (k_bytes + c.block_k_bytes - 1) / c.block_k_bytes;
          if (c.split_k > 1 && (ctas >= int64_t{2} * sms || ktiles / c.split_k < 2)) continue;
          out.push_back(c);
        }
        // Per tile and split, shallow pipelines first (the search stops going deeper once
        // slower).
        std::stable_sort(out.begin(), out.end(),
                         [](const MoeTileConfig& a, const MoeTileConfig& b) {
                           return std::tie(a.kernel, a.split_k, a.stages) <
                                  std::tie(b.kernel, b.split_k, b.stages);
                         });
        return out;
      };
      const std::vector<MoeTileConfig> gu_cands = candidates_for(MoeGemm::kGateUp);
      const std::vector<MoeTileConfig> dn_cands = candidates_for(MoeGemm::kDown);
      if (gu_cands.empty() || dn_cands.empty()) continue;
      // Down fixed at the table's heuristic choice when it has this block_m, else the first.
      MoeTileConfig down0 = table.Select(format, MoeGemm::kDown, pairs, shape.gemm_experts(),
                                         shape.hidden, shape.inter, 8);
      if (down0.block_m != bm) down0 = dn_cands.front();
      SPARK_ASSIGN_OR_RETURN(
          Timed gu, SearchGemm(timer, table, tokens, MoeGemm::kGateUp, gu_cands, down0, options));
      SPARK_ASSIGN_OR_RETURN(
          Timed dn, SearchGemm(timer, table, tokens, MoeGemm::kDown, dn_cands, gu.config, options));
      if (gu.us + dn.us < best_sum) {
        best_sum = gu.us + dn.us;
        best_gu = gu;
        best_dn = dn;
      }
    }
    if (best_gu.config.kernel < 0) {
      return Internal("no MoE tile config within " + std::to_string(table.smem_limit_bytes()) +
                      " bytes of shared memory could run batch " + std::to_string(tokens));
    }
    for (const auto& [gemm, timed] :
         {std::make_pair(MoeGemm::kGateUp, best_gu), std::make_pair(MoeGemm::kDown, best_dn)}) {
      const bool gate_up = gemm == MoeGemm::kGateUp;
      engine::MoeTuningRecord r = tuner_record(
          gate_up ? "gate_up" : "down", gate_up ? int64_t{2} * shape.inter : shape.hidden,
          gate_up ? shape.hidden : shape.inter, tokens, timed.us);
      r.config = MoeTileChoiceOf(timed.config);
      SPARK_RETURN_IF_ERROR(r.Validate());
      result.records.push_back(std::move(r));
    }
    if (options.progress) {
      char line[512];
      std::snprintf(line, sizeof(line),
                    "batch %5lld: gate_up %s %.1f us | down %s %.1f us (%.1f s)",
                    static_cast<long long>(tokens), best_gu.config.ToString().c_str(), best_gu.us,
                    best_dn.config.ToString().c_str(), best_dn.us, bucket_seconds());
      options.progress(line);
    }
  }
  result.seconds = elapsed_s();
  result.timed_forwards = timer.runs();
  return result;
}

Result<std::vector<MoeTableComparison>> CompareMoeTables(
    const MoeConfigTable& heuristic, const MoeConfigTable& tuned,
    const std::vector<MoeTunedChoice>& expected, const MoeShape& shape, MoeWeightFormat format,
    const std::vector<int64_t>& batches, int iters) {
  if (batches.empty()) return std::vector<MoeTableComparison>{};
  const int64_t max_tokens = *std::max_element(batches.begin(), batches.end());
  SPARK_ASSIGN_OR_RETURN(ForwardTimer timer, ForwardTimer::Create(shape, format, max_tokens));
  std::vector<MoeTableComparison> out;
  for (int64_t tokens : batches) {
    MoeTableComparison c;
    c.batch = tokens;
    for (int which = 0; which < 2; ++which) {
      const MoeConfigTable& table = which == 0 ? heuristic : tuned;
      const bool gemv =
          moe_internal::MoeGemvServes(table, format, shape.hidden, shape.inter, tokens);
      // GEMV-path forwards are timed whole (as tuned), tile forwards by their GEMM phases.
      auto run = [&]() -> Result<double> {
        if (gemv) return timer.RunWhole(tokens, table);
        SPARK_ASSIGN_OR_RETURN(MoePhaseTimes t, timer.Run(tokens, table, nullptr, nullptr));
        return 1e3 * (t.gate_up_ms + t.down_ms);
      };
      std::vector<double> us;
      SPARK_RETURN_IF_ERROR(run().status());  // warm-up
      for (int i = 0; i < std::max(1, iters); ++i) {
        SPARK_ASSIGN_OR_RETURN(double u, run());
        us.push_back(u);
      }
      const MoePlan& plan = timer.last_plan();
      if (which == 0) {
        c.heuristic_gemm_us = Median(us);
        c.heuristic_gate_up = plan.gate_up;
        c.heuristic_down = plan.down;
        c.heuristic_gemv = plan.gemv_tiling;
      } else {
        c.tuned_gemm_us = Median(us);
        c.tuned_gate_up = plan.gate_up;
        c.tuned_down = plan.down;
        c.tuned_gemv = plan.gemv_tiling;
      }
    }
    const int64_t pairs = tokens * shape.pairs_per_token();
    const MoeTunedChoice* gu = nullptr;
    const MoeTunedChoice* dn = nullptr;
    const MoeTunedChoice* gv = nullptr;
    for (const MoeTunedChoice& e : expected) {
      if (e.format != format) continue;
      // GEMV splits are kept per token bucket, tile configs per pair bucket.
      if (e.gemv ? engine::MoeBatchBucket(e.tokens) != engine::MoeBatchBucket(tokens)
                 : engine::MoeBatchBucket(e.pairs) != engine::MoeBatchBucket(pairs))
        continue;
      (e.gemv ? gv : e.gemm == MoeGemm::kGateUp ? gu : dn) = &e;
    }
    c.gemv = timer.last_plan().gemv;
    if (c.gemv) {
      // Compared as launched: fields the kernels ignore for this shape do not count.
      auto effective = [&](const MoeGemvTiling& t) {
        return moe_internal::MoeGemvEffectiveTiling(GemvParamsOf(shape, format, tokens, t));
      };
      c.launched_expected =
          gv != nullptr &&
          moe_internal::SameMoeGemvTiling(effective(gv->gemv_tiling), effective(c.tuned_gemv));
    } else {
      c.launched_expected = gu != nullptr && dn != nullptr &&
                            SameConfig(gu->config, c.tuned_gate_up) &&
                            SameConfig(dn->config, c.tuned_down);
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace spark::cuda
