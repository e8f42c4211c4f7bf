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
//
// Thread safety: a table is immutable after Create except SetTuned, which callers must not race
// with MoeForward. Ownership: a value type.
#pragma once

#include <cstdint>
#include <string>
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

class MoeConfigTable {
 public:
  // Limit = the device's opt-in shared memory per block, or `smem_cap_bytes` when it is
  // smaller and positive. Raises each variant's dynamic shared-memory attribute to the device's
  // limit (call with the device current); the cap is enforced by Select/Check/MoeForward.
  static Result<MoeConfigTable> Create(const DeviceInfo& device, int64_t smem_cap_bytes = 0);

  int64_t smem_limit_bytes() const { return smem_limit_bytes_; }
  int multiprocessors() const { return multiprocessors_; }

  // Every config (variant x stages x split-K) valid for `format` within the shared-memory limit.
  std::vector<MoeTileConfig> Candidates(MoeWeightFormat format) const;

  // The permutation's row padding for a batch of `pairs` token-expert pairs over `experts`
  // (both GEMMs use the same block_m).
  int BlockMFor(MoeWeightFormat format, int64_t pairs, int experts) const;

  // The config for one GEMM: a tuned one if set for this bucket, else the heuristic. Always
  // within the limit and with block_m == BlockMFor(...). `n`, `k` are the GEMM's sizes,
  // `max_split_k` what the workspace can hold.
  MoeTileConfig Select(MoeWeightFormat format, MoeGemm gemm, int64_t pairs, int experts, int64_t n,
                       int64_t k, int max_split_k) const;

  // Records a tuned config for (format, gemm, batch-size bucket of `pairs`); rejects one above
  // the shared-memory limit or not valid for the format.
  Status SetTuned(MoeWeightFormat format, MoeGemm gemm, int64_t pairs, const MoeTileConfig& config);
  void ClearTuned() { tuned_.clear(); }

  // Whether `config` may be launched here (within the limit, valid for the format).
  Status Check(MoeWeightFormat format, const MoeTileConfig& config) const;

 private:
  struct Tuned {
    MoeWeightFormat format;
    MoeGemm gemm;
    int bucket;
    MoeTileConfig config;
  };
  static int Bucket(int64_t pairs);

  int64_t smem_limit_bytes_ = 0;
  int multiprocessors_ = 0;
  std::vector<Tuned> tuned_;
};

}  // namespace spark::cuda
