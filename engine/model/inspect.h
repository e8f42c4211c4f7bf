// Summary of a checkpoint directory (`spark-model inspect`): architecture, parameter counts
// (total, active per token for MoE, MTP), dtypes, quantisation, and the memory one rank needs
// at a tensor-parallel size (weights as the loader keeps them; KV cache bytes per token).
//
// Thread safety: pure function over read-only files.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include "common/status.h"
#include "engine/model/config.h"

namespace spark::engine {

struct DTypeUsage {
  int64_t tensors = 0;
  int64_t bytes = 0;
};

struct CheckpointSummary {
  ModelConfig config;
  int tp_size = 1;
  int num_files = 0;
  int64_t num_tensors = 0;
  int dense_layers = 0;
  int moe_layers = 0;
  int mtp_layers = 0;         // MTP layers present in the files
  int64_t total_params = 0;   // main model (embedding, decoder layers, head), no FP8 scales
  int64_t active_params = 0;  // per token: non-expert params + top-k of E experts per layer
  int64_t mtp_params = 0;     // MTP layers (without their embed/head copies)
  int64_t checkpoint_bytes = 0;
  std::map<std::string, DTypeUsage> dtypes;  // by safetensors dtype name
  std::string quantization;                  // human readable
  // Per rank (the largest rank) at tp_size, as LoadModelWeights keeps them (norms, biases,
  // router and scales as float).
  int64_t weight_bytes_per_rank = 0;
  int64_t mtp_weight_bytes_per_rank = 0;
  int64_t kv_bytes_per_token_per_rank = 0;      // BF16 K and V of the main layers
  int64_t mtp_kv_bytes_per_token_per_rank = 0;  // BF16 K and V of the MTP layers
};

// Reads DIR/config.json and the safetensors headers. InvalidArgument when the config cannot be
// split over tp_size ranks (the message says why).
Result<CheckpointSummary> InspectCheckpoint(const std::filesystem::path& dir, int tp_size);

// Multi-line human-readable report.
std::string SummaryText(const CheckpointSummary& summary);
// One JSON object with every field.
std::string SummaryJson(const CheckpointSummary& summary);

}  // namespace spark::engine
