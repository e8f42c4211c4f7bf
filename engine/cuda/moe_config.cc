#include "engine/cuda/moe_config.h"

#include <algorithm>

namespace spark::cuda {

// Each expert used pads its rows up to a whole block.
int64_t MoeMaxMblocks(int64_t pairs, int experts, int block_m) {
  return (pairs + block_m - 1) / block_m + std::min<int64_t>(experts, pairs);
}

namespace {

constexpr int kMinStages = 2;
constexpr int kMaxStages = 6;
constexpr int kMaxSplitK = 16;
// Split-K scratch of a workspace: partial tiles (16 MiB at most) and arrival counters.
constexpr int64_t kSplitPartialFloats = int64_t{4} << 20;
constexpr int64_t kSplitCounters = 16384;
// Split-K the heuristic may ask for (what the workspace's partial tiles are sized for).
constexpr int kSelectMaxSplitK = 8;

// Deepest pipeline of variant `index` within `limit` and `max_stages`; 0 if none fits.
int DeepestStages(int index, int64_t limit, int max_stages) {
  for (int s = max_stages; s >= kMinStages; --s) {
    if (MoeVariantConfig(index, s, 1).SmemBytes() <= limit) return s;
  }
  return 0;
}

}  // namespace

bool MoeVariantServes(const MoeKernelVariant& v, MoeWeightFormat format) {
  switch (format) {
    case MoeWeightFormat::kBf16:
      return v.bf16;
    case MoeWeightFormat::kFp8PerChannel:
      return v.fp8_per_channel;
    case MoeWeightFormat::kFp8Block:
      return v.fp8_block;
  }
  return false;
}

MoeTileConfig MoeVariantConfig(int index, int stages, int split_k) {
  const MoeKernelVariant& v = MoeKernelVariants()[index];
  MoeTileConfig c;
  c.kernel = index;
  c.block_m = v.block_m;
  c.block_n = v.block_n;
  c.block_k_bytes = v.block_k_bytes;
  c.warps = v.warps;
  c.stages = stages;
  c.split_k = split_k;
  return c;
}

const std::vector<MoeKernelVariant>& MoeKernelVariants() {
  // {block_m, block_n, block_k_bytes, warps, bf16, fp8 per-channel, fp8 block}. Block FP8 needs
  // one 128-element K group per stage (128 bytes) and room for a second accumulator set. The
  // order is the kernel index moe_gemm.cu dispatches on.
  static const std::vector<MoeKernelVariant> variants = {
      {16, 64, 256, 4, true, true, false},  {16, 64, 128, 4, true, true, true},
      {16, 128, 128, 4, true, true, true},  {32, 128, 128, 4, true, true, true},
      {64, 128, 128, 4, true, true, true},  {64, 256, 128, 8, true, true, true},
      {128, 128, 128, 8, true, true, true}, {128, 256, 128, 8, true, true, false},
  };
  return variants;
}

MoeScratchSizes MoeScratchFor(int experts, int hidden, int inter, int top_k, int64_t max_tokens) {
  const int64_t pairs = std::max<int64_t>(0, max_tokens) * std::max(0, top_k);
  MoeScratchSizes s;
  auto cover = [&](int block_m) {
    const int64_t mblocks = MoeMaxMblocks(pairs, experts, block_m);
    s.max_mblocks = std::max(s.max_mblocks, mblocks);
    s.max_rows = std::max(s.max_rows, mblocks * block_m);
  };
  for (const MoeKernelVariant& v : MoeKernelVariants()) cover(v.block_m);
  cover(kMoeGroupedBlockM);
  s.split_partial_floats = std::min<int64_t>(
      kSplitPartialFloats, s.max_rows * std::max<int64_t>(hidden, int64_t{2} * inter) * 8);
  s.split_counters = kSplitCounters;
  return s;
}

const char* MoeWeightFormatName(MoeWeightFormat format) {
  switch (format) {
    case MoeWeightFormat::kBf16:
      return "bf16";
    case MoeWeightFormat::kFp8PerChannel:
      return "fp8-per-channel";
    case MoeWeightFormat::kFp8Block:
      return "fp8-block128";
  }
  return "unknown";
}

std::string MoeTileConfig::ToString() const {
  return "m" + std::to_string(block_m) + "n" + std::to_string(block_n) + "k" +
         std::to_string(block_k_bytes) + "B w" + std::to_string(warps) + " s" +
         std::to_string(stages) + " split" + std::to_string(split_k) + " (" +
         std::to_string(SmemBytes()) + " B smem)";
}

Result<MoeConfigTable> MoeConfigTable::ForLimit(int64_t smem_limit_bytes, int multiprocessors) {
  if (smem_limit_bytes <= 0) {
    return InvalidArgument("MoE config table: the shared memory per block must be positive, got " +
                           std::to_string(smem_limit_bytes));
  }
  MoeConfigTable t;
  t.smem_limit_bytes_ = smem_limit_bytes;
  t.multiprocessors_ = multiprocessors;
  bool any = false;
  for (int v = 0; v < static_cast<int>(MoeKernelVariants().size()); ++v) {
    any = any || DeepestStages(v, t.smem_limit_bytes_, kMaxStages) > 0;
  }
  if (!any) {
    return InvalidArgument("no MoE tile config fits " + std::to_string(t.smem_limit_bytes_) +
                           " bytes of shared memory per block; raise the shared-memory cap");
  }
  return t;
}

std::vector<MoeTileConfig> MoeConfigTable::Candidates(MoeWeightFormat format) const {
  std::vector<MoeTileConfig> out;
  const auto& variants = MoeKernelVariants();
  for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
    if (!MoeVariantServes(variants[v], format)) continue;
    for (int s = kMinStages; s <= kMaxStages; ++s) {
      for (int split : {1, 2, 4, 8}) {
        MoeTileConfig c = MoeVariantConfig(v, s, split);
        if (c.SmemBytes() <= smem_limit_bytes_) out.push_back(c);
      }
    }
  }
  return out;
}

