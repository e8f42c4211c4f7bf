#include "engine/model/weight_checks.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "tests/engine/cpu/test_model.h"

namespace spark::engine {
namespace {

constexpr uint64_t kSeed = 11;
const testing::WeightFormat kBf16{DType::kBF16, ScaleKind::kNone, 0};

void ExpectError(const Status& s, const std::string& needle) {
  ASSERT_FALSE(s.ok()) << "expected an error containing: " << needle;
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find(needle), std::string::npos) << s.message();
}

// An MTP block for the tiny model: a copy of MoE layer 1 plus its own norms and eh_proj.
MtpWeights TestMtp(const ModelWeights& w) {
  const int64_t hidden = w.config.hidden_size;
  MtpWeights m;
  m.enorm.assign(static_cast<size_t>(hidden), 1.0f);
  m.hnorm.assign(static_cast<size_t>(hidden), 1.0f);
  m.shared_head_norm.assign(static_cast<size_t>(hidden), 1.0f);
  m.eh_proj = testing::MakeLinear(kSeed, "eh_proj", hidden, 2 * hidden, kBf16, false);
  m.layer = w.layers[1];
  return m;
}

TEST(WeightChecksTest, AcceptsEveryRankOfTheTestModel) {
  for (int tp : {1, 2}) {
    for (int rank = 0; rank < tp; ++rank) {
      ModelWeights w = testing::MakeTestWeights(testing::TinyGlmConfig(), kBf16, kSeed, rank, tp);
      w.mtp.push_back(TestMtp(w));
      EXPECT_TRUE(ValidateModelWeights(w, w.local_q_heads(), w.local_kv_heads()).ok())
          << "tp " << tp << " rank " << rank;
    }
  }
}

TEST(WeightChecksTest, NamesTheCheckpointTensorAndTheFix) {
  const ModelWeights w = testing::MakeTestWeights(testing::TinyGlmConfig(), kBf16, kSeed, 0, 1);
  const int q = w.local_q_heads();
  const int kv = w.local_kv_heads();
  // A streamed layer is named by the index it is validated as.
  LayerWeights layer = w.layers[2];
  layer.q.out = 64;
  ExpectError(ValidateLayerWeights(w.config, 7, layer, q, kv),
              "weight model.layers.7.self_attn.q_proj has shape [64, 128], expected [256, 128]" +
                  std::string(kWeightMismatchHint));
  layer = w.layers[2];
  layer.experts.pop_back();
  ExpectError(ValidateLayerWeights(w.config, 2, layer, q, kv),
              "model.layers.2.mlp holds 7 experts, expected 8");
  layer = w.layers[2];
  layer.experts[5].gate = LinearWeight{};
  ExpectError(ValidateLayerWeights(w.config, 2, layer, q, kv),
              "weight model.layers.2.mlp.experts.5.gate_proj is missing");
  ModelConfig groups = w.config;
  groups.n_group = 3;
  ExpectError(ValidateLayerWeights(groups, 2, w.layers[2], q, kv),
              "router groups: 8 experts, n_group 3");
  LinearWeight fp8 = w.layers[0].o;
  fp8.dtype = DType::kF8E4M3;
  fp8.data.resize(static_cast<size_t>(fp8.out * fp8.in));
  EXPECT_EQ(DescribeLinearWeightError(fp8), "is F8_E4M3 without scales");
}

TEST(WeightChecksTest, TopSkipsLayersAndMtpNamesLayerNumHiddenLayers) {
  ModelWeights w = testing::MakeTestWeights(testing::TinyGlmConfig(), kBf16, kSeed, 0, 1);
  const int q = w.local_q_heads();
  const int kv = w.local_kv_heads();
  w.layers[0].input_norm.pop_back();
  EXPECT_TRUE(ValidateTopWeights(w, q, kv).ok());
  ExpectError(ValidateModelWeights(w, q, kv),
              "weight model.layers.0.input_layernorm has 127 values, expected 128");
  w.final_norm.pop_back();
  ExpectError(ValidateTopWeights(w, q, kv), "weight model.norm has 127 values");

  ModelWeights ok = testing::MakeTestWeights(testing::TinyGlmConfig(), kBf16, kSeed, 0, 1);
  MtpWeights m = TestMtp(ok);
  m.eh_proj = testing::MakeLinear(kSeed, "eh_proj", 128, 128, kBf16, false);
  ExpectError(ValidateMtpWeights(ok.config, m, q, kv),
              "weight model.layers.3.eh_proj has shape [128, 128], expected [128, 256]");
  ok.mtp.push_back(TestMtp(ok));
  ok.mtp[0].layer.post_attn_norm.clear();
  ExpectError(ValidateModelWeights(ok, q, kv), "weight model.layers.3.post_attention_layernorm");
}

}  // namespace
}  // namespace spark::engine
