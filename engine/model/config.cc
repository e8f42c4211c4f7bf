#include "engine/model/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace spark::engine {
namespace {

using Json = nlohmann::json;

const char* JsonTypeName(const Json& j) { return j.type_name(); }

// Typed access to config.json keys; every error names the key.
class Reader {
 public:
  explicit Reader(const Json& root, std::string prefix = "")
      : root_(root), prefix_(std::move(prefix)) {}

  bool Has(const char* key) const { return root_.contains(key) && !root_[key].is_null(); }
  const Json& Raw(const char* key) const { return root_[key]; }
  std::string Key(const char* key) const { return prefix_ + key; }

  Result<int64_t> Int(const char* key) const {
    if (!Has(key)) {
      return InvalidArgument("config.json: missing required key \"" + Key(key) +
                             "\"; the file is incomplete or not a supported model config");
    }
    return IntValue(key);
  }
  Result<int64_t> Int(const char* key, int64_t fallback) const {
    if (!Has(key)) return fallback;
    return IntValue(key);
  }
  Result<double> Number(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_number()) return TypeError(key, "a number");
    return v.get<double>();
  }
  Result<bool> Bool(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_boolean()) return TypeError(key, "true or false");
    return v.get<bool>();
  }
  Result<std::string> String(const char* key, std::string fallback) const {
    if (!Has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_string()) return TypeError(key, "a string");
    return v.get<std::string>();
  }
  Status TypeError(const char* key, const char* expected) const {
    return InvalidArgument("config.json: \"" + Key(key) + "\" must be " + expected + ", got " +
                           root_[key].dump() + " (" + JsonTypeName(root_[key]) + ")");
  }

 private:
  Result<int64_t> IntValue(const char* key) const {
    const Json& v = root_[key];
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float()) {
      double d = v.get<double>();
      if (std::floor(d) == d && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
    }
    return TypeError(key, "an integer");
  }

  const Json& root_;
  std::string prefix_;
};

Status Positive(const char* key, int64_t value) {
  if (value > 0) return Status::Ok();
  return InvalidArgument("config.json: \"" + std::string(key) + "\" must be > 0, got " +
                         std::to_string(value));
}

Result<std::vector<int64_t>> TokenIdList(const Reader& r, const char* key) {
  std::vector<int64_t> ids;
  if (!r.Has(key)) return ids;
  const Json& v = r.Raw(key);
  if (v.is_number_integer()) {
    ids.push_back(v.get<int64_t>());
    return ids;
  }
  if (v.is_array()) {
    for (const Json& e : v) {
      if (!e.is_number_integer()) return r.TypeError(key, "an integer or a list of integers");
      ids.push_back(e.get<int64_t>());
    }
    return ids;
  }
  return r.TypeError(key, "an integer or a list of integers");
}

Result<std::vector<int>> IntList(const Reader& r, const char* key) {
  std::vector<int> out;
  if (!r.Has(key)) return out;
  const Json& v = r.Raw(key);
  if (!v.is_array()) return r.TypeError(key, "a list of integers");
  for (const Json& e : v) {
    if (!e.is_number_integer()) return r.TypeError(key, "a list of integers");
    out.push_back(e.get<int>());
  }
  return out;
}

Result<std::vector<std::string>> StringList(const Json& obj, const std::string& key_path) {
  std::vector<std::string> out;
  if (obj.is_null()) return out;
  if (!obj.is_array()) {
    return InvalidArgument("config.json: \"" + key_path + "\" must be a list of strings, got " +
                           obj.dump());
  }
  for (const Json& e : obj) {
    if (!e.is_string()) {
      return InvalidArgument("config.json: \"" + key_path + "\" must be a list of strings, got " +
                             obj.dump());
    }
    out.push_back(e.get<std::string>());
  }
  return out;
}

Status UnsupportedQuant(const std::string& what) {
  return Unimplemented(
      "config.json: quantization_config " + what +
      " is not supported; supported: compressed-tensors FP8 (weights strategy channel + dynamic "
      "per-token activations, or block [128,128] + group-128 activations) and quant_method "
      "\"fp8\" with weight_block_size; use a BF16 checkpoint or one of these formats");
}

