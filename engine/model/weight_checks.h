// Weight-shape validation shared by the CPU and CUDA backends: checks that a rank's ModelWeights
// match the config and the tensor-parallel slice they claim before any kernel reads them. Errors
// are InvalidArgument naming the checkpoint tensor and the fix, e.g. "weight
// model.layers.3.self_attn.q_proj has shape [64, 32], expected [128, 32]; the weights do not
// match their config.json (reload the checkpoint)".
//
// The checks come in parts so a backend that streams layers (CudaBackend::Load) can validate each
// layer as it arrives: ValidateTopWeights (config, tp slice, embedding, final norm, lm_head),
// ValidateLayerWeights (one decoder layer), ValidateMtpWeights (the MTP block);
// ValidateModelWeights runs all three.
//
// Thread safety: pure functions of their arguments. Ownership: nothing is retained.
#pragma once

#include <string>

#include "common/status.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace spark::engine {

// Ends every error that means "these weights are not the checkpoint of this config".
inline constexpr char kWeightMismatchHint[] =
    "; the weights do not match their config.json (reload the checkpoint)";

// The internal consistency of a weight (dtype, data size, scale and bias sizes): an empty string
// when valid, else what is wrong ("holds 10 bytes, expected 16 for [2, 4] BF16").
std::string DescribeLinearWeightError(const LinearWeight& w);

// Everything but the decoder layers and the MTP block: positive config sizes, a valid tp slice
// (heads divisible by tp_size, `local_q` heads sharing `local_kv`), the rotary dim, the layer
// count, embed_tokens, the final norm and this rank's lm_head rows.
Status ValidateTopWeights(const ModelWeights& w, int local_q, int local_kv);

// Decoder layer `layer_index` ("model.layers.<layer_index>"): norms, attention projections for
// `local_q` / `local_kv` heads, and its dense MLP or router, experts and shared expert.
Status ValidateLayerWeights(const ModelConfig& c, int layer_index, const LayerWeights& layer,
                            int local_q, int local_kv);

// The MTP block, stored as layer num_hidden_layers of `c`: enorm, hnorm, eh_proj [H, 2H]
// (replicated), shared_head.norm and its decoder layer.
Status ValidateMtpWeights(const ModelConfig& c, const MtpWeights& m, int local_q, int local_kv);

// ValidateTopWeights, every layer of `w`, and w.mtp[0] when present.
Status ValidateModelWeights(const ModelWeights& w, int local_q, int local_kv);

}  // namespace spark::engine
