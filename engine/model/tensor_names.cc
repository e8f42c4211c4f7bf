#include "engine/model/tensor_names.h"

#include <algorithm>

namespace spark::engine {
namespace {

class SpecList {
 public:
  explicit SpecList(std::vector<TensorSpec>& out) : out_(out) {}

  void Add(std::string name, std::vector<int64_t> shape, TensorRole role, TpSplit split,
           bool quantizable = false, int layer = -1, bool expert = false) {
    out_.push_back(
        TensorSpec{std::move(name), std::move(shape), role, split, quantizable, layer, expert});
  }

 private:
  std::vector<TensorSpec>& out_;
};

void AddMlp(SpecList& s, const std::string& p, int64_t h, int64_t inter, int layer, bool expert) {
  s.Add(p + "gate_proj.weight", {inter, h}, TensorRole::kLinear, TpSplit::kRows, true, layer,
        expert);
  s.Add(p + "up_proj.weight", {inter, h}, TensorRole::kLinear, TpSplit::kRows, true, layer, expert);
  s.Add(p + "down_proj.weight", {h, inter}, TensorRole::kLinear, TpSplit::kCols, true, layer,
        expert);
}

void AddLayer(SpecList& s, const ModelConfig& c, int l) {
  const std::string p = "model.layers." + std::to_string(l) + ".";
  const int64_t h = c.hidden_size;
  s.Add(p + "input_layernorm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
  const std::string a = p + "self_attn.";
  s.Add(a + "q_proj.weight", {c.q_size(), h}, TensorRole::kLinear, TpSplit::kRows, true, l);
  if (c.attention_bias) {
    s.Add(a + "q_proj.bias", {c.q_size()}, TensorRole::kBias, TpSplit::kRows, false, l);
  }
  s.Add(a + "k_proj.weight", {c.kv_size(), h}, TensorRole::kLinear, TpSplit::kKvRows, true, l);
  if (c.attention_bias) {
    s.Add(a + "k_proj.bias", {c.kv_size()}, TensorRole::kBias, TpSplit::kKvRows, false, l);
  }
  s.Add(a + "v_proj.weight", {c.kv_size(), h}, TensorRole::kLinear, TpSplit::kKvRows, true, l);
  if (c.attention_bias) {
    s.Add(a + "v_proj.bias", {c.kv_size()}, TensorRole::kBias, TpSplit::kKvRows, false, l);
  }
  s.Add(a + "o_proj.weight", {h, c.q_size()}, TensorRole::kLinear, TpSplit::kCols, true, l);
  if (c.use_qk_norm) {
    s.Add(a + "q_norm.weight", {c.head_dim}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
    s.Add(a + "k_norm.weight", {c.head_dim}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
  }
  s.Add(p + "post_attention_layernorm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated, false,
        l);
  if (!c.IsMoeLayer(l)) {
    AddMlp(s, p + "mlp.", h, c.intermediate_size, l, false);
    return;
  }
  const int64_t e = c.n_routed_experts;
  s.Add(p + "mlp.gate.weight", {e, h}, TensorRole::kRouter, TpSplit::kReplicated, false, l);
  if (c.router_correction_bias) {
    s.Add(p + "mlp.gate.e_score_correction_bias", {e}, TensorRole::kRouterBias,
          TpSplit::kReplicated, false, l);
  }
  for (int i = 0; i < e; ++i) {
    AddMlp(s, p + "mlp.experts." + std::to_string(i) + ".", h, c.moe_intermediate_size, l, true);
  }
  if (c.n_shared_experts > 0) {
    AddMlp(s, p + "mlp.shared_experts.", h, c.moe_intermediate_size * c.n_shared_experts, l, false);
  }
}

}  // namespace

std::vector<TensorSpec> ExpectedTensors(const ModelConfig& c, bool include_mtp) {
  std::vector<TensorSpec> out;
  SpecList s(out);
  const int64_t h = c.hidden_size;
  const int64_t v = c.vocab_size;
  s.Add("model.embed_tokens.weight", {v, h}, TensorRole::kEmbedding, TpSplit::kReplicated);
  for (int l = 0; l < c.num_hidden_layers; ++l) AddLayer(s, c, l);
  if (include_mtp) {
    for (int i = 0; i < c.num_nextn_predict_layers; ++i) {
      const int l = c.num_hidden_layers + i;
      const std::string p = "model.layers." + std::to_string(l) + ".";
      s.Add(p + "embed_tokens.weight", {v, h}, TensorRole::kEmbedding, TpSplit::kReplicated, false,
            l);
      s.Add(p + "enorm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
      s.Add(p + "hnorm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
      s.Add(p + "eh_proj.weight", {h, 2 * h}, TensorRole::kLinear, TpSplit::kReplicated, false, l);
      AddLayer(s, c, l);
      s.Add(p + "shared_head.norm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated, false, l);
      s.Add(p + "shared_head.head.weight", {v, h}, TensorRole::kLinear, TpSplit::kVocabRows, false,
            l);
    }
  }
  s.Add("model.norm.weight", {h}, TensorRole::kNorm, TpSplit::kReplicated);
  if (!c.tie_word_embeddings) {
    s.Add("lm_head.weight", {v, h}, TensorRole::kLinear, TpSplit::kVocabRows);
  }
  return out;
}

int64_t LocalElements(const TensorSpec& spec, const ModelConfig& c, int tp) {
  int64_t n = 1;
  for (int64_t d : spec.shape) n *= d;
  if (tp <= 1 || spec.shape.empty()) return n;
  const int64_t rows = spec.shape[0];
  const int64_t rest = rows == 0 ? 0 : n / rows;
  switch (spec.split) {
    case TpSplit::kReplicated:
      return n;
    case TpSplit::kRows:
    case TpSplit::kCols:
      return n / tp;
    case TpSplit::kKvRows: {
      const int local_heads = std::max(1, c.num_key_value_heads / tp);
      return int64_t{local_heads} * c.head_dim * rest;
    }
    case TpSplit::kVocabRows:
      return (rows + tp - 1) / tp * rest;
  }
  return n;
}

}  // namespace spark::engine
