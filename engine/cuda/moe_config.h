// Tile configurations of the fused MoE grouped GEMM and the selector that picks one per GEMM.
//
// A MoeTileConfig is one compiled kernel variant (BLOCK_M x BLOCK_N tile, BLOCK_K bytes per
// K step, warps) plus its run-time knobs (pipeline stages, split-K). Its shared memory (all of
// it dynamic) is a row table of 16 bytes per row, rounded up to 128, plus
// stages * (BLOCK_M + BLOCK_N) * BLOCK_K bytes of A and B tiles.
// MoeConfigTable knows the device's opt-in shared memory per block (or a lower cap that emulates
// a smaller device such as GB10's 101,376 bytes) and NEVER hands out, or lets MoeForward launch,
// a config above that limit. Per (GEMM, batch-size bucket) a tuned choice can be set (issue 7's
// autotuner); otherwise a heuristic picks a config that fills the GPU (split-K at small batch).
// PlanLaunch turns the choice into what one forward launches and checks it against the
// workspace's scratch (MoeScratchFor), so a forward never outgrows its buffers.
//
// Host code only (no CUDA calls) except MoeConfigTable::Create (defined in moe_gemm.cu), so CPU
// tests cover the selection and sizing; ForLimit builds a table without a device.
//
// Thread safety: a table is immutable after Create except the setters (SetTuned, SetTunedGemv,
// ...), which callers must not race with MoeForward. Ownership: a value type.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/cuda/device_info.h"

namespace spark::cuda {

// How the expert weights (and therefore the GEMM's A operand) are stored.
enum class MoeWeightFormat : uint8_t {
  kBf16,           // BF16 weights, BF16 activations
  kFp8PerChannel,  // e4m3 weights with a scale per output row, e4m3 activations per token
  kFp8Block,       // e4m3 weights with 128x128 block scales, activations in 1x128 groups
};
const char* MoeWeightFormatName(MoeWeightFormat format);

// The two GEMMs of a MoE layer.
enum class MoeGemm : uint8_t {
  kGateUp,  // [rows, H] x w13[e]^T -> SiLU(gate) * up -> [rows, Im]
  kDown,    // [rows, Im] x w2[e]^T * routing weight -> [pairs, H]
};

// Token count up to which a forward runs the GEMV path by default (MoeConfigTable): H100,
// bench_moe at GLM-4.7 tp=4 and GLM-4.5-Air shapes, FP8: GEMVs faster at 1, 2 and 4 tokens,
// the tiles at 8 (Air).
constexpr int kMoeGemvMaxTokensDefault = 4;

// Pairs per group of the expert-grouped kernels (engine/cuda/moe_grouped.h): the permutation's
// block_m on that path.
constexpr int kMoeGroupedBlockM = 8;
// Groups the permutation can make of `pairs` pairs over `experts` expert slots with block_m rows
// per group (each expert's segment padded to whole groups).
int64_t MoeMaxMblocks(int64_t pairs, int experts, int block_m);

// Work split of the GEMV path's kernels (engine/cuda/moe_gemv.h); 0 = the default: 1 K split,
// 8 outputs up to 2 tokens and 16 from 4, 1 vector in flight (each the fastest or within 5% of it
// at every token count in bench_moe's sweep on an H100, 2026-12-07), hardware conversion.
struct MoeGemvTiling {
  int gate_up_k_splits = 0;  // warps of a gate/up block that split H for one row group: 1, 2, 4, 8
  int down_outputs = 0;      // hidden columns of one down block: 4, 8, 16
  // 16-byte vectors per weight row and lane in flight in down: 1, 2, 3; or 4: every (pair, 4
  // outputs) item of a warp loaded at once, for rows of at most one vector per lane (Im <= 512
  // FP8 elements, e.g. GLM-4.7 at tp 4; other shapes run 1).
  int down_vectors = 0;
  // How FP8 weights become products: kMoeGemvHardwareConvert (E4M3x2 -> half2 -> float2, FMAs),
  // kMoeGemvScaledBits (integer bit placement, engine/cuda/device_math.cuh Fp8x4ScaledFloats;
  // 2-10% slower on an H100, 2026-12-07) or kMoeGemvHalfMma (E4M3x2 -> f16x2 into mma.sync
  // fragments, activations staged as f16 times a power of two, fp32 sums on the tensor cores:
  // engine/cuda/fp8_mma_dot.cuh; gate/up splits H over gate_up_k_splits warps per 16-row group,
  // down takes 16 hidden columns per block and ignores down_outputs / down_vectors; shapes with
  // H or Im not a multiple of 64, or more than 20,480 staged elements, run the conversion).
  int fp8_dequant = 0;
  // 1: gate/up with whole rows per block over a persistent grid (consecutive row groups of one
  // expert read together; engine/cuda/moe_gemv.cu GateUpSweepKernel; H up to 1,024 vectors per
  // row), for the CUDA-core dequantisations; 0: the row-group blocks (default).
  int gate_up_sweep = 0;
};
constexpr int kMoeGemvHardwareConvert = 1;
constexpr int kMoeGemvScaledBits = 2;
constexpr int kMoeGemvHalfMma = 3;
constexpr int kMoeGemvFp8DequantDefault = kMoeGemvHardwareConvert;
// InvalidArgument naming the value and the ones allowed when a field is outside those listed.
Status CheckMoeGemvTiling(const MoeGemvTiling& tiling);
// Names of the FP8 dequantisations in tuning records: "convert", "scaled_bits", "half_mma"
// (0, the default, is named as the default's).
const char* MoeGemvDequantName(int fp8_dequant);
// The value of a name; InvalidArgument naming the known ones.
Result<int> ParseMoeGemvDequant(std::string_view name);

struct MoeTileConfig {
  int kernel = -1;        // index of the compiled variant (MoeKernelVariants())
  int block_m = 0;        // rows (token-expert pairs) per tile; also the permutation's padding
  int block_n = 0;        // output columns per tile
  int block_k_bytes = 0;  // bytes of K per pipeline stage (64 BF16 or 128 FP8 elements per 128)
  int warps = 0;
  int stages = 0;   // cp.async pipeline depth (run time)
  int split_k = 1;  // K split across thread blocks, reduced deterministically (run time)