Result<QuantConfig> ParseQuantConfig(const Json& q) {
  QuantConfig quant;
  if (q.is_null()) return quant;
  if (!q.is_object()) {
    return InvalidArgument("config.json: \"quantization_config\" must be an object, got " +
                           q.dump());
  }
  Reader r(q, "quantization_config.");
  SPARK_ASSIGN_OR_RETURN(std::string method, r.String("quant_method", ""));
  if (method == "compressed-tensors") {
    SPARK_ASSIGN_OR_RETURN(std::string format, r.String("format", "float-quantized"));
    if (format != "float-quantized" && format != "naive-quantized") {
      return UnsupportedQuant("format \"" + format + "\"");
    }
    if (!r.Has("config_groups") || !r.Raw("config_groups").is_object() ||
        r.Raw("config_groups").empty()) {
      return InvalidArgument(
          "config.json: \"quantization_config.config_groups\" is missing or empty; a "
          "compressed-tensors config needs one quantisation group");
    }
    bool first = true;
    for (const auto& [group_name, group] : r.Raw("config_groups").items()) {
      std::string gkey = "quantization_config.config_groups." + group_name;
      if (!group.is_object() || !group.contains("weights") || !group["weights"].is_object()) {
        return InvalidArgument("config.json: \"" + gkey + ".weights\" is missing");
      }
      const Json& w = group["weights"];
      Reader wr(w, gkey + ".weights.");
      SPARK_ASSIGN_OR_RETURN(std::string wtype, wr.String("type", ""));
      SPARK_ASSIGN_OR_RETURN(int64_t bits, wr.Int("num_bits", 0));
      SPARK_ASSIGN_OR_RETURN(std::string strategy, wr.String("strategy", ""));
      if (wtype != "float" || bits != 8) {
        return UnsupportedQuant("weights type \"" + wtype + "\" with num_bits " +
                                std::to_string(bits) + " (" + gkey + ")");
      }
      SPARK_ASSIGN_OR_RETURN(bool wdynamic, wr.Bool("dynamic", false));
      if (wdynamic) return UnsupportedQuant("dynamic weight scales (" + gkey + ")");
      const Json* act = group.contains("input_activations") ? &group["input_activations"] : nullptr;
      if (act == nullptr || act->is_null()) {
        return UnsupportedQuant("without input_activations (weight-only FP8, " + gkey + ")");
      }
      Reader ar(*act, gkey + ".input_activations.");
      SPARK_ASSIGN_OR_RETURN(std::string astrategy, ar.String("strategy", ""));
      SPARK_ASSIGN_OR_RETURN(bool adynamic, ar.Bool("dynamic", false));
      if (!adynamic) return UnsupportedQuant("static activation scales (" + gkey + ")");
      QuantConfig g;
      if (strategy == "channel") {
        if (astrategy != "token") {
          return UnsupportedQuant("weights strategy channel with activation strategy \"" +
                                  astrategy + "\" (" + gkey + ")");
        }
        g.method = QuantMethod::kFp8PerChannel;
      } else if (strategy == "block") {
        if (!w.contains("block_structure") || !w["block_structure"].is_array() ||
            w["block_structure"].size() != 2 || !w["block_structure"][0].is_number_integer() ||
            !w["block_structure"][1].is_number_integer()) {
          return InvalidArgument("config.json: \"" + gkey +
                                 ".weights.block_structure\" must be [block_n, block_k]");
        }
        g.method = QuantMethod::kFp8Block;
        g.block_n = w["block_structure"][0].get<int>();
        g.block_k = w["block_structure"][1].get<int>();
        if (g.block_n <= 0 || g.block_k <= 0) {
          return InvalidArgument("config.json: \"" + gkey +
                                 ".weights.block_structure\" must be positive");
        }
        if (astrategy != "group") {
          return UnsupportedQuant("weights strategy block with activation strategy \"" + astrategy +
                                  "\" (" + gkey + ")");
        }
        SPARK_ASSIGN_OR_RETURN(int64_t group_size, ar.Int("group_size", 0));
        if (group_size != g.block_k) {
          return UnsupportedQuant("activation group_size " + std::to_string(group_size) +
                                  " != block_k " + std::to_string(g.block_k) + " (" + gkey + ")");
        }
      } else {
        return UnsupportedQuant("weights strategy \"" + strategy + "\" (" + gkey + ")");
      }
      if (first) {
        quant.method = g.method;
        quant.block_n = g.block_n;
        quant.block_k = g.block_k;
        first = false;
      } else if (g.method != quant.method || g.block_n != quant.block_n ||
                 g.block_k != quant.block_k) {
        return UnsupportedQuant("with config groups of different schemes");
      }
    }
    quant.scale_inv_name = false;
    if (q.contains("ignore")) {
      SPARK_ASSIGN_OR_RETURN(quant.ignore, StringList(q["ignore"], "quantization_config.ignore"));
    }
    return quant;
  }
  if (method == "fp8") {
    SPARK_ASSIGN_OR_RETURN(std::string fmt, r.String("fmt", "e4m3"));
    if (fmt != "e4m3") return UnsupportedQuant("fmt \"" + fmt + "\"");
    SPARK_ASSIGN_OR_RETURN(std::string scheme, r.String("activation_scheme", "dynamic"));
    if (scheme != "dynamic") return UnsupportedQuant("activation_scheme \"" + scheme + "\"");
    if (!r.Has("weight_block_size")) {
      return UnsupportedQuant("quant_method \"fp8\" without weight_block_size (per-tensor FP8)");
    }
    const Json& b = r.Raw("weight_block_size");
    if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer() ||
        b[0].get<int>() <= 0 || b[1].get<int>() <= 0) {
      return InvalidArgument(
          "config.json: \"quantization_config.weight_block_size\" must be [block_n, block_k] "
          "with positive integers, got " +
          b.dump());
    }
    quant.method = QuantMethod::kFp8Block;
    quant.block_n = b[0].get<int>();
    quant.block_k = b[1].get<int>();
    quant.scale_inv_name = true;
    for (const char* key : {"modules_to_not_convert", "ignored_layers"}) {
      if (q.contains(key)) {
        SPARK_ASSIGN_OR_RETURN(std::vector<std::string> more,
                               StringList(q[key], std::string("quantization_config.") + key));
        quant.ignore.insert(quant.ignore.end(), more.begin(), more.end());
      }
    }
    return quant;
  }
  return UnsupportedQuant("quant_method \"" + method + "\"");
}

