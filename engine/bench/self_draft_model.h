// A tiny GLM-4 MoE checkpoint whose MTP (nextn) layer is derived from the model itself, so that
// speculative decoding has a draft that agrees with the target (a random MTP layer accepts
// almost nothing). For the speculative-decoding benchmark and end-to-end tests.
//
// Construction (all from one random tiny checkpoint, F32):
//   - the target has `layers` MoE decoder layers (first_k_dense_replace 0); layers 1..L-1 keep
//     their random weights but their o_proj and expert / shared-expert down_proj are scaled by
//     `residual_scale` (0: they still compute but add nothing, so the model equals its layer 0
//     followed by the final norm; > 0: they perturb it and the draft agrees less);
//   - every embedding row is rescaled to RMS 1, so enorm (weight 1) returns it unchanged;
//   - the MTP layer: enorm = hnorm = 1, eh_proj = [I 0] (the token embedding passes, the hidden
//     is ignored), its decoder layer = a copy of layer 0, shared_head.norm = model.norm, its
//     embed_tokens / shared_head.head = the model's.
// The MTP pair (t_{i+1}, h_i) at position i then computes layer 0 over the embeddings of
// t_1..t_{i+1} (relative RoPE offsets as in the target), i.e. the target's logits at position
// i+1 except that t_0 is missing from its attention: the draft agrees with the target on most
// tokens, and the target still pays for all its layers.
//
// Thread safety: reentrant; writes only under `dir`.
#pragma once

#include <cstdint>
#include <filesystem>

#include "common/status.h"

namespace spark::bench {

struct SelfDraftModelOptions {
  int layers = 8;               // target decoder layers (>= 1)
  float residual_scale = 0.0f;  // o_proj / down_proj scale of layers 1..L-1
  uint64_t seed = 0;
};

// Writes config.json, model.safetensors and the tokenizer files to `dir` (created if needed).
Status WriteSelfDraftModel(const std::filesystem::path& dir, const SelfDraftModelOptions& options);

}  // namespace spark::bench
