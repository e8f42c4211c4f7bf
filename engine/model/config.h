// ModelConfig: the architecture of a checkpoint, parsed from its Hugging Face config.json.
//
// Supports Glm4MoeForCausalLM (exact, see shared/docs/glm4-moe.md), LlamaForCausalLM,
// Qwen3ForCausalLM and Qwen3MoeForCausalLM, in both the transformers 4.x layout (top-level
// rope_theta / partial_rotary_factor) and the 5.x layout (rope_parameters). head_dim is read
// from the config, never derived when present. Parsing validates every field and names the
// bad key and the fix.
//
// Thread safety: plain value type.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace spark::engine {

enum class Architecture { kGlm4Moe, kLlama, kQwen3, kQwen3Moe };

enum class RouterScoring { kSigmoid, kSoftmax };

enum class QuantMethod {
  kNone,           // BF16/F16/F32 weights
  kFp8PerChannel,  // compressed-tensors, weights strategy=channel, activations per token
  kFp8Block,       // compressed-tensors block or DeepSeek-style `quant_method: fp8`
};

struct QuantConfig {
  QuantMethod method = QuantMethod::kNone;
  int block_n = 128;  // block FP8 only
  int block_k = 128;
  // true: scale tensor named `weight_scale_inv` (DeepSeek style), else `weight_scale`.
  bool scale_inv_name = false;
  // Module name patterns that stay unquantized (compressed-tensors "ignore"; "re:" prefix =
  // regex, otherwise exact module name).
  std::vector<std::string> ignore;
};

struct ModelConfig {
  Architecture architecture = Architecture::kGlm4Moe;
  std::string architecture_name;  // as in config.json, e.g. "Glm4MoeForCausalLM"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;      // dense MLP
  int64_t moe_intermediate_size = 0;  // per expert
  int num_hidden_layers = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int head_dim = 0;
  double rope_theta = 10000.0;
  double partial_rotary_factor = 1.0;
  int rotary_dim = 0;  // int(head_dim * partial_rotary_factor)
  // Llama-3 style rope scaling ("rope_type": "llama3"); factor 0 = none.
  double rope_llama3_factor = 0.0;
  double rope_llama3_low_freq_factor = 1.0;
  double rope_llama3_high_freq_factor = 4.0;
  int64_t rope_llama3_original_max_position = 8192;
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;
  bool attention_bias = false;  // q/k/v biases (o_proj never has one)
  bool use_qk_norm = false;
  bool tie_word_embeddings = false;

  // Mixture of experts (0 experts = dense model).
  int n_routed_experts = 0;
  int n_shared_experts = 0;
  int num_experts_per_tok = 0;
  int first_k_dense_replace = 0;  // layers below this index are dense
  int n_group = 1;
  int topk_group = 1;
  double routed_scaling_factor = 1.0;
  bool norm_topk_prob = true;
  RouterScoring router_scoring = RouterScoring::kSigmoid;
  bool router_correction_bias = false;  // e_score_correction_bias present (GLM)
  int decoder_sparse_step = 1;          // Qwen3-MoE: MoE every N layers
  std::vector<int> mlp_only_layers;     // Qwen3-MoE: dense layers by index
  int num_nextn_predict_layers = 0;     // MTP layers stored after the main layers

  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  int64_t bos_token_id = -1;
  std::string torch_dtype = "bfloat16";
  QuantConfig quant;

  bool IsMoeLayer(int layer) const;
  int64_t q_size() const { return int64_t{num_attention_heads} * head_dim; }
  int64_t kv_size() const { return int64_t{num_key_value_heads} * head_dim; }
};

// Parses config.json text. Errors name the key and what was expected.
Result<ModelConfig> ParseModelConfig(const std::string& json_text);
// Reads DIR/config.json.
Result<ModelConfig> LoadModelConfig(const std::filesystem::path& dir);

// Built-in configs of the released checkpoints ("glm-4.7", "glm-4.6", "glm-4.5", "glm-4.5-air"),
// numbers from shared/docs/glm4-moe.md §1.1, FP8 per-channel like the official -FP8 repos. Used
// with load_format=dummy (MakeDummyWeights) by benchmarks. NotFound lists the known names.
Result<ModelConfig> BuiltinConfig(std::string_view name);

// "Glm4MoeForCausalLM" etc. for an Architecture.
std::string_view ArchitectureName(Architecture arch);

}  // namespace spark::engine