// RoPE settings from either layout: transformers 5.x `rope_parameters` or 4.x top-level
// rope_theta / partial_rotary_factor + `rope_scaling`.
Status ParseRope(const Reader& r, ModelConfig& c, double default_partial) {
  const char* dict_key = nullptr;
  if (r.Has("rope_parameters")) {
    dict_key = "rope_parameters";
  } else if (r.Has("rope_scaling")) {
    dict_key = "rope_scaling";
  }
  SPARK_ASSIGN_OR_RETURN(c.rope_theta, r.Number("rope_theta", 10000.0));
  SPARK_ASSIGN_OR_RETURN(c.partial_rotary_factor,
                         r.Number("partial_rotary_factor", default_partial));
  if (dict_key == nullptr) return Status::Ok();
  const Json& d = r.Raw(dict_key);
  if (!d.is_object()) return r.TypeError(dict_key, "an object");
  Reader dr(d, std::string(dict_key) + ".");
  SPARK_ASSIGN_OR_RETURN(c.rope_theta, dr.Number("rope_theta", c.rope_theta));
  SPARK_ASSIGN_OR_RETURN(c.partial_rotary_factor,
                         dr.Number("partial_rotary_factor", c.partial_rotary_factor));
  std::string type_key = "rope_type";
  if (!dr.Has("rope_type") && dr.Has("type")) type_key = "type";
  SPARK_ASSIGN_OR_RETURN(std::string type, dr.String(type_key.c_str(), "default"));
  if (type == "default") return Status::Ok();
  if (type == "llama3") {
    SPARK_ASSIGN_OR_RETURN(c.rope_llama3_factor, dr.Number("factor", 0.0));
    if (c.rope_llama3_factor <= 0) {
      return InvalidArgument("config.json: \"" + std::string(dict_key) +
                             ".factor\" must be > 0 for rope_type llama3");
    }
    SPARK_ASSIGN_OR_RETURN(c.rope_llama3_low_freq_factor, dr.Number("low_freq_factor", 1.0));
    SPARK_ASSIGN_OR_RETURN(c.rope_llama3_high_freq_factor, dr.Number("high_freq_factor", 4.0));
    SPARK_ASSIGN_OR_RETURN(c.rope_llama3_original_max_position,
                           dr.Int("original_max_position_embeddings", 8192));
    if (c.rope_llama3_high_freq_factor <= c.rope_llama3_low_freq_factor) {
      return InvalidArgument("config.json: \"" + std::string(dict_key) +
                             ".high_freq_factor\" must be greater than low_freq_factor");
    }
    return Status::Ok();
  }
  return Unimplemented("config.json: \"" + std::string(dict_key) + "." + type_key + "\" \"" + type +
                       "\" is not supported (supported: default, llama3)");
}