  int64_t SmemBytes() const {
    return (int64_t{block_m} * 16 + 16 + 127) / 128 * 128 +
           int64_t{stages} * (block_m + block_n) * block_k_bytes;
  }
  std::string ToString() const;
};

// A compiled kernel variant: tile shape and the formats it serves.
struct MoeKernelVariant {
  int block_m, block_n, block_k_bytes, warps;
  bool bf16, fp8_per_channel, fp8_block;
};
const std::vector<MoeKernelVariant>& MoeKernelVariants();
// Whether variant `v` is compiled for `format` weights.
bool MoeVariantServes(const MoeKernelVariant& v, MoeWeightFormat format);
// MoeKernelVariants()[index] as a config with `stages` pipeline stages and split-K `split_k`.
MoeTileConfig MoeVariantConfig(int index, int stages, int split_k);

// Device scratch of a MoE forward (MoeWorkspace's buffers), in elements.
struct MoeScratchSizes {
  int64_t max_rows = 0;              // permuted token-expert rows including block padding
  int64_t max_mblocks = 0;           // BLOCK_M row blocks (the GEMM grid's first dimension)
  int64_t split_partial_floats = 0;  // split-K partial tiles
  int64_t split_counters = 0;        // split-K arrival counters (one per output tile)
};

// Scratch for up to `max_tokens` tokens of a layer with `experts` routed experts of width
// `inter`, hidden size `hidden` and `top_k` experts per token, valid for EVERY compiled block_m:
// one workspace serves tables with any shared-memory limit and any tuned config.
MoeScratchSizes MoeScratchFor(int experts, int hidden, int inter, int top_k, int64_t max_tokens);

// What one forward launches: both GEMM configs (same block_m: the permutation's padding), the
// row-block grid bound and the padded rows it may touch.
struct MoeLaunch {
  MoeTileConfig gate_up;
  MoeTileConfig down;
  int64_t mblocks = 0;
  int64_t rows = 0;
};

class MoeConfigTable {
 public:
  // Limit = the device's opt-in shared memory per block, or `smem_cap_bytes` when it is
  // smaller and positive. Raises each variant's dynamic shared-memory attribute to the device's
  // limit (call with the device current); the cap is enforced by Select/Check/MoeForward.
  static Result<MoeConfigTable> Create(const DeviceInfo& device, int64_t smem_cap_bytes = 0);
  // The same table without touching a device (planning, tests): `smem_limit_bytes` is the
  // shared memory per block allowed, `multiprocessors` the SM count the heuristic fills.
  static Result<MoeConfigTable> ForLimit(int64_t smem_limit_bytes, int multiprocessors);

  int64_t smem_limit_bytes() const { return smem_limit_bytes_; }
  int multiprocessors() const { return multiprocessors_; }

  // Every config (variant x stages x split-K) valid for `format` within the shared-memory limit.
  std::vector<MoeTileConfig> Candidates(MoeWeightFormat format) const;

  // The permutation's row padding for a batch of `pairs` token-expert pairs over `experts`
  // (both GEMMs use the same block_m): a tuned gate/up config's block_m for this bucket, else the
  // heuristic's.
  int BlockMFor(MoeWeightFormat format, int64_t pairs, int experts) const;