int MoeConfigTable::BlockMFor(MoeWeightFormat format, int64_t pairs, int experts) const {
  // A tuned gate/up config of this bucket sets the padding (its down config shares it).
  const int bucket = Bucket(pairs);
  for (const Tuned& t : tuned_) {
    if (t.format == format && t.gemm == MoeGemm::kGateUp && t.bucket == bucket) {
      return t.config.block_m;
    }
  }
  const double rows_per_expert =
      static_cast<double>(pairs) / static_cast<double>(std::max(1, experts));
  // Measured on an H100 (bench_moe --tune-log, every candidate, 2026-12-07): 16-row tiles win up
  // to ~16 rows per expert (256 tokens of GLM-4.7 tp=4 and GLM-4.5-Air: 2-8% faster than 32-row
  // ones), 32-row tiles from there to at least 64 (1,024 tokens: 3-35% faster than 64 and 128);
  // larger tiles pay only for big prefill batches.
  int want = rows_per_expert <= 16    ? 16
             : rows_per_expert <= 128 ? 32
             : rows_per_expert <= 512 ? 64
                                      : 128;
  // The largest block_m not above `want` that some variant of this format can run here.
  int best = 0;
  const auto& variants = MoeKernelVariants();
  for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
    if (!MoeVariantServes(variants[v], format)) continue;
    if (DeepestStages(v, smem_limit_bytes_, kMaxStages) < kMinStages) continue;
    const int bm = variants[v].block_m;
    if (bm <= want && bm > best) best = bm;
  }
  return best > 0 ? best : 16;
}

int MoeConfigTable::Bucket(int64_t pairs) {
  int b = 0;
  while ((int64_t{1} << b) < pairs) ++b;
  return b;
}

