// Tiny random checkpoints for tests and smoke runs (`spark-model tiny`).
//
// WriteTinyModel writes a complete Hugging Face style model directory: config.json (the
// transformers 5.x layout for glm4moe, with head_dim != hidden/heads), model.safetensors
// (deterministic random values from the seed: weights N(0,1)/sqrt(in), norms 1 + 0.1 N(0,1),
// biases 0.02 N(0,1), e_score_correction_bias 0.05 N(0,1) stored F32), generation_config.json,
// a byte-level BPE tokenizer.json (merges learned from an embedded text, GLM special tokens) and
// tokenizer_config.json.
//
// Shapes (glm4moe): hidden 128, 4 heads, head_dim 64, 2 kv heads, 1 dense + 2 MoE layers,
// 8 experts top-2, 1 shared expert, moe_intermediate 128, intermediate 256, QK-norm and attention
// bias on, routed_scaling_factor 2.5. llama / qwen3moe variants use their own conventions.
//
// Thread safety: reentrant; writes only under `dir`.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/model/dtype.h"

namespace spark::engine {

enum class TinyArch { kGlm4Moe, kLlama, kQwen3Moe };

struct TinyModelOptions {
  TinyArch arch = TinyArch::kGlm4Moe;
  uint64_t seed = 0;
  bool mtp = false;            // num_nextn_predict_layers = 1 plus the model.layers.{L}.* tensors
  DType dtype = DType::kBF16;  // kBF16 or kF32
};

// Parses "glm4moe" | "llama" | "qwen3moe".
Result<TinyArch> ParseTinyArch(std::string_view name);

// The config.json text the tiny model of `options` uses.
std::string TinyModelConfigJson(const TinyModelOptions& options);

// Writes the model directory (created if needed).
Status WriteTinyModel(const std::filesystem::path& dir, const TinyModelOptions& options);

// Writes `config_json` as DIR/config.json and random values for every tensor the config
// describes (tensor_names.h; MTP layers when num_nextn_predict_layers > 0) with the
// distributions above, stored as `dtype` (e_score_correction_bias always F32). One
// model.safetensors, or shards + index.json when max_shard_bytes > 0 and the tensors exceed it.
Status WriteRandomCheckpoint(const std::filesystem::path& dir, const std::string& config_json,
                             uint64_t seed, DType dtype, int64_t max_shard_bytes = 0);

}  // namespace spark::engine
