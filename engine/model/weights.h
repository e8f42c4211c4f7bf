// ModelWeights: the tensor-parallel slice of a checkpoint that one rank holds, in the layout
// the backends consume. Produced by the loader (engine/model/loader.h) from safetensors or from
// `load_format=dummy`, consumed by the CPU backend (engine/cpu) and uploaded by the CUDA one.
//
// Tensor-parallel plan (shared/docs/glm4-moe.md §2.9): q/k/v and gate/up are column-parallel
// (rows of [out, in] split by heads / intermediate), o_proj and down are row-parallel (columns
// split), router and norms replicated, embedding replicated, lm_head vocab-parallel (rows).
//
// Ownership: every buffer is owned by the struct (a rank copies only its slice out of the
// mmapped files). Thread safety: immutable after loading; safe to read from many threads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/dtype.h"

namespace spark::engine {

enum class ScaleKind : uint8_t {
  kNone,        // weights are BF16/F16/F32
  kPerChannel,  // FP8: W[n,k] = q[n,k] * scale[n]
  kBlock,       // FP8: W[n,k] = q[n,k] * scale[(n/block_n) * ceil(in/block_k) + k/block_k]
};

// A linear layer's weight slice, row-major [out, in] (PyTorch layout), y = x W^T (+ bias).
struct LinearWeight {
  DType dtype = DType::kBF16;  // kBF16, kF16, kF32 or kF8E4M3
  int64_t out = 0;
  int64_t in = 0;
  std::vector<std::byte> data;  // out * in * DTypeSize(dtype) bytes
  ScaleKind scale_kind = ScaleKind::kNone;
  int block_n = 0;  // block FP8 only
  int block_k = 0;
  std::vector<float> scale;  // per-channel: [out]; block: [ceil(out/bn) * ceil(in/bk)]
  std::vector<float> bias;   // [out] or empty

  bool empty() const { return out == 0; }
  // Dequantised element (exact: float(q) * scale, as the fp32 reference computes it).
  float At(int64_t row, int64_t col) const;
};

struct ExpertWeights {
  LinearWeight gate;  // [Im_local, H]
  LinearWeight up;    // [Im_local, H]
  LinearWeight down;  // [H, Im_local]
};

struct LayerWeights {
  std::vector<float> input_norm;      // [H]
  std::vector<float> post_attn_norm;  // [H]
  LinearWeight q, k, v;               // [heads_local * hd, H] (+bias)
  LinearWeight o;                     // [H, heads_local * hd]
  std::vector<float> q_norm, k_norm;  // [hd] when use_qk_norm

  bool is_moe = false;
  ExpertWeights mlp;  // dense layers: gate/up/down with I_local

  // MoE layers.
  std::vector<float> router;           // [E, H] fp32 (replicated)
  std::vector<float> router_bias;      // [E] e_score_correction_bias, empty if none
  std::vector<ExpertWeights> experts;  // E entries, each sliced over Im
  bool has_shared_expert = false;
  ExpertWeights shared;  // sliced over Im * n_shared
};

// The MTP (nextn) block stored as model.layers.{num_hidden_layers}.
struct MtpWeights {
  std::vector<float> enorm, hnorm;  // [H]
  LinearWeight eh_proj;             // [H, 2H], replicated
  LayerWeights layer;
  std::vector<float> shared_head_norm;  // [H]
};

struct ModelWeights {
  ModelConfig config;
  int tp_rank = 0;
  int tp_size = 1;
  LinearWeight embed;  // [V, H], replicated
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [H]
  LinearWeight lm_head;           // [V_local, H] rows [vocab_begin, vocab_begin + V_local)
  int64_t vocab_begin = 0;
  std::vector<MtpWeights> mtp;  // empty unless requested and present

  // Local sizes for this rank.
  int local_q_heads() const { return config.num_attention_heads / tp_size; }
  // KV heads are replicated when tp_size > num_key_value_heads (one head per rank).
  int local_kv_heads() const { return std::max(1, config.num_key_value_heads / tp_size); }
};

}  // namespace spark::engine