  // The config for one GEMM: a tuned one if set for this bucket, else the heuristic. Always
  // within the limit and with block_m == BlockMFor(...). `n`, `k` are the GEMM's sizes,
  // `max_split_k` what the workspace can hold.
  MoeTileConfig Select(MoeWeightFormat format, MoeGemm gemm, int64_t pairs, int experts, int64_t n,
                       int64_t k, int max_split_k) const;

  // Records a tuned config for (format, gemm, batch-size bucket of `pairs`); rejects one above
  // the shared-memory limit or not valid for the format.
  Status SetTuned(MoeWeightFormat format, MoeGemm gemm, int64_t pairs, const MoeTileConfig& config);
  void ClearTuned() {
    tuned_.clear();
    tuned_gemv_.clear();
  }

  // Forwards of at most this many tokens run the expert GEMMs as GEMVs over the (token, expert)
  // pairs (engine/cuda/moe_gemv.h) instead of the grouped tile GEMM; 0 turns that path off.
  // Forwards with explicit tile configs (MoeForwardWithConfigs) always run the tiles.
  int gemv_max_tokens() const { return gemv_max_tokens_; }
  void SetGemvMaxTokens(int tokens) { gemv_max_tokens_ = tokens < 0 ? 0 : tokens; }
  // The GEMV kernels' work split; CheckMoeGemvTiling's error (and the previous split kept) for a
  // value outside those listed in MoeGemvTiling.
  const MoeGemvTiling& gemv_tiling() const { return gemv_tiling_; }
  Status SetGemvTiling(const MoeGemvTiling& tiling);
  // A tuned GEMV split for (format, bucket of `tokens`: the smallest power of two >= tokens);
  // it replaces gemv_tiling() for forwards of that bucket. CheckMoeGemvTiling's error otherwise.
  Status SetTunedGemv(MoeWeightFormat format, int64_t tokens, const MoeGemvTiling& tiling);
  // The split a GEMV-path forward of `tokens` tokens uses: the bucket's tuned one, else
  // gemv_tiling(). Zero fields are resolved by the kernels (MoeGemvResolveTiling).
  const MoeGemvTiling& GemvTilingFor(MoeWeightFormat format, int64_t tokens) const;
  bool HasTunedGemv() const { return !tuned_gemv_.empty(); }
  // Forwards of more than gemv_max_tokens and at most this many tokens run the expert-grouped
  // tensor-core kernels (engine/cuda/moe_grouped.h: each expert's FP8 weights read once for up to
  // kMoeGroupedBlockM of its pairs, BF16 activations) where they fit the shared-memory limit;
  // 0 (the default) turns that path off. Their warps per 16-row group: gemv_tiling's
  // gate_up_k_splits.
  int grouped_max_tokens() const { return grouped_max_tokens_; }
  void SetGroupedMaxTokens(int tokens) { grouped_max_tokens_ = tokens < 0 ? 0 : tokens; }

  // Whether `config` may be launched here (within the limit, valid for the format).
  Status Check(MoeWeightFormat format, const MoeTileConfig& config) const;

  // MoeScratchFor plus split-K partial tiles for every split this table's heuristic picks at any
  // batch size up to `max_tokens` (the SM count decides how far it splits), so that no forward
  // of an untuned table has its split-K lowered by the workspace.
  MoeScratchSizes ScratchFor(MoeWeightFormat format, int experts, int hidden, int inter, int top_k,
                             int64_t max_tokens) const;

  // The launch of a forward over `tokens` tokens (layer sizes as MoeScratchFor): Select's configs,
  // or `forced_gate_up`/`forced_down` (both or neither), with split-K lowered until the partial
  // tiles fit `scratch`. InvalidArgument when a config fails Check, only one is forced or the two
  // do not share block_m; OutOfRange when `scratch` cannot hold the padded rows (a workspace made
  // for fewer tokens).
  Result<MoeLaunch> PlanLaunch(MoeWeightFormat format, int experts, int hidden, int inter,
                               int top_k, int64_t tokens, const MoeScratchSizes& scratch,
                               const MoeTileConfig* forced_gate_up = nullptr,
                               const MoeTileConfig* forced_down = nullptr) const;

 private:
  struct Tuned {
    MoeWeightFormat format;
    MoeGemm gemm;
    int bucket;
    MoeTileConfig config;
  };
  struct TunedGemv {
    MoeWeightFormat format;
    int bucket;  // Bucket(tokens)
    MoeGemvTiling tiling;
  };
  static int Bucket(int64_t pairs);

  int64_t smem_limit_bytes_ = 0;
  int multiprocessors_ = 0;
  int gemv_max_tokens_ = kMoeGemvMaxTokensDefault;
  int grouped_max_tokens_ = 0;
  MoeGemvTiling gemv_tiling_;
  std::vector<Tuned> tuned_;
  std::vector<TunedGemv> tuned_gemv_;
};

}  // namespace spark::cuda