MoeTileConfig MoeConfigTable::Select(MoeWeightFormat format, MoeGemm gemm, int64_t pairs,
                                     int experts, int64_t n, int64_t k, int max_split_k) const {
  const int bm = BlockMFor(format, pairs, experts);
  const int bucket = Bucket(pairs);
  for (const Tuned& t : tuned_) {
    if (t.format == format && t.gemm == gemm && t.bucket == bucket && t.config.block_m == bm) {
      MoeTileConfig c = t.config;
      c.split_k = std::max(1, std::min(c.split_k, max_split_k));
      return c;
    }
  }
  // Preferred tiles per block_m (first that fits with a pipeline of >= 3 stages wins).
  struct Pref {
    int block_n, block_k_bytes, warps;
  };
  std::vector<Pref> prefs;
  switch (bm) {
    case 16:
      // Measured best on an H200: 64x256-byte tiles for gate/up (K = hidden), 64x128 for down.
      prefs = gemm == MoeGemm::kGateUp ? std::vector<Pref>{{64, 256, 4}, {64, 128, 4}}
                                       : std::vector<Pref>{{64, 128, 4}, {64, 256, 4}};
      break;
    case 32:
      prefs = {{128, 128, 4}};
      break;
    case 64:
      prefs = {{128, 128, 4}, {256, 128, 8}};
      break;
    default:
      prefs = {{128, 128, 8}, {256, 128, 8}};
      break;
  }
  const auto& variants = MoeKernelVariants();
  // Shallow pipelines with more resident thread blocks per SM measured faster than deep ones:
  // the deepest pipeline of at most 3 stages within kPreferredSmemBytes first (H100, every
  // candidate of bench_moe --tune-log, 2026-12-07: m16n64k256 with 2 stages against 3, 83 / 91 us
  // of GLM-4.7 tp=4 gate/up at 8 tokens, 449 / 521 us of GLM-4.5-Air at 256; m32n128 with 2
  // against 3 at 1,024 tokens, 361 / 384 and 931 / 1,030 us), then any pipeline of 2-3 stages.
  constexpr int kSelectMaxStages = 3;
  constexpr int64_t kPreferredSmemBytes = 42 * 1024;
  MoeTileConfig chosen;
  for (const int64_t limit :
       {std::min(smem_limit_bytes_, kPreferredSmemBytes), smem_limit_bytes_}) {
    for (const Pref& pref : prefs) {
      for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
        const MoeKernelVariant& var = variants[v];
        if (var.block_m != bm || var.block_n != pref.block_n ||
            var.block_k_bytes != pref.block_k_bytes || var.warps != pref.warps ||
            !MoeVariantServes(var, format))
          continue;
        const int s = DeepestStages(v, limit, kSelectMaxStages);
        if (s >= kMinStages) {
          chosen = MoeVariantConfig(v, s, 1);
          break;
        }
      }
      if (chosen.kernel >= 0) break;
    }
    if (chosen.kernel >= 0) break;
  }
  if (chosen.kernel < 0) {
    // Any variant of this block_m that fits.
    for (int v = 0; v < static_cast<int>(variants.size()) && chosen.kernel < 0; ++v) {
      if (variants[v].block_m != bm || !MoeVariantServes(variants[v], format)) continue;
      const int s = DeepestStages(v, smem_limit_bytes_, kMaxStages);
      if (s >= kMinStages) chosen = MoeVariantConfig(v, s, 1);
    }
  }
  // Split K only while the grid has fewer than ~2.5 thread blocks per SM (batch-1 decode of
  // narrow experts); beyond that the partial-tile traffic costs more than it gains.
  const int64_t mblocks = std::min<int64_t>(experts, pairs) + pairs / bm;
  const int64_t ctas = std::max<int64_t>(1, mblocks * ((n + chosen.block_n - 1) / chosen.block_n));
  const int64_t target = int64_t{5} * std::max(1, multiprocessors_) / 2;
  const int64_t ktiles =
      (k * (format == MoeWeightFormat::kBf16 ? 2 : 1) + chosen.block_k_bytes - 1) /
      chosen.block_k_bytes;
  int split = 1;
  while (split * 2 <= max_split_k && ctas * split < target && ktiles / (split * 2) >= 2) split *= 2;
  chosen.split_k = split;
  return chosen;
}

Status MoeConfigTable::Check(MoeWeightFormat format, const MoeTileConfig& c) const {
  const auto& variants = MoeKernelVariants();
  if (c.kernel < 0 || c.kernel >= static_cast<int>(variants.size())) {
    return InvalidArgument("MoE tile config names kernel variant " + std::to_string(c.kernel) +
                           ", which does not exist");
  }
  const MoeKernelVariant& v = variants[c.kernel];
  if (v.block_m != c.block_m || v.block_n != c.block_n || v.block_k_bytes != c.block_k_bytes ||
      v.warps != c.warps) {
    return InvalidArgument("MoE tile config " + c.ToString() +
                           " does not match its kernel variant's tile shape");
  }
  if (!MoeVariantServes(v, format)) {
    return InvalidArgument("MoE tile config " + c.ToString() + " cannot run " +
                           MoeWeightFormatName(format) + " weights");
  }
  if (c.stages < kMinStages || c.stages > kMaxStages || c.split_k < 1 || c.split_k > kMaxSplitK) {
    return InvalidArgument("MoE tile config " + c.ToString() +
                           ": stages must be 2..6 and split-K 1..16");
  }
  if (c.SmemBytes() > smem_limit_bytes_) {
    return InvalidArgument("MoE tile config " + c.ToString() +
                           " needs more shared memory than the " +
                           std::to_string(smem_limit_bytes_) + " bytes per block allowed here");
  }
  return Status::Ok();
}