Result<Architecture> ArchitectureFromJson(const Reader& r, std::string& name) {
  struct Known {
    const char* arch;
    const char* model_type;
    Architecture value;
  };
  static constexpr Known kKnown[] = {
      {"Glm4MoeForCausalLM", "glm4_moe", Architecture::kGlm4Moe},
      {"LlamaForCausalLM", "llama", Architecture::kLlama},
      {"Qwen3ForCausalLM", "qwen3", Architecture::kQwen3},
      {"Qwen3MoeForCausalLM", "qwen3_moe", Architecture::kQwen3Moe},
  };
  if (r.Has("architectures")) {
    const Json& a = r.Raw("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string()) {
      return r.TypeError("architectures", "a non-empty list of strings");
    }
    name = a[0].get<std::string>();
    for (const Known& k : kKnown) {
      if (name == k.arch) return k.value;
    }
    return Unimplemented("config.json: architecture \"" + name +
                         "\" is not supported (supported: Glm4MoeForCausalLM, LlamaForCausalLM, "
                         "Qwen3ForCausalLM, Qwen3MoeForCausalLM)");
  }
  SPARK_ASSIGN_OR_RETURN(std::string model_type, r.String("model_type", ""));
  for (const Known& k : kKnown) {
    if (model_type == k.model_type) {
      name = k.arch;
      return k.value;
    }
  }
  return InvalidArgument("config.json: no \"architectures\" and model_type \"" + model_type +
                         "\" is not supported; add \"architectures\": [\"Glm4MoeForCausalLM\"] "
                         "(or the model's class)");
}

Status Validate(const ModelConfig& c) {
  SPARK_RETURN_IF_ERROR(Positive("vocab_size", c.vocab_size));
  SPARK_RETURN_IF_ERROR(Positive("hidden_size", c.hidden_size));
  SPARK_RETURN_IF_ERROR(Positive("num_hidden_layers", c.num_hidden_layers));
  SPARK_RETURN_IF_ERROR(Positive("num_attention_heads", c.num_attention_heads));
  SPARK_RETURN_IF_ERROR(Positive("num_key_value_heads", c.num_key_value_heads));
  SPARK_RETURN_IF_ERROR(Positive("head_dim", c.head_dim));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return InvalidArgument("config.json: \"num_attention_heads\" (" +
                           std::to_string(c.num_attention_heads) +
                           ") must be a multiple of \"num_key_value_heads\" (" +
                           std::to_string(c.num_key_value_heads) + ")");
  }
  if (c.partial_rotary_factor <= 0 || c.partial_rotary_factor > 1) {
    return InvalidArgument("config.json: \"partial_rotary_factor\" must be in (0, 1], got " +
                           std::to_string(c.partial_rotary_factor));
  }
  if (c.rotary_dim <= 0 || c.rotary_dim % 2 != 0) {
    return InvalidArgument(
        "config.json: head_dim * partial_rotary_factor = " + std::to_string(c.rotary_dim) +
        " must be a positive even number; fix \"partial_rotary_factor\"");
  }
  if (c.rope_theta <= 0) {
    return InvalidArgument("config.json: \"rope_theta\" must be > 0, got " +
                           std::to_string(c.rope_theta));
  }
  if (c.rms_norm_eps <= 0) {
    return InvalidArgument("config.json: \"rms_norm_eps\" must be > 0, got " +
                           std::to_string(c.rms_norm_eps));
  }
  bool any_dense = false;
  for (int l = 0; l < c.num_hidden_layers; ++l) any_dense |= !c.IsMoeLayer(l);
  if (any_dense) SPARK_RETURN_IF_ERROR(Positive("intermediate_size", c.intermediate_size));
  if (c.n_routed_experts > 0) {
    SPARK_RETURN_IF_ERROR(Positive("moe_intermediate_size", c.moe_intermediate_size));
    SPARK_RETURN_IF_ERROR(Positive("num_experts_per_tok", c.num_experts_per_tok));
    if (c.num_experts_per_tok > c.n_routed_experts) {
      return InvalidArgument(
          "config.json: \"num_experts_per_tok\" (" + std::to_string(c.num_experts_per_tok) +
          ") exceeds the number of experts (" + std::to_string(c.n_routed_experts) + ")");
    }
    SPARK_RETURN_IF_ERROR(Positive("n_group", c.n_group));
    SPARK_RETURN_IF_ERROR(Positive("topk_group", c.topk_group));
    if (c.n_routed_experts % c.n_group != 0 || c.topk_group > c.n_group) {
      return InvalidArgument("config.json: \"n_group\" (" + std::to_string(c.n_group) +
                             ") must divide the number of experts (" +
                             std::to_string(c.n_routed_experts) + ") and be >= \"topk_group\" (" +
                             std::to_string(c.topk_group) + ")");
    }
    if (c.n_group > 1 && c.n_routed_experts / c.n_group < 2) {
      return InvalidArgument("config.json: \"n_group\" (" + std::to_string(c.n_group) +
                             ") leaves fewer than 2 experts per group");
    }
    if (c.n_shared_experts < 0) {
      return InvalidArgument("config.json: \"n_shared_experts\" must be >= 0");
    }
    if (c.decoder_sparse_step <= 0) {
      return InvalidArgument("config.json: \"decoder_sparse_step\" must be > 0");
    }
  }
  if (c.num_nextn_predict_layers < 0) {
    return InvalidArgument("config.json: \"num_nextn_predict_layers\" must be >= 0");
  }
  for (int64_t id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidArgument("config.json: \"eos_token_id\" " + std::to_string(id) +
                             " is outside the vocabulary [0, " + std::to_string(c.vocab_size) +
                             ")");
    }
  }
  return Status::Ok();
}

