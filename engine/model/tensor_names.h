// The tensors a checkpoint of a given ModelConfig holds (names and shapes of shared/docs/
// glm4-moe.md §3, and the Llama / Qwen3 / Qwen3-MoE equivalents), with how tensor parallelism
// splits each of them (§2.9). Used to write random checkpoints, to size per-rank memory and to
// check checkpoints; the loader (loader.h) follows the same plan.
//
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/config.h"

namespace spark::engine {

enum class TpSplit {
  kReplicated,  // every rank holds all of it
  kRows,        // dim 0 split evenly (column-parallel weights, their biases)
  kCols,        // dim 1 split evenly (row-parallel weights)
  kKvRows,      // k/v projections: rows split by kv heads, replicated when tp > kv heads
  kVocabRows,   // lm_head: rows in chunks of ceil(V / tp)
};

enum class TensorRole {
  kLinear,      // a Linear weight [out, in] (FP8-quantisable when `quantizable`)
  kEmbedding,   // [V, H]
  kNorm,        // RMSNorm weight [n]
  kBias,        // Linear bias [out]
  kRouter,      // MoE router weight [E, H]
  kRouterBias,  // e_score_correction_bias [E] (F32 in checkpoints)
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  TensorRole role = TensorRole::kLinear;
  TpSplit split = TpSplit::kReplicated;
  bool quantizable = false;  // decoder-layer Linear weights (q/k/v/o, MLP and experts)
  int layer = -1;            // decoder layer index (>= num_hidden_layers: MTP), -1 = none
  bool expert = false;       // a routed expert's weight
};

// Every tensor of the checkpoint; with `include_mtp` also the num_nextn_predict_layers MTP
// layers (model.layers.{L}.*, including their copies of embed_tokens and shared_head.head).
std::vector<TensorSpec> ExpectedTensors(const ModelConfig& config, bool include_mtp);

// Elements of `spec` that one rank of `tp_size` holds (the rank with the largest slice).
int64_t LocalElements(const TensorSpec& spec, const ModelConfig& config, int tp_size);

}  // namespace spark::engine
