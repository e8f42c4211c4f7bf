#include "engine/model/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

// GLM-4.7 as in the hub config (transformers 4.x layout: top-level rope_theta and
// partial_rotary_factor).
Json Glm47Json() {
  return Json::parse(R"({
    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe",
    "attention_bias": true, "attention_dropout": 0.0,
    "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
    "first_k_dense_replace": 3, "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
    "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 202752,
    "moe_intermediate_size": 1536, "n_group": 1, "n_routed_experts": 160, "n_shared_experts": 1,
    "norm_topk_prob": true, "num_attention_heads": 96, "num_experts_per_tok": 8,
    "num_hidden_layers": 92, "num_key_value_heads": 8, "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-05, "rope_scaling": null,
    "rope_theta": 1000000, "routed_scaling_factor": 2.5, "tie_word_embeddings": false,
    "topk_group": 1, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
    "use_cache": true, "use_qk_norm": true, "vocab_size": 151552
  })");
}

// GLM-4.5-Air in the transformers 5.x layout (rope_parameters, "dtype").
Json AirV5Json() {
  return Json::parse(R"({
    "architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe",
    "attention_bias": true, "eos_token_id": [151329, 151336, 151338], "pad_token_id": 151329,
    "first_k_dense_replace": 1, "head_dim": 128, "hidden_size": 4096,
    "intermediate_size": 10944, "max_position_embeddings": 131072,
    "moe_intermediate_size": 1408, "n_group": 1, "n_routed_experts": 128, "n_shared_experts": 1,
    "norm_topk_prob": true, "num_attention_heads": 96, "num_experts_per_tok": 8,
    "num_hidden_layers": 46, "num_key_value_heads": 8, "num_nextn_predict_layers": 1,
    "partial_rotary_factor": 0.5,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0,
                        "partial_rotary_factor": 0.5},
    "rms_norm_eps": 1e-05, "routed_scaling_factor": 1.0, "tie_word_embeddings": false,
    "topk_group": 1, "dtype": "bfloat16", "use_qk_norm": false, "vocab_size": 151552
  })");
}

Result<ModelConfig> Parse(const Json& j) { return ParseModelConfig(j.dump()); }

TEST(ConfigTest, Glm47TransformersV4Layout) {
  Result<ModelConfig> c = Parse(Glm47Json());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, Architecture::kGlm4Moe);
  EXPECT_EQ(c->architecture_name, "Glm4MoeForCausalLM");
  EXPECT_EQ(c->vocab_size, 151552);
  EXPECT_EQ(c->hidden_size, 5120);
  EXPECT_EQ(c->intermediate_size, 12288);
  EXPECT_EQ(c->moe_intermediate_size, 1536);
  EXPECT_EQ(c->num_hidden_layers, 92);
  EXPECT_EQ(c->num_attention_heads, 96);
  EXPECT_EQ(c->num_key_value_heads, 8);
  EXPECT_EQ(c->head_dim, 128);  // from config, not 5120 / 96
  EXPECT_EQ(c->q_size(), 12288);
  EXPECT_EQ(c->kv_size(), 1024);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(c->partial_rotary_factor, 0.5);
  EXPECT_EQ(c->rotary_dim, 64);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_EQ(c->max_position_embeddings, 202752);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_TRUE(c->use_qk_norm);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->n_routed_experts, 160);
  EXPECT_EQ(c->n_shared_experts, 1);
  EXPECT_EQ(c->num_experts_per_tok, 8);
  EXPECT_EQ(c->first_k_dense_replace, 3);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->router_scoring, RouterScoring::kSigmoid);
  EXPECT_TRUE(c->router_correction_bias);
  EXPECT_EQ(c->num_nextn_predict_layers, 1);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{151329, 151336, 151338}));
  EXPECT_EQ(c->pad_token_id, 151329);
  EXPECT_EQ(c->quant.method, QuantMethod::kNone);
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_FALSE(c->IsMoeLayer(2));
  EXPECT_TRUE(c->IsMoeLayer(3));
  EXPECT_TRUE(c->IsMoeLayer(92));  // the MTP layer is a MoE layer
}