Result<ModelConfig> ParseJson(const Json& root) {
  if (!root.is_object()) return InvalidArgument("config.json: the top level must be an object");
  Reader r(root);
  ModelConfig c;
  SPARK_ASSIGN_OR_RETURN(c.architecture, ArchitectureFromJson(r, c.architecture_name));
  const bool glm = c.architecture == Architecture::kGlm4Moe;
  const bool qwen3 =
      c.architecture == Architecture::kQwen3 || c.architecture == Architecture::kQwen3Moe;

  SPARK_ASSIGN_OR_RETURN(c.vocab_size, r.Int("vocab_size"));
  SPARK_ASSIGN_OR_RETURN(c.hidden_size, r.Int("hidden_size"));
  SPARK_ASSIGN_OR_RETURN(int64_t layers, r.Int("num_hidden_layers"));
  SPARK_ASSIGN_OR_RETURN(int64_t heads, r.Int("num_attention_heads"));
  SPARK_RETURN_IF_ERROR(Positive("num_attention_heads", heads));
  SPARK_ASSIGN_OR_RETURN(int64_t kv_heads, r.Int("num_key_value_heads", heads));
  c.num_hidden_layers = static_cast<int>(layers);
  c.num_attention_heads = static_cast<int>(heads);
  c.num_key_value_heads = static_cast<int>(kv_heads);
  SPARK_ASSIGN_OR_RETURN(int64_t head_dim, r.Int("head_dim", c.hidden_size / heads));
  c.head_dim = static_cast<int>(head_dim);
  SPARK_RETURN_IF_ERROR(ParseRope(r, c, glm ? 0.5 : 1.0));
  c.rotary_dim = static_cast<int>(c.head_dim * c.partial_rotary_factor);
  SPARK_ASSIGN_OR_RETURN(c.rms_norm_eps, r.Number("rms_norm_eps", glm ? 1e-5 : 1e-6));
  SPARK_ASSIGN_OR_RETURN(c.max_position_embeddings, r.Int("max_position_embeddings", 0));
  SPARK_ASSIGN_OR_RETURN(c.attention_bias, r.Bool("attention_bias", false));
  SPARK_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.Bool("tie_word_embeddings", false));
  if (glm) {
    SPARK_ASSIGN_OR_RETURN(c.use_qk_norm, r.Bool("use_qk_norm", false));
  } else {
    c.use_qk_norm = qwen3;
  }
  SPARK_ASSIGN_OR_RETURN(std::string act, r.String("hidden_act", "silu"));
  if (act != "silu") {
    return Unimplemented("config.json: \"hidden_act\" \"" + act +
                         "\" is not supported (only silu)");
  }
  SPARK_ASSIGN_OR_RETURN(c.intermediate_size, r.Int("intermediate_size", 0));
  SPARK_ASSIGN_OR_RETURN(bool mlp_bias, r.Bool("mlp_bias", false));
  if (mlp_bias) {
    return Unimplemented(
        "config.json: \"mlp_bias\": true is not supported (MLP projections "
        "without biases only)");
  }

  if (glm) {
    SPARK_ASSIGN_OR_RETURN(int64_t e, r.Int("n_routed_experts"));
    c.n_routed_experts = static_cast<int>(e);
    SPARK_ASSIGN_OR_RETURN(c.moe_intermediate_size, r.Int("moe_intermediate_size"));
    SPARK_ASSIGN_OR_RETURN(int64_t shared, r.Int("n_shared_experts", 1));
    SPARK_ASSIGN_OR_RETURN(int64_t k, r.Int("num_experts_per_tok"));
    SPARK_ASSIGN_OR_RETURN(int64_t first_dense, r.Int("first_k_dense_replace", 1));
    SPARK_ASSIGN_OR_RETURN(int64_t n_group, r.Int("n_group", 1));
    SPARK_ASSIGN_OR_RETURN(int64_t topk_group, r.Int("topk_group", 1));
    SPARK_ASSIGN_OR_RETURN(int64_t nextn, r.Int("num_nextn_predict_layers", 0));
    c.n_shared_experts = static_cast<int>(shared);
    c.num_experts_per_tok = static_cast<int>(k);
    c.first_k_dense_replace = static_cast<int>(first_dense);
    c.n_group = static_cast<int>(n_group);
    c.topk_group = static_cast<int>(topk_group);
    c.num_nextn_predict_layers = static_cast<int>(nextn);
    SPARK_ASSIGN_OR_RETURN(c.routed_scaling_factor, r.Number("routed_scaling_factor", 1.0));
    SPARK_ASSIGN_OR_RETURN(c.norm_topk_prob, r.Bool("norm_topk_prob", true));
    SPARK_ASSIGN_OR_RETURN(std::string scoring, r.String("scoring_func", "sigmoid"));
    if (scoring != "sigmoid") {
      return Unimplemented("config.json: \"scoring_func\" \"" + scoring +
                           "\" is not supported for Glm4MoeForCausalLM (sigmoid only)");
    }
    c.router_scoring = RouterScoring::kSigmoid;
    c.router_correction_bias = true;
  } else if (c.architecture == Architecture::kQwen3Moe) {
    // transformers 4.x writes "num_experts", 5.x "num_local_experts".
    const char* experts_key = r.Has("num_local_experts") ? "num_local_experts" : "num_experts";
    SPARK_ASSIGN_OR_RETURN(int64_t e, r.Int(experts_key));
    c.n_routed_experts = static_cast<int>(e);
    SPARK_ASSIGN_OR_RETURN(c.moe_intermediate_size, r.Int("moe_intermediate_size"));
    SPARK_ASSIGN_OR_RETURN(int64_t k, r.Int("num_experts_per_tok"));
    c.num_experts_per_tok = static_cast<int>(k);
    SPARK_ASSIGN_OR_RETURN(c.norm_topk_prob, r.Bool("norm_topk_prob", false));
    SPARK_ASSIGN_OR_RETURN(int64_t step, r.Int("decoder_sparse_step", 1));
    c.decoder_sparse_step = static_cast<int>(step);
    SPARK_ASSIGN_OR_RETURN(c.mlp_only_layers, IntList(r, "mlp_only_layers"));
    c.n_shared_experts = 0;
    c.first_k_dense_replace = 0;
    c.router_scoring = RouterScoring::kSoftmax;
    c.router_correction_bias = false;
    c.routed_scaling_factor = 1.0;
  }

  SPARK_ASSIGN_OR_RETURN(c.eos_token_ids, TokenIdList(r, "eos_token_id"));
  SPARK_ASSIGN_OR_RETURN(c.pad_token_id, r.Int("pad_token_id", -1));
  SPARK_ASSIGN_OR_RETURN(c.bos_token_id, r.Int("bos_token_id", -1));
  SPARK_ASSIGN_OR_RETURN(std::string dtype, r.String("torch_dtype", "bfloat16"));
  SPARK_ASSIGN_OR_RETURN(c.torch_dtype, r.String("dtype", dtype));
  if (c.torch_dtype != "bfloat16" && c.torch_dtype != "float16" && c.torch_dtype != "float32") {
    return InvalidArgument("config.json: \"torch_dtype\" \"" + c.torch_dtype +
                           "\" must be bfloat16, float16 or float32");
  }
  if (root.contains("quantization_config")) {
    SPARK_ASSIGN_OR_RETURN(c.quant, ParseQuantConfig(root["quantization_config"]));
  }
  SPARK_RETURN_IF_ERROR(Validate(c));
  return c;
}

}  // namespace

