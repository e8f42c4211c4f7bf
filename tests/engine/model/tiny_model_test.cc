#include "engine/model/tiny_model.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/model/loader.h"
#include "engine/model/safetensors.h"
#include "engine/model/tensor_names.h"
#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using testing::TempDir;

// The GLM-4 pre-tokenizer regex of shared/docs/glm4-moe.md §5.5.
constexpr const char* kSpecRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::string Utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

TEST(TinyModelTest, GlmConfigIsTheTransformers5Layout) {
  TinyModelOptions o;
  Json j = Json::parse(TinyModelConfigJson(o));
  EXPECT_TRUE(j.contains("rope_parameters"));
  EXPECT_FALSE(j.contains("rope_theta"));
  EXPECT_EQ(j["rope_parameters"]["partial_rotary_factor"], 0.5);
  Result<ModelConfig> c = ParseModelConfig(j.dump());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->num_attention_heads, 4);
  EXPECT_EQ(c->head_dim, 64);  // != 128 / 4
  EXPECT_EQ(c->num_key_value_heads, 2);
  EXPECT_EQ(c->rotary_dim, 32);
  EXPECT_TRUE(c->use_qk_norm);
  EXPECT_TRUE(c->attention_bias);
  EXPECT_EQ(c->num_hidden_layers, 3);
  EXPECT_FALSE(c->IsMoeLayer(0));
  EXPECT_TRUE(c->IsMoeLayer(1));
  EXPECT_EQ(c->n_routed_experts, 8);
  EXPECT_EQ(c->num_experts_per_tok, 2);
  EXPECT_EQ(c->n_shared_experts, 1);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_EQ(c->moe_intermediate_size, 128);
  EXPECT_EQ(c->intermediate_size, 256);
  EXPECT_EQ(c->num_nextn_predict_layers, 0);
  o.mtp = true;
  EXPECT_EQ(ParseModelConfig(TinyModelConfigJson(o))->num_nextn_predict_layers, 1);
}

TEST(TinyModelTest, WritesLoadableDeterministicCheckpoints) {
  TempDir dir;
  for (const char* arch : {"glm4moe", "llama", "qwen3moe"}) {
    SCOPED_TRACE(arch);
    TinyModelOptions o;
    o.arch = *ParseTinyArch(arch);
    o.seed = 42;
    const auto a = dir / (std::string(arch) + "_a");
    ASSERT_TRUE(WriteTinyModel(a, o).ok());
    for (const char* f : {"config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "generation_config.json"}) {
      EXPECT_TRUE(std::filesystem::exists(a / f)) << f;
    }
    Result<ModelConfig> config = LoadModelConfig(a);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    Result<Checkpoint> ckpt = Checkpoint::Open(a);
    ASSERT_TRUE(ckpt.ok());
    // Exactly the tensors the architecture has.
    std::set<std::string> expected;
    for (const TensorSpec& s : ExpectedTensors(*config, true)) expected.insert(s.name);
    const std::vector<std::string> names = ckpt->names();
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), expected);
    EXPECT_TRUE(LoadModelWeights(a, LoadOptions{}).ok());

    const auto b = dir / (std::string(arch) + "_b");
    ASSERT_TRUE(WriteTinyModel(b, o).ok());
    EXPECT_EQ(testing::ReadFile(a / "model.safetensors"),
              testing::ReadFile(b / "model.safetensors"));
    EXPECT_EQ(testing::ReadFile(a / "tokenizer.json"), testing::ReadFile(b / "tokenizer.json"));
    o.seed = 43;
    const auto c = dir / (std::string(arch) + "_c");
    ASSERT_TRUE(WriteTinyModel(c, o).ok());
    EXPECT_NE(testing::ReadFile(a / "model.safetensors"),
              testing::ReadFile(c / "model.safetensors"));
  }
  EXPECT_FALSE(ParseTinyArch("mixtral").ok());
  TinyModelOptions bad;
  bad.arch = TinyArch::kLlama;
  bad.mtp = true;
  Status s = WriteTinyModel(dir / "bad", bad);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("glm4moe"));
}