TEST(ConfigTest, GlmAirTransformersV5Layout) {
  Result<ModelConfig> c = Parse(AirV5Json());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->num_hidden_layers, 46);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e6);
  EXPECT_EQ(c->rotary_dim, 64);
  EXPECT_FALSE(c->use_qk_norm);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 1.0);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_TRUE(c->IsMoeLayer(1));
}

TEST(ConfigTest, RopeParametersWinOverTopLevelAndDefaultPartialFactor) {
  Json j = AirV5Json();
  j["rope_parameters"] = {
      {"rope_type", "default"}, {"rope_theta", 10000.0}, {"partial_rotary_factor", 0.25}};
  j["partial_rotary_factor"] = 0.5;
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_EQ(c->rotary_dim, 32);
  // GLM's default partial_rotary_factor is 0.5 when absent everywhere.
  j.erase("partial_rotary_factor");
  j["rope_parameters"].erase("partial_rotary_factor");
  c = Parse(j);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->rotary_dim, 64);
}

TEST(ConfigTest, HeadDimDefaultsOnlyWhenAbsentAndEosMayBeAnInt) {
  Json j = Glm47Json();
  j.erase("head_dim");
  j["hidden_size"] = 6144;
  j["eos_token_id"] = 151329;
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->head_dim, 64);  // 6144 / 96
  EXPECT_EQ(c->eos_token_ids, (std::vector<int64_t>{151329}));
}

TEST(ConfigTest, Qwen3Dense) {
  Json j = Json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "bos_token_id": 151643,
    "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560,
    "intermediate_size": 9728, "max_position_embeddings": 40960, "num_attention_heads": 32,
    "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06,
    "rope_scaling": null, "rope_theta": 1000000, "tie_word_embeddings": true,
    "torch_dtype": "bfloat16", "vocab_size": 151936
  })");
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, Architecture::kQwen3);
  EXPECT_TRUE(c->use_qk_norm);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rotary_dim, 128);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->n_routed_experts, 0);
  EXPECT_FALSE(c->IsMoeLayer(5));
  EXPECT_EQ(c->bos_token_id, 151643);
}

TEST(ConfigTest, Qwen3MoeExpertsSparseStepAndMlpOnlyLayers) {
  Json j = Json::parse(R"({
    "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "head_dim": 128,
    "hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
    "num_experts": 128, "num_experts_per_tok": 8, "norm_topk_prob": true,
    "decoder_sparse_step": 2, "mlp_only_layers": [3], "num_attention_heads": 32,
    "num_hidden_layers": 8, "num_key_value_heads": 4, "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0, "vocab_size": 151936, "eos_token_id": 151645
  })");
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, Architecture::kQwen3Moe);
  EXPECT_EQ(c->n_routed_experts, 128);
  EXPECT_EQ(c->moe_intermediate_size, 768);
  EXPECT_EQ(c->n_shared_experts, 0);
  EXPECT_EQ(c->router_scoring, RouterScoring::kSoftmax);
  EXPECT_FALSE(c->router_correction_bias);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_TRUE(c->use_qk_norm);
  // MoE on layers where (l + 1) % 2 == 0, except the mlp_only layer 3.
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_TRUE(c->IsMoeLayer(1));
  EXPECT_FALSE(c->IsMoeLayer(2));
  EXPECT_FALSE(c->IsMoeLayer(3));
  EXPECT_TRUE(c->IsMoeLayer(5));
  // norm_topk_prob defaults to false for Qwen3-MoE.
  j.erase("norm_topk_prob");
  EXPECT_FALSE(Parse(j)->norm_topk_prob);
}