MoeScratchSizes MoeConfigTable::ScratchFor(MoeWeightFormat format, int experts, int hidden,
                                           int inter, int top_k, int64_t max_tokens) const {
  MoeScratchSizes s = MoeScratchFor(experts, hidden, inter, top_k, max_tokens);
  for (int64_t tokens = 1; tokens <= max_tokens; ++tokens) {
    const int64_t pairs = tokens * top_k;
    const int bm = BlockMFor(format, pairs, experts);
    const int64_t mblocks = MoeMaxMblocks(pairs, experts, bm);
    for (const MoeGemm gemm : {MoeGemm::kGateUp, MoeGemm::kDown}) {
      const int64_t n = gemm == MoeGemm::kGateUp ? int64_t{2} * inter : hidden;
      const int64_t k = gemm == MoeGemm::kGateUp ? hidden : inter;
      const MoeTileConfig c = Select(format, gemm, pairs, experts, n, k, kSelectMaxSplitK);
      if (c.split_k <= 1) continue;
      const int64_t tiles = mblocks * ((n + c.block_n - 1) / c.block_n);
      s.split_partial_floats =
          std::max(s.split_partial_floats, tiles * c.split_k * c.block_m * c.block_n);
      s.split_counters = std::max(s.split_counters, tiles);
    }
  }
  return s;
}

Result<MoeLaunch> MoeConfigTable::PlanLaunch(MoeWeightFormat format, int experts, int hidden,
                                             int inter, int top_k, int64_t tokens,
                                             const MoeScratchSizes& scratch,
                                             const MoeTileConfig* forced_gate_up,
                                             const MoeTileConfig* forced_down) const {
  const int64_t pairs = tokens * top_k;
  MoeLaunch plan;
  if ((forced_gate_up == nullptr) != (forced_down == nullptr)) {
    return InvalidArgument("MoE launch: force both tile configs or neither");
  }
  if (forced_gate_up != nullptr) {
    plan.gate_up = *forced_gate_up;
    plan.down = *forced_down;
  } else {
    plan.gate_up = Select(format, MoeGemm::kGateUp, pairs, experts, int64_t{2} * inter, hidden,
                          kSelectMaxSplitK);
    plan.down = Select(format, MoeGemm::kDown, pairs, experts, hidden, inter, kSelectMaxSplitK);
  }
  SPARK_RETURN_IF_ERROR(Check(format, plan.gate_up));
  SPARK_RETURN_IF_ERROR(Check(format, plan.down));
  if (plan.gate_up.block_m != plan.down.block_m) {
    return InvalidArgument("MoE launch: gate/up " + plan.gate_up.ToString() + " and down " +
                           plan.down.ToString() +
                           " must share block_m (the permutation's row padding)");
  }
  const int bm = plan.gate_up.block_m;
  plan.mblocks = MoeMaxMblocks(pairs, experts, bm);
  plan.rows = plan.mblocks * bm;
  if (plan.mblocks > scratch.max_mblocks || plan.rows > scratch.max_rows) {
    return OutOfRange("MoE launch of " + std::to_string(tokens) + " tokens with " +
                      std::to_string(bm) + "-row tiles needs " + std::to_string(plan.rows) +
                      " rows in " + std::to_string(plan.mblocks) + " blocks; the workspace holds " +
                      std::to_string(scratch.max_rows) + " rows in " +
                      std::to_string(scratch.max_mblocks) + " blocks (made for fewer tokens)");
  }
  // Split-K only as far as the partial-tile scratch reaches.
  auto fit_split = [&](MoeTileConfig& c, int64_t n) {
    const int64_t tiles = plan.mblocks * ((n + c.block_n - 1) / c.block_n);
    while (c.split_k > 1 &&
           (tiles * c.split_k * c.block_m * c.block_n > scratch.split_partial_floats ||
            tiles > scratch.split_counters))
      c.split_k /= 2;
  };
  fit_split(plan.gate_up, int64_t{2} * inter);
  fit_split(plan.down, hidden);
  return plan;
}