TEST(TinyModelTest, ValueDistributions) {
  TempDir dir;
  TinyModelOptions o;
  o.dtype = DType::kF32;
  o.mtp = true;
  ASSERT_TRUE(WriteTinyModel(dir.path(), o).ok());
  Result<Checkpoint> ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  auto moments = [&](const std::string& name) {
    std::vector<float> v = testing::ReadFloat(*ckpt, name);
    double sum = 0, sq = 0;
    for (float x : v) {
      sum += x;
      sq += double{x} * x;
    }
    const double mean = sum / static_cast<double>(v.size());
    return std::make_pair(mean, std::sqrt(sq / static_cast<double>(v.size()) - mean * mean));
  };
  auto [m, sd] = moments("model.embed_tokens.weight");  // [512, 128]: N(0,1)/sqrt(128)
  EXPECT_NEAR(m, 0.0, 0.003);
  EXPECT_NEAR(sd, 1.0 / std::sqrt(128.0), 0.03 / std::sqrt(128.0));
  std::tie(m, sd) = moments("model.layers.1.mlp.experts.0.down_proj.weight");  // [128, 128]
  EXPECT_NEAR(sd, 1.0 / std::sqrt(128.0), 0.05 / std::sqrt(128.0));
  std::tie(m, sd) = moments("model.layers.0.mlp.down_proj.weight");  // [128, 256]
  EXPECT_NEAR(sd, 1.0 / 16.0, 0.05 / 16.0);
  std::tie(m, sd) = moments("model.layers.0.input_layernorm.weight");
  EXPECT_NEAR(m, 1.0, 0.05);
  EXPECT_NEAR(sd, 0.1, 0.03);
  std::tie(m, sd) = moments("model.layers.2.self_attn.q_proj.bias");  // [256]
  EXPECT_NEAR(sd, 0.02, 0.006);
  TensorView bias = *ckpt->Get("model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_EQ(bias.dtype, DType::kF32);
  std::tie(m, sd) = moments("model.layers.1.mlp.gate.e_score_correction_bias");
  EXPECT_GT(sd, 0.01);
  EXPECT_LT(sd, 0.12);
  // MTP copies equal the main embedding and head.
  EXPECT_EQ(testing::ReadFloat(*ckpt, "model.layers.3.embed_tokens.weight"),
            testing::ReadFloat(*ckpt, "model.embed_tokens.weight"));
  EXPECT_EQ(testing::ReadFloat(*ckpt, "model.layers.3.shared_head.head.weight"),
            testing::ReadFloat(*ckpt, "lm_head.weight"));
  EXPECT_EQ(ckpt->Get("model.layers.3.eh_proj.weight")->shape, (std::vector<int64_t>{128, 256}));
}

// The MTP layer is stored as the hub checkpoints store it (spec §3.2): model.layers.{L} with
// embed_tokens, enorm, hnorm, eh_proj, a full MoE decoder layer and shared_head.{norm,head}.
TEST(TinyModelTest, MtpLayerUsesTheHubTensorNames) {
  TempDir dir;
  TinyModelOptions o;
  o.mtp = true;
  ASSERT_TRUE(WriteTinyModel(dir.path(), o).ok());
  Result<Checkpoint> ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok());
  const std::string p = "model.layers.3.";
  std::set<std::string> expected = {"embed_tokens.weight",
                                    "enorm.weight",
                                    "hnorm.weight",
                                    "eh_proj.weight",
                                    "input_layernorm.weight",
                                    "post_attention_layernorm.weight",
                                    "self_attn.q_proj.weight",
                                    "self_attn.q_proj.bias",
                                    "self_attn.k_proj.weight",
                                    "self_attn.k_proj.bias",
                                    "self_attn.v_proj.weight",
                                    "self_attn.v_proj.bias",
                                    "self_attn.o_proj.weight",
                                    "self_attn.q_norm.weight",
                                    "self_attn.k_norm.weight",
                                    "mlp.gate.weight",
                                    "mlp.gate.e_score_correction_bias",
                                    "mlp.shared_experts.gate_proj.weight",
                                    "mlp.shared_experts.up_proj.weight",
                                    "mlp.shared_experts.down_proj.weight",
                                    "shared_head.norm.weight",
                                    "shared_head.head.weight"};
  for (int e = 0; e < 8; ++e) {
    for (const char* w : {"gate_proj", "up_proj", "down_proj"}) {
      expected.insert("mlp.experts." + std::to_string(e) + "." + w + ".weight");
    }
  }
  std::set<std::string> got;
  for (const std::string& name : ckpt->names()) {
    if (name.rfind(p, 0) == 0) got.insert(name.substr(p.size()));
  }
  EXPECT_EQ(got, expected);
  EXPECT_EQ(ckpt->Get(p + "embed_tokens.weight")->shape, (std::vector<int64_t>{512, 128}));
  EXPECT_EQ(ckpt->Get(p + "shared_head.head.weight")->shape, (std::vector<int64_t>{512, 128}));
  EXPECT_EQ(ckpt->Get(p + "mlp.experts.0.gate_proj.weight")->shape,
            (std::vector<int64_t>{128, 128}));
  // No layer beyond the MTP one.
  for (const std::string& name : ckpt->names()) {
    EXPECT_NE(name.rfind("model.layers.4.", 0), 0u) << name;
  }
}

