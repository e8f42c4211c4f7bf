// Loading one tensor-parallel rank's slice of a checkpoint into ModelWeights.
//
// LoadModelWeights reads DIR/config.json, opens the safetensors files (mmapped, see
// safetensors.h), validates every tensor the architecture needs (presence, shape, dtype) and
// copies ONLY this rank's slice into the owned buffers of ModelWeights, following the TP plan of
// shared/docs/glm4-moe.md §2.9:
//   q/k/v (+bias)      rows split by heads (column-parallel); kv heads replicated when
//                      tp_size > num_key_value_heads (requires tp_size % nkv == 0; rank r gets
//                      kv head r / (tp_size / nkv))
//   o_proj, down_proj  columns split (row-parallel)
//   gate/up_proj       rows split over I (dense), Im (experts) or Im * n_shared (shared experts)
//   lm_head            vocab-parallel rows [r*ceil(V/tp), min(V, (r+1)*ceil(V/tp))), vocab_begin
//   embed, router (+e_score_correction_bias), norms, eh_proj: replicated
// Weights stay in their stored dtype (BF16/F16/F32, or F8_E4M3 with per-channel or block scales
// converted to float); router, biases and norms become float. Tied embeddings give lm_head from
// the embedding. Heads, I and Im must be divisible by tp_size, and with block FP8 the per-rank
// N/K of every sliced weight must be a multiple of the block (spec §6.3); violations return
// InvalidArgument naming the numbers.
//
// MakeDummyWeights builds the same structure without files (load_format=dummy): deterministic
// values that depend only on (seed, tensor name, global row, global column), so the slice of
// every rank equals the slice of one full tensor, for every TP size. Weights are uniform with
// standard deviation 1/sqrt(in); norms 1 + small noise; FP8 (with static scales bound/448) when
// the config is quantised.
//
// Thread safety: the functions are reentrant; ranks may load concurrently from several threads.
// Ownership: the returned ModelWeights owns all of its memory (no reference to the files).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string_view>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace spark::engine {

struct LoadOptions {
  int tp_rank = 0;
  int tp_size = 1;
  // Ignore the safetensors files and generate weights (load_format=dummy); config.json is still
  // read by LoadModelWeights.
  bool dummy = false;
  uint64_t seed = 0;  // dummy weights only
  // Load the MTP (nextn) block stored as model.layers.{num_hidden_layers} into ModelWeights::mtp.
  bool load_mtp = false;
  // Load only the first N decoder layers (benchmarks); -1 = all. config.num_hidden_layers of the
  // result is set to the number loaded.
  int max_layers = -1;
  // Called after each tensor with checkpoint bytes processed so far and the total to process.
  std::function<void(int64_t bytes_done, int64_t bytes_total)> progress;
  // Streaming: when set, each decoder layer is handed over as soon as it is built, in layer
  // order (the embedding is built before layer 0; final norm and lm_head after the last layer),
  // and ModelWeights::layers of the result holds empty LayerWeights. A backend uploads and frees
  // each layer here, so no full host copy of the model exists. A non-OK status aborts the load.
  std::function<Status(int layer, LayerWeights&& weights)> on_layer;
};

// Checks that `config` can be split over `tp_size` ranks (heads, kv heads, I, Im, block FP8
// alignment). OK when tp_size == 1 and the config is valid.
Status ValidateTensorParallel(const ModelConfig& config, int tp_size);

// Loads this rank's slice of the checkpoint in `dir` (config.json + *.safetensors).
Result<ModelWeights> LoadModelWeights(const std::filesystem::path& dir, const LoadOptions& options);

// Deterministic random weights of the shapes `config` describes, sliced for options.tp_rank.
Result<ModelWeights> MakeDummyWeights(const ModelConfig& config, const LoadOptions& options);

// The value MakeDummyWeights assigns to element (row, col) of the full (unsliced) 2-D weight
// `name` ("model.layers.0.self_attn.q_proj.weight", [out, in_features]) before dtype rounding or
// FP8 quantisation (FP8 uses the static scale sqrt(3 / in_features) / 448 for every channel or
// block). Exposed for tests and cross-checks.
float DummyWeightValue(uint64_t seed, std::string_view name, int64_t row, int64_t col,
                       int64_t in_features);

}  // namespace spark::engine
