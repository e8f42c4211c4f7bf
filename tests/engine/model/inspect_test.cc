#include "engine/model/inspect.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/model/loader.h"
#include "engine/model/quantize.h"
#include "engine/model/tiny_model.h"
#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;

int64_t LinearBytes(const LinearWeight& w) {
  return static_cast<int64_t>(w.data.size() + 4 * (w.scale.size() + w.bias.size()));
}

int64_t ExpertBytes(const ExpertWeights& e) {
  return LinearBytes(e.gate) + LinearBytes(e.up) + LinearBytes(e.down);
}

// Bytes of everything a loaded rank holds, counted from the structure itself.
int64_t LoadedBytes(const ModelWeights& w) {
  auto f = [](const std::vector<float>& v) { return static_cast<int64_t>(4 * v.size()); };
  int64_t n = LinearBytes(w.embed) + LinearBytes(w.lm_head) + f(w.final_norm);
  for (const LayerWeights& l : w.layers) {
    n += f(l.input_norm) + f(l.post_attn_norm) + f(l.q_norm) + f(l.k_norm);
    n += LinearBytes(l.q) + LinearBytes(l.k) + LinearBytes(l.v) + LinearBytes(l.o);
    n += f(l.router) + f(l.router_bias);
    if (!l.is_moe) n += ExpertBytes(l.mlp);
    for (const ExpertWeights& e : l.experts) n += ExpertBytes(e);
    if (l.has_shared_expert) n += ExpertBytes(l.shared);
  }
  return n;
}

TEST(InspectTest, CountsParametersAndPerRankMemory) {
  testing::TempDir dir;
  TinyModelOptions o;
  o.mtp = true;
  ASSERT_TRUE(WriteTinyModel(dir / "bf16", o).ok());
  Result<CheckpointSummary> s = InspectCheckpoint(dir / "bf16", 1);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  // Hand count of the tiny GLM: H=128, V=512, q 256, kv 128, I 256, Im 128, E 8.
  const int64_t attn = 256 * 128 + 256 + 2 * (128 * 128 + 128) + 128 * 256 + 2 * 64;
  const int64_t norms = 2 * 128;
  const int64_t mlp_dense = 3 * 256 * 128;
  const int64_t expert = 3 * 128 * 128;
  const int64_t moe_other = 8 * 128 + 8 + expert;  // router, bias, shared expert
  const int64_t layer0 = attn + norms + mlp_dense;
  const int64_t moe_layer = attn + norms + moe_other + 8 * expert;
  const int64_t total = 2 * 512 * 128 + 128 + layer0 + 2 * moe_layer;
  EXPECT_EQ(s->total_params, total);
  EXPECT_EQ(s->active_params, total - 2 * 6 * expert);  // 2 of 8 experts per MoE layer
  EXPECT_EQ(s->mtp_params, moe_layer + 2 * 128 + 128 * 256 + 128);
  EXPECT_EQ(s->dense_layers, 1);
  EXPECT_EQ(s->moe_layers, 2);
  EXPECT_EQ(s->mtp_layers, 1);
  EXPECT_EQ(s->dtypes.at("F32").tensors, 3);  // e_score_correction_bias x 3
  EXPECT_EQ(s->num_files, 1);
  EXPECT_EQ(s->kv_bytes_per_token_per_rank, 3 * 2 * 2 * 64 * 2);

  // Per-rank weight bytes equal what the loader really keeps, at every TP size.
  for (int tp : {1, 2, 4}) {
    s = InspectCheckpoint(dir / "bf16", tp);
    ASSERT_TRUE(s.ok());
    LoadOptions lo;
    lo.tp_size = tp;
    Result<ModelWeights> w = LoadModelWeights(dir / "bf16", lo);
    ASSERT_TRUE(w.ok());
    EXPECT_EQ(s->weight_bytes_per_rank, LoadedBytes(*w)) << "tp=" << tp;
    EXPECT_EQ(s->kv_bytes_per_token_per_rank, 3 * 2 * std::max(1, 2 / tp) * 64 * 2);
  }
  QuantizeOptions q;
  ASSERT_TRUE(QuantizeCheckpoint(dir / "bf16", dir / "fp8", q).ok());
  s = InspectCheckpoint(dir / "fp8", 2);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->total_params, total);  // scales are not parameters
  EXPECT_EQ(s->dtypes.at("F8_E4M3").tensors, 100);
  LoadOptions lo;
  lo.tp_size = 2;
  EXPECT_EQ(s->weight_bytes_per_rank, LoadedBytes(*LoadModelWeights(dir / "fp8", lo)));
  EXPECT_THAT(SummaryText(*s), HasSubstr("per-channel"));
  nlohmann::json j = nlohmann::json::parse(SummaryJson(*s));
  EXPECT_EQ(j["quantization"]["method"], "fp8_per_channel");
  EXPECT_EQ(j["total_params"], total);
  EXPECT_EQ(j["tp_size"], 2);

  // Tied embeddings: lm_head is the rank's vocabulary rows of the embedding.
  nlohmann::json tied = nlohmann::json::parse(TinyModelConfigJson(TinyModelOptions{}));
  tied["tie_word_embeddings"] = true;
  ASSERT_TRUE(WriteRandomCheckpoint(dir / "tied", tied.dump(), 1, DType::kBF16).ok());
  s = InspectCheckpoint(dir / "tied", 4);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  lo.tp_size = 4;
  EXPECT_EQ(s->weight_bytes_per_rank, LoadedBytes(*LoadModelWeights(dir / "tied", lo)));
  EXPECT_EQ(s->total_params, total - 512 * 128);

  Result<CheckpointSummary> bad = InspectCheckpoint(dir / "bf16", 3);
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("tp_size 3"));
}

}  // namespace
}  // namespace spark::engine