bool ModelConfig::IsMoeLayer(int layer) const {
  if (n_routed_experts <= 0) return false;
  if (architecture == Architecture::kQwen3Moe) {
    if (std::find(mlp_only_layers.begin(), mlp_only_layers.end(), layer) != mlp_only_layers.end()) {
      return false;
    }
    return (layer + 1) % decoder_sparse_step == 0;
  }
  return layer >= first_k_dense_replace;
}

Result<ModelConfig> ParseModelConfig(const std::string& json_text) {
  Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return InvalidArgument("config.json is not valid JSON; re-download or fix the file");
  }
  return ParseJson(root);
}

Result<ModelConfig> LoadModelConfig(const std::filesystem::path& dir) {
  std::filesystem::path path = dir / "config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return NotFound("cannot read " + path.string() +
                    "; pass a Hugging Face model directory that contains config.json");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  Result<ModelConfig> config = ParseModelConfig(ss.str());
  if (!config.ok()) return config.status().WithContext(path.string());
  return config;
}

std::string_view ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kGlm4Moe:
      return "Glm4MoeForCausalLM";
    case Architecture::kLlama:
      return "LlamaForCausalLM";
    case Architecture::kQwen3:
      return "Qwen3ForCausalLM";
    case Architecture::kQwen3Moe:
      return "Qwen3MoeForCausalLM";
  }
  return "?";
}

