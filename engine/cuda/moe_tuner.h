// MoE autotuner: searches the tile configs of the fused MoE grouped GEMMs (engine/cuda/moe.h)
// that fit the table's shared-memory limit, times them on the real expert shapes of a model,
// and keeps the best per GEMM and batch-size bucket as tuning records
// (engine/runtime/moe_tuning_cache.h), which MoeConfigTable::SetTuned then serves.
//
// Buckets the table sends down the MoE GEMV path (MoeConfigTable::gemv_max_tokens) get the split
// of its kernels instead (MoeGemvTiling): every split the kernels accept, one per distinct launch;
// each candidate's output is compared with the untuned split's at the bucket's size and one token
// fewer (relative L2 distance at most gemv_max_relative_error, else refused: a split must compute
// the same layer), then it is timed
// as whole forwards (no events between the kernels, so programmatic launches overlap as when
// serving); the three fastest and the untuned split are timed again in turns, and the untuned one
// stays unless another is more than 1% faster.
//
// Search, per tile bucket of `tokens` tokens (pairs = tokens * top_k): for every block_m that can
// pay at this batch (block_m <= max(32, 2 * pairs / E)), first the gate/up GEMM over every
// candidate of that block_m (down fixed), then the down GEMM (gate/up at its best); the block_m
// with the smallest sum wins. Candidates are the table's Candidates(format) with split-K only where
// the unsplit grid has fewer than two thread blocks per SM. Each candidate: one warm-up forward,
// then up to `iters` timed forwards (cudaEvent phase times, L2 flushed before each), median kept;
// a candidate whose first timed run is `prune_ratio` times slower than the best so far is
// dropped, and deeper pipelines of a tile are not tried once a deeper one was slower. What is
// recorded is the config the forward actually launched (split-K as the workspace allowed).
// Weights and router are random (uniform routing), generated on the device; one layer's worth of
// device memory plus a workspace for the largest bucket is needed while tuning.
//
// Thread safety: uses the current device and the default stream; do not run it concurrently
// with other work on the device whose timing matters. Ownership: MoeRandomLayer owns its device
// buffers.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/cuda/device_info.h"
#include "engine/cuda/moe.h"
#include "engine/cuda/moe_config.h"
#include "engine/model/config.h"
#include "engine/runtime/moe_tuning_cache.h"

namespace spark::cuda {

// "bf16", "fp8-per-channel" (or "fp8-channel"), "fp8-block128" (or "fp8-block").
Result<MoeWeightFormat> ParseMoeWeightFormat(std::string_view name);
// The MoE weight format the checkpoint of `config` loads as (quantisation method).
MoeWeightFormat MoeWeightFormatOfModel(const engine::ModelConfig& config);
// The expert shape one of `tp` ranks holds, with the shared expert as one more slot when
// `fuse_shared_experts` and the model's shared expert can ride in the MoE kernels
// (CudaBackendOptions::fuse_shared_experts: the shape the backend's kernels run and look tuned
// configs up for); InvalidArgument for a dense model or an intermediate size that `tp` does not
// divide.
Result<MoeShape> MoeShapeOfModel(const engine::ModelConfig& config, int tp,
                                 bool fuse_shared_experts);

// Conversions between the kernel's types and the records'.
engine::MoeDeviceClass MoeDeviceClassOf(const DeviceInfo& device, const MoeConfigTable& table);
engine::MoeGemmShape MoeGemmShapeOf(const MoeShape& shape, MoeWeightFormat format);
engine::MoeTileChoice MoeTileChoiceOf(const MoeTileConfig& config);
// The compiled variant with the choice's tile shape (NotFound when this build has none), with
// its stages and split-K; the caller checks it against a table.
Result<MoeTileConfig> MoeTileConfigOf(const engine::MoeTileChoice& choice, MoeWeightFormat format);
// The compiled tile shapes that serve `format` (for ImportSglangMoeConfig).
std::vector<engine::MoeTileShape> MoeTileShapesFor(MoeWeightFormat format);

// The largest bucket the GEMV path serves for `shape`/`format` with `table` (its gemv_max_tokens,
// or 0 when the kernels cannot run the shape): MoeTuningCache::MissingBatches' gemv_max_tokens.
int64_t MoeGemvBatchLimit(const MoeConfigTable& table, const MoeShape& shape,
                          MoeWeightFormat format);
// Conversions between the GEMV split and its record form (MoeGemvTilingOf checks the values).
engine::MoeGemvChoice MoeGemvChoiceOf(const MoeGemvTiling& tiling);
Result<MoeGemvTiling> MoeGemvTilingOf(const engine::MoeGemvChoice& choice);

// A tuned choice for MoeConfigTable::SetTuned (a tile config), or SetTunedGemv (gemv: the GEMV
// path's split for the bucket of `tokens`).
struct MoeTunedChoice {
  MoeWeightFormat format = MoeWeightFormat::kBf16;
  MoeGemm gemm = MoeGemm::kGateUp;
  int64_t pairs = 0;  // token-expert pairs of the bucket (tokens * top_k)
  MoeTileConfig config;
  bool gemv = false;
  int64_t tokens = 0;  // gemv: tokens of the bucket
  MoeGemvTiling gemv_tiling;
};
// The choices of the records of `shape`/`format` on `device` (other records are skipped);
// InvalidArgument when a matching record names a tile this build has not compiled or one the
// table refuses.
Result<std::vector<MoeTunedChoice>> MoeTunedChoicesOf(
    const std::vector<engine::MoeTuningRecord>& records, const engine::MoeDeviceClass& device,
    const MoeShape& shape, MoeWeightFormat format, const MoeConfigTable& table);
// SetTuned for every choice; returns the first error.
Status ApplyMoeTunedChoices(const std::vector<MoeTunedChoice>& choices, MoeConfigTable& table);

// One layer of random routed experts on the current device (router, bias, weights, scales).
class MoeRandomLayer {
 public:
  static Result<MoeRandomLayer> Create(const MoeShape& shape, MoeWeightFormat format,
                                       uint32_t seed = 1);
  MoeRandomLayer() = default;
  MoeRandomLayer(MoeRandomLayer&& other) noexcept;
  MoeRandomLayer& operator=(MoeRandomLayer&& other) noexcept;
  MoeRandomLayer(const MoeRandomLayer&) = delete;
  MoeRandomLayer& operator=(const MoeRandomLayer&) = delete;
  ~MoeRandomLayer();