TEST(TinyModelTest, TokenizerIsByteLevelBpeWithGlmSpecialTokens) {
  TempDir dir;
  ASSERT_TRUE(WriteTinyModel(dir.path(), TinyModelOptions{}).ok());
  Json tok = Json::parse(testing::ReadFile(dir / "tokenizer.json"));
  Json config = Json::parse(testing::ReadFile(dir / "config.json"));
  const Json& vocab = tok["model"]["vocab"];
  EXPECT_EQ(tok["model"]["type"], "BPE");
  // GPT-2 bytes_to_unicode order: '!'..'~' first, then '¡'..'¬', '®'..'ÿ', then the remapped
  // bytes 0x00.. as U+0100...
  EXPECT_EQ(vocab["!"], 0);
  EXPECT_EQ(vocab["~"], 93);
  EXPECT_EQ(vocab[Utf8(0xA1)], 94);
  EXPECT_EQ(vocab[Utf8(0xFF)], 187);
  EXPECT_EQ(vocab[Utf8(0x100)], 188);  // byte 0x00
  EXPECT_EQ(vocab[Utf8(0x120)], 220);  // byte 0x20 (space) = 'Ġ'
  std::set<int64_t> ids;
  for (const auto& [token, id] : vocab.items()) ids.insert(id.get<int64_t>());
  // Merges: every merge's parts and result are tokens, learned from the embedded text.
  const Json& merges = tok["model"]["merges"];
  ASSERT_GT(merges.size(), 200u);
  for (const Json& m : merges) {
    const std::string a = m[0];
    const std::string b = m[1];
    EXPECT_TRUE(vocab.contains(a)) << a;
    EXPECT_TRUE(vocab.contains(b)) << b;
    EXPECT_TRUE(vocab.contains(a + b)) << a + b;
  }
  EXPECT_EQ(merges[0], Json({Utf8(0x120), "t"}));  // " t" is the most frequent pair
  // Added tokens follow the BPE vocabulary and fill it up to vocab_size.
  const Json& added = tok["added_tokens"];
  ASSERT_EQ(added.size(), 20u);
  std::map<std::string, int64_t> special;
  for (const Json& t : added) {
    special[t["content"]] = t["id"];
    ids.insert(t["id"].get<int64_t>());
  }
  EXPECT_EQ(static_cast<int64_t>(ids.size()), config["vocab_size"].get<int64_t>());
  EXPECT_EQ(*ids.rbegin(), config["vocab_size"].get<int64_t>() - 1);
  for (const char* t :
       {"<|endoftext|>", "[MASK]",      "[gMASK]",      "[sMASK]",         "<sop>",
        "<eop>",         "<|system|>",  "<|user|>",     "<|assistant|>",   "<|observation|>",
        "<think>",       "</think>",    "<tool_call>",  "</tool_call>",    "<arg_key>",
        "</arg_key>",    "<arg_value>", "</arg_value>", "<tool_response>", "</tool_response>"}) {
    EXPECT_TRUE(special.count(t)) << t;
  }
  EXPECT_EQ(config["eos_token_id"],
            Json({special["<|endoftext|>"], special["<|user|>"], special["<|observation|>"]}));
  Json gen = Json::parse(testing::ReadFile(dir / "generation_config.json"));
  EXPECT_EQ(gen["eos_token_id"], config["eos_token_id"]);
  // Pre-tokenizer: Split with the GLM-4 regex, then ByteLevel without its own regex.
  const Json& pre = tok["pre_tokenizer"];
  EXPECT_EQ(pre["type"], "Sequence");
  EXPECT_EQ(pre["pretokenizers"][0]["type"], "Split");
  EXPECT_EQ(pre["pretokenizers"][0]["pattern"]["Regex"], kSpecRegex);
  EXPECT_EQ(pre["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(pre["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(tok["decoder"]["type"], "ByteLevel");
  Json tc = Json::parse(testing::ReadFile(dir / "tokenizer_config.json"));
  EXPECT_EQ(tc["eos_token"], "<|endoftext|>");
  EXPECT_EQ(tc["added_tokens_decoder"][std::to_string(special["[gMASK]"])]["content"], "[gMASK]");
}

}  // namespace
}  // namespace spark::engine