Result<ModelConfig> BuiltinConfig(std::string_view name) {
  ModelConfig c;
  c.architecture = Architecture::kGlm4Moe;
  c.architecture_name = "Glm4MoeForCausalLM";
  c.vocab_size = 151552;
  c.num_attention_heads = 96;
  c.num_key_value_heads = 8;
  c.head_dim = 128;
  c.partial_rotary_factor = 0.5;
  c.rotary_dim = 64;
  c.rope_theta = 1000000.0;
  c.rms_norm_eps = 1e-5;
  c.attention_bias = true;
  c.tie_word_embeddings = false;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 8;
  c.n_group = 1;
  c.topk_group = 1;
  c.norm_topk_prob = true;
  c.router_scoring = RouterScoring::kSigmoid;
  c.router_correction_bias = true;
  c.num_nextn_predict_layers = 1;
  c.eos_token_ids = {151329, 151336, 151338};
  c.pad_token_id = 151329;
  c.torch_dtype = "bfloat16";
  c.quant.method = QuantMethod::kFp8PerChannel;
  c.quant.ignore = {"lm_head", "re:.*mlp\\.gate$"};
  if (name == "glm-4.5-air") {
    c.hidden_size = 4096;
    c.num_hidden_layers = 46;
    c.intermediate_size = 10944;
    c.moe_intermediate_size = 1408;
    c.n_routed_experts = 128;
    c.first_k_dense_replace = 1;
    c.routed_scaling_factor = 1.0;
    c.use_qk_norm = false;
    c.max_position_embeddings = 131072;
    return c;
  }
  if (name == "glm-4.5" || name == "glm-4.6" || name == "glm-4.7") {
    c.hidden_size = 5120;
    c.num_hidden_layers = 92;
    c.intermediate_size = 12288;
    c.moe_intermediate_size = 1536;
    c.n_routed_experts = 160;
    c.first_k_dense_replace = 3;
    c.routed_scaling_factor = 2.5;
    c.use_qk_norm = true;
    c.max_position_embeddings = name == "glm-4.5" ? 131072 : 202752;
    return c;
  }
  return NotFound("unknown built-in model \"" + std::string(name) +
                  "\"; known: glm-4.7, glm-4.6, glm-4.5, glm-4.5-air");
}

}  // namespace spark::engine