  const MoeLayerDevice& view() const { return view_; }
  int64_t expert_bytes() const { return expert_bytes_; }  // one expert's weights and scales

 private:
  void Release();
  MoeLayerDevice view_;
  std::vector<void*> buffers_;
  int64_t expert_bytes_ = 0;
};

struct MoeTunerOptions {
  std::vector<int64_t> batches;  // token buckets (powers of two); empty = 1 .. 2048
  int iters = 5;                 // timed forwards per surviving candidate
  double prune_ratio = 1.3;      // drop a candidate this much slower than the best after 1 run
  double max_seconds = 600;      // stop before a bucket once this much time has passed
  // One line per finished bucket (time, chosen configs), for logs and the command line.
  std::function<void(const std::string&)> progress;
  // One line per timed candidate (batch, GEMM, config as launched, median us or "pruned"), for
  // studying the kernels; unset = silent.
  std::function<void(const std::string&)> candidate_log;
  // GEMV path: the largest relative L2 distance of a candidate's output from the untuned split's,
  // for the CUDA-core dequantisations (the same products, fp32 sums in another order, the
  // intermediate rounded to BF16 by both), and where either uses the f16 tensor-core staging
  // (which rounds the activations on its own).
  double gemv_max_relative_error = 2e-3;
  double gemv_max_relative_error_half_mma = 2e-2;
};

struct MoeTuneResult {
  // Both GEMMs of every tile bucket tuned, and one "gemv" record per GEMV-path bucket.
  std::vector<engine::MoeTuningRecord> records;
  std::vector<int64_t> skipped_batches;  // not tuned: max_seconds ran out
  // Tuned as the GEMV path (at or below the table's gemv_max_tokens: no tiles run).
  std::vector<int64_t> gemv_batches;
  double seconds = 0;
  int64_t timed_forwards = 0;
};

// Tunes `shape`/`format` on `device` (current device) within `table`'s limit; records carry the
// table's device class, tuned_unix_ms = now and source "tuner". Batches the table sends down the
// GEMV path (MoeConfigTable::gemv_max_tokens) get a "gemv" record (the split of its kernels).
Result<MoeTuneResult> TuneMoe(const DeviceInfo& device, const MoeConfigTable& table,
                              const MoeShape& shape, MoeWeightFormat format,
                              const MoeTunerOptions& options);

// One bucket of CompareMoeTables: the routed-expert GEMM time (median) with each table and
// whether the tuned table's forward launched exactly the expected configs.
struct MoeTableComparison {
  int64_t batch = 0;
  double heuristic_gemm_us = 0;
  double tuned_gemm_us = 0;
  MoeTileConfig heuristic_gate_up, heuristic_down;
  MoeTileConfig tuned_gate_up, tuned_down;   // what MoeForward launched with the tuned table
  MoeGemvTiling heuristic_gemv, tuned_gemv;  // GEMV path: the splits launched (resolved)
  bool launched_expected = false;            // tuned_* equal the expected choices
  // The tuned table ran the GEMV path (no tile configs; the times are whole forwards, and
  // launched_expected compares the split with the bucket's expected gemv choice).
  bool gemv = false;
};
// Runs MoeForward (the serving path, not explicit configs) on random weights with `heuristic`
// and with `tuned` for every bucket; `expected` are the choices applied to `tuned`.
Result<std::vector<MoeTableComparison>> CompareMoeTables(
    const MoeConfigTable& heuristic, const MoeConfigTable& tuned,
    const std::vector<MoeTunedChoice>& expected, const MoeShape& shape, MoeWeightFormat format,
    const std::vector<int64_t>& batches, int iters);

}  // namespace spark::cuda
