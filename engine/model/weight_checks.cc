#include "engine/model/weight_checks.h"

#include <algorithm>
#include <cstddef>
#include <string>

#include "engine/model/dtype.h"

namespace spark::engine {
namespace {

std::string Shape(int64_t out, int64_t in) {
  return "[" + std::to_string(out) + ", " + std::to_string(in) + "]";
}

Status CheckLinear(const LinearWeight& w, const std::string& name, int64_t out, int64_t in) {
  if (w.out != out || w.in != in) {
    return InvalidArgument("weight " + name + " has shape " + Shape(w.out, w.in) + ", expected " +
                           Shape(out, in) + kWeightMismatchHint);
  }
  std::string error = DescribeLinearWeightError(w);
  if (!error.empty()) return InvalidArgument("weight " + name + " " + error + kWeightMismatchHint);
  return Status::Ok();
}

Status CheckVector(const std::vector<float>& v, const std::string& name, int64_t size) {
  if (static_cast<int64_t>(v.size()) != size) {
    return InvalidArgument("weight " + name + " has " + std::to_string(v.size()) +
                           " values, expected " + std::to_string(size) + kWeightMismatchHint);
  }
  return Status::Ok();
}

// Shapes of an MLP (dense, expert or shared expert): gate/up [inter, H], down [H, inter].
Status CheckMlp(const ExpertWeights& w, const std::string& name, int64_t hidden) {
  const int64_t inter = w.gate.out;
  if (inter <= 0) {
    return InvalidArgument("weight " + name + ".gate_proj is missing" + kWeightMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(CheckLinear(w.gate, name + ".gate_proj", inter, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(w.up, name + ".up_proj", inter, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(w.down, name + ".down_proj", hidden, inter));
  return Status::Ok();
}

}  // namespace

std::string DescribeLinearWeightError(const LinearWeight& w) {
  if (w.out <= 0 || w.in <= 0) {
    return "has shape [" + std::to_string(w.out) + ", " + std::to_string(w.in) + "]";
  }
  size_t elem = 0;
  switch (w.dtype) {
    case DType::kF32:
      elem = 4;
      break;
    case DType::kBF16:
    case DType::kF16:
      elem = 2;
      break;
    case DType::kF8E4M3:
      elem = 1;
      break;
    case DType::kI64:
    case DType::kI32:
    case DType::kU8:
    case DType::kBool:
      return "has unsupported dtype " + std::string(DTypeName(w.dtype)) +
             " (expected BF16, F16, F32 or F8_E4M3)";
  }
  const size_t want = static_cast<size_t>(w.out) * static_cast<size_t>(w.in) * elem;
  if (w.data.size() != want) {
    return "holds " + std::to_string(w.data.size()) + " bytes, expected " + std::to_string(want) +
           " for [" + std::to_string(w.out) + ", " + std::to_string(w.in) + "] " +
           std::string(DTypeName(w.dtype));
  }
  if (!w.bias.empty() && static_cast<int64_t>(w.bias.size()) != w.out) {
    return "has a bias of " + std::to_string(w.bias.size()) + " values, expected " +
           std::to_string(w.out);
  }
  switch (w.scale_kind) {
    case ScaleKind::kNone:
      if (w.dtype == DType::kF8E4M3) return "is F8_E4M3 without scales";
      break;
    case ScaleKind::kPerChannel:
      if (static_cast<int64_t>(w.scale.size()) != w.out) {
        return "has " + std::to_string(w.scale.size()) + " per-channel scales, expected " +
               std::to_string(w.out);
      }
      break;
    case ScaleKind::kBlock: {
      if (w.block_n <= 0 || w.block_k <= 0) return "has block scales without a block size";
      const int64_t want_scales =
          ((w.out + w.block_n - 1) / w.block_n) * ((w.in + w.block_k - 1) / w.block_k);
      if (static_cast<int64_t>(w.scale.size()) != want_scales) {
        return "has " + std::to_string(w.scale.size()) + " block scales, expected " +
               std::to_string(want_scales);
      }
      break;
    }
  }
  return "";
}

Status ValidateTopWeights(const ModelWeights& w, int local_q, int local_kv) {
  const ModelConfig& c = w.config;
  const int64_t hidden = c.hidden_size;
  const int64_t hd = c.head_dim;
  if (hidden <= 0 || hd <= 0 || c.num_attention_heads <= 0 || c.num_key_value_heads <= 0 ||
      c.vocab_size <= 0) {
    return InvalidArgument(
        "model config: hidden_size, head_dim, num_attention_heads, "
        "num_key_value_heads and vocab_size must be positive");
  }
  if (w.tp_size <= 0 || w.tp_rank < 0 || w.tp_rank >= w.tp_size) {
    return InvalidArgument("weights of tp rank " + std::to_string(w.tp_rank) + " of " +
                           std::to_string(w.tp_size) + ": not a valid tensor-parallel slice");
  }
  if (c.num_attention_heads % w.tp_size != 0) {
    return InvalidArgument(std::to_string(c.num_attention_heads) +
                           " attention heads cannot be split over tp " + std::to_string(w.tp_size) +
                           "; choose a tp size dividing them");
  }
  if (local_kv <= 0 || local_q % local_kv != 0) {
    return InvalidArgument(std::to_string(local_q) + " local q heads cannot share " +
                           std::to_string(local_kv) + " local kv heads; check tp size");
  }
  const int rd =
      c.rotary_dim > 0 ? c.rotary_dim : static_cast<int>(c.head_dim * c.partial_rotary_factor);
  if (rd % 2 != 0 || rd > c.head_dim || rd < 0) {
    return InvalidArgument("rotary_dim " + std::to_string(rd) +
                           " must be even and at most head_dim " + std::to_string(c.head_dim) +
                           "; check partial_rotary_factor");
  }
  if (static_cast<int>(w.layers.size()) != c.num_hidden_layers) {
    return InvalidArgument("weights hold " + std::to_string(w.layers.size()) +
                           " layers, config num_hidden_layers is " +
                           std::to_string(c.num_hidden_layers) + kWeightMismatchHint);
  }
  SPARK_RETURN_IF_ERROR(CheckLinear(w.embed, "model.embed_tokens", c.vocab_size, hidden));
  SPARK_RETURN_IF_ERROR(CheckVector(w.final_norm, "model.norm", hidden));
  const int64_t vocab_per_rank = (c.vocab_size + w.tp_size - 1) / w.tp_size;
  const int64_t vocab_begin = vocab_per_rank * w.tp_rank;
  const int64_t vocab_local =
      std::max<int64_t>(0, std::min(c.vocab_size, vocab_begin + vocab_per_rank) - vocab_begin);
  if (w.vocab_begin != vocab_begin) {
    return InvalidArgument("lm_head slice of rank " + std::to_string(w.tp_rank) + " begins at " +
                           std::to_string(w.vocab_begin) + ", expected " +
                           std::to_string(vocab_begin) + kWeightMismatchHint);
  }
  if (vocab_local > 0) {
    SPARK_RETURN_IF_ERROR(CheckLinear(w.lm_head, "lm_head", vocab_local, hidden));
  }
  return Status::Ok();
}

Status ValidateLayerWeights(const ModelConfig& c, int layer_index, const LayerWeights& layer,
                            int local_q, int local_kv) {
  const LayerWeights& L = layer;
  const int64_t hidden = c.hidden_size;
  const int64_t hd = c.head_dim;
  const std::string p = "model.layers." + std::to_string(layer_index);
  SPARK_RETURN_IF_ERROR(CheckVector(L.input_norm, p + ".input_layernorm", hidden));
  SPARK_RETURN_IF_ERROR(CheckVector(L.post_attn_norm, p + ".post_attention_layernorm", hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(L.q, p + ".self_attn.q_proj", local_q * hd, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(L.k, p + ".self_attn.k_proj", local_kv * hd, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(L.v, p + ".self_attn.v_proj", local_kv * hd, hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(L.o, p + ".self_attn.o_proj", hidden, local_q * hd));
  if (c.use_qk_norm) {
    SPARK_RETURN_IF_ERROR(CheckVector(L.q_norm, p + ".self_attn.q_norm", hd));
    SPARK_RETURN_IF_ERROR(CheckVector(L.k_norm, p + ".self_attn.k_norm", hd));
  }
  if (!L.is_moe) return CheckMlp(L.mlp, p + ".mlp", hidden);
  const int64_t experts = c.n_routed_experts;
  if (experts <= 0 || c.num_experts_per_tok <= 0 || c.num_experts_per_tok > experts) {
    return InvalidArgument(p + " is a MoE layer but the config has " + std::to_string(experts) +
                           " experts and num_experts_per_tok " +
                           std::to_string(c.num_experts_per_tok));
  }
  const int groups = std::max(1, c.n_group);
  if (experts % groups != 0 || c.topk_group < 1 || c.topk_group > groups) {
    return InvalidArgument("router groups: " + std::to_string(experts) + " experts, n_group " +
                           std::to_string(groups) + ", topk_group " + std::to_string(c.topk_group) +
                           " are inconsistent");
  }
  SPARK_RETURN_IF_ERROR(CheckVector(L.router, p + ".mlp.gate", experts * hidden));
  if (!L.router_bias.empty()) {
    SPARK_RETURN_IF_ERROR(
        CheckVector(L.router_bias, p + ".mlp.gate.e_score_correction_bias", experts));
  }
  if (static_cast<int64_t>(L.experts.size()) != experts) {
    return InvalidArgument(p + ".mlp holds " + std::to_string(L.experts.size()) +
                           " experts, expected " + std::to_string(experts) + kWeightMismatchHint);
  }
  for (int64_t e = 0; e < experts; ++e) {
    SPARK_RETURN_IF_ERROR(CheckMlp(L.experts[static_cast<size_t>(e)],
                                   p + ".mlp.experts." + std::to_string(e), hidden));
  }
  if (L.has_shared_expert) {
    SPARK_RETURN_IF_ERROR(CheckMlp(L.shared, p + ".mlp.shared_experts", hidden));
  }
  return Status::Ok();
}

Status ValidateMtpWeights(const ModelConfig& c, const MtpWeights& m, int local_q, int local_kv) {
  const int64_t hidden = c.hidden_size;
  const std::string p = "model.layers." + std::to_string(c.num_hidden_layers);
  SPARK_RETURN_IF_ERROR(CheckVector(m.enorm, p + ".enorm", hidden));
  SPARK_RETURN_IF_ERROR(CheckVector(m.hnorm, p + ".hnorm", hidden));
  SPARK_RETURN_IF_ERROR(CheckLinear(m.eh_proj, p + ".eh_proj", hidden, 2 * hidden));
  SPARK_RETURN_IF_ERROR(CheckVector(m.shared_head_norm, p + ".shared_head.norm", hidden));
  return ValidateLayerWeights(c, c.num_hidden_layers, m.layer, local_q, local_kv);
}

Status ValidateModelWeights(const ModelWeights& w, int local_q, int local_kv) {
  SPARK_RETURN_IF_ERROR(ValidateTopWeights(w, local_q, local_kv));
  for (int l = 0; l < w.config.num_hidden_layers; ++l) {
    SPARK_RETURN_IF_ERROR(
        ValidateLayerWeights(w.config, l, w.layers[static_cast<size_t>(l)], local_q, local_kv));
  }
  if (!w.mtp.empty()) {
    SPARK_RETURN_IF_ERROR(ValidateMtpWeights(w.config, w.mtp.front(), local_q, local_kv));
  }
  return Status::Ok();
}

}  // namespace spark::engine