Status CheckMoeGemvTiling(const MoeGemvTiling& tiling) {
  const int k = tiling.gate_up_k_splits;
  const int d = tiling.down_outputs;
  const int v = tiling.down_vectors;
  if (k != 0 && k != 1 && k != 2 && k != 4 && k != 8) {
    return InvalidArgument("MoE GEMV gate/up K splits " + std::to_string(k) +
                           " not supported: use 1, 2, 4 or 8 (0 = the default)");
  }
  if (d != 0 && d != 4 && d != 8 && d != 16) {
    return InvalidArgument("MoE GEMV down outputs per block " + std::to_string(d) +
                           " not supported: use 4, 8 or 16 (0 = the default)");
  }
  if (tiling.gate_up_sweep != 0 && tiling.gate_up_sweep != 1) {
    return InvalidArgument("MoE GEMV gate_up_sweep " + std::to_string(tiling.gate_up_sweep) +
                           " not supported: use 0 (row-group blocks) or 1 (row sweep)");
  }
  if (v < 0 || v > 4) {
    return InvalidArgument("MoE GEMV down vectors in flight " + std::to_string(v) +
                           " not supported: use 1, 2, 3, or 4 for every item of a warp at once "
                           "(0 = the default)");
  }
  const int q = tiling.fp8_dequant;
  if (q < 0 || q > kMoeGemvHalfMma) {
    return InvalidArgument("MoE GEMV FP8 dequantisation " + std::to_string(q) +
                           " not supported: use 1 (hardware conversion), 2 (scaled bits) or 3 "
                           "(f16 tensor-core fragments), 0 = the default");
  }
  return Status::Ok();
}

const char* MoeGemvDequantName(int fp8_dequant) {
  switch (fp8_dequant <= 0 ? kMoeGemvFp8DequantDefault : fp8_dequant) {
    case kMoeGemvScaledBits:
      return "scaled_bits";
    case kMoeGemvHalfMma:
      return "half_mma";
    default:
      return "convert";
  }
}

Result<int> ParseMoeGemvDequant(std::string_view name) {
  for (int q : {kMoeGemvHardwareConvert, kMoeGemvScaledBits, kMoeGemvHalfMma}) {
    if (name == MoeGemvDequantName(q)) return q;
  }
  return InvalidArgument("MoE GEMV FP8 dequantisation '" + std::string(name) +
                         "' not known: use convert, scaled_bits or half_mma");
}

Status MoeConfigTable::SetGemvTiling(const MoeGemvTiling& tiling) {
  SPARK_RETURN_IF_ERROR(CheckMoeGemvTiling(tiling));
  gemv_tiling_ = tiling;
  return Status::Ok();
}

Status MoeConfigTable::SetTunedGemv(MoeWeightFormat format, int64_t tokens,
                                    const MoeGemvTiling& tiling) {
  SPARK_RETURN_IF_ERROR(CheckMoeGemvTiling(tiling));
  if (tokens < 1) {
    return InvalidArgument("a tuned MoE GEMV split needs a batch of at least 1 token, got " +
                           std::to_string(tokens));
  }
  const int bucket = Bucket(tokens);
  for (TunedGemv& t : tuned_gemv_) {
    if (t.format == format && t.bucket == bucket) {
      t.tiling = tiling;
      return Status::Ok();
    }
  }
  tuned_gemv_.push_back({format, bucket, tiling});
  return Status::Ok();
}

const MoeGemvTiling& MoeConfigTable::GemvTilingFor(MoeWeightFormat format, int64_t tokens) const {
  const int bucket = Bucket(tokens);
  for (const TunedGemv& t : tuned_gemv_) {
    if (t.format == format && t.bucket == bucket) return t.tiling;
  }
  return gemv_tiling_;
}

Status MoeConfigTable::SetTuned(MoeWeightFormat format, MoeGemm gemm, int64_t pairs,
                                const MoeTileConfig& config) {
  SPARK_RETURN_IF_ERROR(Check(format, config));
  const int bucket = Bucket(pairs);
  for (Tuned& t : tuned_) {
    if (t.format == format && t.gemm == gemm && t.bucket == bucket) {
      t.config = config;
      return Status::Ok();
    }
  }
  tuned_.push_back({format, gemm, bucket, config});
  return Status::Ok();
}

}  // namespace spark::cuda
