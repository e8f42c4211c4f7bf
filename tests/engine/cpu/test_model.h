// Test models for the CPU backend: deterministic random weights in every storage format, sliced
// per the tensor-parallel plan (shared/docs/glm4-moe.md §2.9), and an independent naive forward
// pass in double precision over the full (unsliced) weights.
//
// Every element is a pure function of (seed, tensor name, row, column), so the slices of all
// ranks concatenate to the same full tensor for every TP size. Quantised weights are quantised on
// the full tensor, then sliced (per-channel scales use the whole row, block scales whole blocks).
//
// Thread safety: functions are reentrant.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/dtype.h"
#include "engine/model/weights.h"

namespace spark::engine::testing {

struct WeightFormat {
  DType dtype = DType::kBF16;               // kBF16, kF16, kF32, or kF8E4M3 (then `scale_kind`)
  ScaleKind scale_kind = ScaleKind::kNone;  // kPerChannel or kBlock for FP8
  int block = 32;                           // block FP8: block_n = block_k
};

// Uniform value in [-1, 1) from (seed, name, row, col).
float HashUniform(uint64_t seed, const std::string& name, int64_t row, int64_t col);

// A full [out, in] weight with values HashUniform * sqrt(3 / in) (std 1/sqrt(in)), stored in
// `format` (rounded / quantised), plus a bias of 0.02-scale values when `bias`.
LinearWeight MakeLinear(uint64_t seed, const std::string& name, int64_t out, int64_t in,
                        const WeightFormat& format, bool bias);
LinearWeight SliceRows(const LinearWeight& w, int64_t begin, int64_t count);
LinearWeight SliceCols(const LinearWeight& w, int64_t begin, int64_t count);

// The tiny GLM-4 MoE shape of the brief: hidden 128, 4 heads of 64, 2 kv heads, rotary 0.5,
// 1 dense + 2 MoE layers, 8 experts top-2, 1 shared expert, QK-norm, attention bias, vocab 256.
ModelConfig TinyGlmConfig();
// Dense Llama: no bias, no QK-norm, full rotary, llama3 rope scaling.
ModelConfig TinyLlamaConfig();
// Dense Qwen3: QK-norm, no bias, full rotary.
ModelConfig TinyQwen3Config();
// Qwen3-MoE: softmax router, no shared expert, QK-norm, decoder_sparse_step 1, mlp_only layer 0.
ModelConfig TinyQwen3MoeConfig();

// This rank's slice of the test model (tp_size 1: the full model).
ModelWeights MakeTestWeights(const ModelConfig& config, const WeightFormat& format, uint64_t seed,
                             int tp_rank, int tp_size);

// Naive forward of one sequence over full weights in double precision: logits [T, vocab].
std::vector<double> ReferenceLogits(const ModelWeights& full, const std::vector<int32_t>& tokens);

}  // namespace spark::engine::testing