TEST(ConfigTest, LlamaWithLlama3RopeScaling) {
  Json j = Json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "hidden_size": 2048, "intermediate_size": 8192,
    "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
    "vocab_size": 128256, "rope_theta": 500000.0, "rms_norm_eps": 1e-05,
    "max_position_embeddings": 131072, "tie_word_embeddings": true,
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009],
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"}
  })");
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_FALSE(c->use_qk_norm);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_DOUBLE_EQ(c->rope_llama3_factor, 32.0);
  EXPECT_DOUBLE_EQ(c->rope_llama3_low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c->rope_llama3_high_freq_factor, 4.0);
  EXPECT_EQ(c->rope_llama3_original_max_position, 8192);
  EXPECT_EQ(c->rotary_dim, 64);

  j["rope_scaling"]["rope_type"] = "yarn";
  c = Parse(j);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented);
  EXPECT_THAT(c.status().message(), HasSubstr("rope_scaling.rope_type"));
  EXPECT_THAT(c.status().message(), HasSubstr("yarn"));
}

TEST(ConfigTest, BadValuesNameTheKey) {
  struct Case {
    const char* key;
    Json value;
    const char* expect;
  };
  const Case cases[] = {
      {"hidden_size", "5120", "\"hidden_size\" must be an integer"},
      {"hidden_size", -1, "\"hidden_size\" must be > 0"},
      {"num_key_value_heads", 7, "num_key_value_heads"},
      {"use_qk_norm", 1, "\"use_qk_norm\" must be true or false"},
      {"eos_token_id", "x", "\"eos_token_id\" must be an integer or a list"},
      {"eos_token_id", 999999, "\"eos_token_id\" 999999 is outside the vocabulary"},
      {"num_experts_per_tok", 200, "num_experts_per_tok"},
      {"rope_theta", "big", "\"rope_theta\" must be a number"},
      {"hidden_act", "gelu", "hidden_act"},
      {"mlp_bias", true, "mlp_bias"},
      {"architectures", Json::array({"MixtralForCausalLM"}), "MixtralForCausalLM"},
  };
  for (const Case& c : cases) {
    Json j = Glm47Json();
    j[c.key] = c.value;
    Result<ModelConfig> r = Parse(j);
    ASSERT_FALSE(r.ok()) << c.key;
    EXPECT_THAT(r.status().message(), HasSubstr(c.expect)) << r.status().message();
  }
  Json j = Glm47Json();
  j.erase("vocab_size");
  Result<ModelConfig> r = Parse(j);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("missing required key \"vocab_size\""));
  EXPECT_FALSE(ParseModelConfig("{not json").ok());
}

Json CompressedTensors(const std::string& w_strategy, const std::string& a_strategy) {
  Json weights = {
      {"num_bits", 8},     {"type", "float"},       {"strategy", w_strategy},    {"dynamic", false},
      {"symmetric", true}, {"group_size", nullptr}, {"block_structure", nullptr}};
  if (w_strategy == "block") weights["block_structure"] = {128, 128};
  Json acts = {{"num_bits", 8}, {"type", "float"}, {"strategy", a_strategy}, {"dynamic", true}};
  if (a_strategy == "group") acts["group_size"] = 128;
  return {
      {"quant_method", "compressed-tensors"},
      {"format", "float-quantized"},
      {"quantization_status", "compressed"},
      {"config_groups",
       {{"group_0", {{"targets", {"Linear"}}, {"weights", weights}, {"input_activations", acts}}}}},
      {"ignore", {"lm_head", "model.layers.3.mlp.gate"}},
      {"kv_cache_scheme", nullptr}};
}

TEST(ConfigTest, QuantizationDispatch) {
  Json j = Glm47Json();
  j["quantization_config"] = CompressedTensors("channel", "token");
  Result<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->quant.method, QuantMethod::kFp8PerChannel);
  EXPECT_FALSE(c->quant.scale_inv_name);
  EXPECT_EQ(c->quant.ignore, (std::vector<std::string>{"lm_head", "model.layers.3.mlp.gate"}));

  j["quantization_config"] = CompressedTensors("block", "group");
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->quant.method, QuantMethod::kFp8Block);
  EXPECT_EQ(c->quant.block_n, 128);
  EXPECT_EQ(c->quant.block_k, 128);
  EXPECT_FALSE(c->quant.scale_inv_name);

  j["quantization_config"] = {{"quant_method", "fp8"},
                              {"fmt", "e4m3"},
                              {"activation_scheme", "dynamic"},
                              {"weight_block_size", {128, 64}}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->quant.method, QuantMethod::kFp8Block);
  EXPECT_EQ(c->quant.block_n, 128);
  EXPECT_EQ(c->quant.block_k, 64);
  EXPECT_TRUE(c->quant.scale_inv_name);

  struct Bad {
    Json q;
    const char* expect;
  };
  const Bad bad[] = {
      {{{"quant_method", "awq"}}, "quant_method \"awq\""},
      {CompressedTensors("tensor", "token"), "weights strategy \"tensor\""},
      {CompressedTensors("channel", "tensor"), "activation strategy \"tensor\""},
      {{{"quant_method", "fp8"}, {"activation_scheme", "dynamic"}}, "without weight_block_size"},
      {{{"quant_method", "fp8"},
        {"activation_scheme", "static"},
        {"weight_block_size", {128, 128}}},
       "activation_scheme \"static\""},
  };
  for (const Bad& b : bad) {
    j["quantization_config"] = b.q;
    c = Parse(j);
    ASSERT_FALSE(c.ok()) << b.expect;
    EXPECT_EQ(c.status().code(), StatusCode::kUnimplemented) << c.status().ToString();
    EXPECT_THAT(c.status().message(), HasSubstr(b.expect));
  }
}

TEST(ConfigTest, BuiltinConfigs) {
  Result<ModelConfig> c = BuiltinConfig("glm-4.7");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->hidden_size, 5120);
  EXPECT_EQ(c->num_hidden_layers, 92);
  EXPECT_EQ(c->n_routed_experts, 160);
  EXPECT_EQ(c->max_position_embeddings, 202752);
  EXPECT_TRUE(c->use_qk_norm);
  EXPECT_EQ(c->quant.method, QuantMethod::kFp8PerChannel);
  // The built-in config matches the parsed hub config field by field where both define it.
  Result<ModelConfig> hub = Parse(Glm47Json());
  EXPECT_EQ(c->head_dim, hub->head_dim);
  EXPECT_EQ(c->rotary_dim, hub->rotary_dim);
  EXPECT_EQ(c->intermediate_size, hub->intermediate_size);
  EXPECT_EQ(c->moe_intermediate_size, hub->moe_intermediate_size);
  EXPECT_EQ(c->first_k_dense_replace, hub->first_k_dense_replace);
  EXPECT_EQ(c->eos_token_ids, hub->eos_token_ids);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, hub->routed_scaling_factor);

  c = BuiltinConfig("glm-4.5-air");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->num_hidden_layers, 46);
  EXPECT_EQ(c->moe_intermediate_size, 1408);
  EXPECT_FALSE(c->use_qk_norm);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 1.0);
  EXPECT_EQ(BuiltinConfig("glm-4.5")->max_position_embeddings, 131072);
  EXPECT_EQ(BuiltinConfig("glm-4.6")->max_position_embeddings, 202752);
  Result<ModelConfig> bad = BuiltinConfig("glm-5");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(bad.status().message(), HasSubstr("glm-4.5-air"));
}

TEST(ConfigTest, LoadModelConfigFromDirectory) {
  testing::TempDir dir;
  Result<ModelConfig> missing = LoadModelConfig(dir.path());
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("config.json"));
  testing::WriteFile(dir / "config.json", Glm47Json().dump());
  Result<ModelConfig> c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->hidden_size, 5120);
  testing::WriteFile(dir / "config.json", "{\"architectures\": [\"Glm4MoeForCausalLM\"]}");
  c = LoadModelConfig(dir.path());
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(c.status().message(), HasSubstr((dir / "config.json").string()));
}

}  // namespace
}  // namespace spark::engine
