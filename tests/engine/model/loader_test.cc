#include "engine/model/loader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "engine/model/quantize.h"
#include "engine/model/safetensors.h"
#include "engine/model/tiny_model.h"
#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using testing::TempDir;

// Full [rows, cols] matrix as floats (dequantised for FP8 checkpoints, computed here from the
// stored codes and scale tensors independently of the loader).
struct Matrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> v;
  float at(int64_t r, int64_t c) const { return v[static_cast<size_t>(r * cols + c)]; }
};

Matrix FullWeight(const Checkpoint& ckpt, const ModelConfig& config, const std::string& prefix) {
  Matrix m;
  Result<TensorView> w = ckpt.Get(prefix + ".weight");
  EXPECT_TRUE(w.ok()) << prefix;
  m.rows = w->shape[0];
  m.cols = w->shape[1];
  m.v = ToFloatVector(*w);
  if (w->dtype != DType::kF8E4M3) return m;
  const std::string scale_name =
      prefix + (config.quant.scale_inv_name ? ".weight_scale_inv" : ".weight_scale");
  std::vector<float> scale = testing::ReadFloat(ckpt, scale_name);
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t c = 0; c < m.cols; ++c) {
      float s;
      if (config.quant.method == QuantMethod::kFp8PerChannel) {
        s = scale[static_cast<size_t>(r)];
      } else {
        const int64_t kb = (m.cols + config.quant.block_k - 1) / config.quant.block_k;
        s = scale[static_cast<size_t>((r / config.quant.block_n) * kb + c / config.quant.block_k)];
      }
      m.v[static_cast<size_t>(r * m.cols + c)] *= s;
    }
  }
  return m;
}

// Expects slice == full[rows, cols] element by element (At() dequantises).
void ExpectSlice(const LinearWeight& slice, const Matrix& full, int64_t row0, int64_t col0,
                 const std::string& what) {
  ASSERT_FALSE(slice.empty()) << what;
  ASSERT_LE(row0 + slice.out, full.rows) << what;
  ASSERT_LE(col0 + slice.in, full.cols) << what;
  int mismatches = 0;
  for (int64_t r = 0; r < slice.out; ++r) {
    for (int64_t c = 0; c < slice.in; ++c) {
      if (slice.At(r, c) != full.at(row0 + r, col0 + c) && ++mismatches <= 3) {
        ADD_FAILURE() << what << " [" << r << ", " << c << "] = " << slice.At(r, c) << ", full ["
                      << row0 + r << ", " << col0 + c << "] = " << full.at(row0 + r, col0 + c);
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << what;
}

std::vector<float> Slice(const std::vector<float>& v, int64_t begin, int64_t n) {
  return std::vector<float>(v.begin() + begin, v.begin() + begin + n);
}

// Checks every tensor of every rank against the full checkpoint tensors: the per-kind slices
// (column, row, vocab, kv-replicated, biases, replicated) concatenate back to the full tensor.
void CheckAllRanks(const std::filesystem::path& dir, int tp) {
  SCOPED_TRACE("tp=" + std::to_string(tp));
  Result<ModelConfig> config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  const ModelConfig& c = *config;
  Result<Checkpoint> ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok());
  const int64_t hd = c.head_dim;
  int64_t lm_rows_total = 0;
  for (int rank = 0; rank < tp; ++rank) {
    SCOPED_TRACE("rank=" + std::to_string(rank));
    LoadOptions opts;
    opts.tp_rank = rank;
    opts.tp_size = tp;
    Result<ModelWeights> w = LoadModelWeights(dir, opts);
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    EXPECT_EQ(w->tp_rank, rank);
    EXPECT_EQ(w->tp_size, tp);
    ASSERT_EQ(static_cast<int>(w->layers.size()), c.num_hidden_layers);
    EXPECT_EQ(w->local_q_heads(), c.num_attention_heads / tp);
    EXPECT_EQ(w->local_kv_heads(), std::max(1, c.num_key_value_heads / tp));

    ExpectSlice(w->embed, FullWeight(*ckpt, c, "model.embed_tokens"), 0, 0, "embed");
    EXPECT_EQ(w->embed.out, c.vocab_size);
    EXPECT_EQ(w->final_norm, testing::ReadFloat(*ckpt, "model.norm.weight"));

    // lm_head: rows [r * ceil(V/tp), ...).
    const int64_t chunk = (c.vocab_size + tp - 1) / tp;
    EXPECT_EQ(w->vocab_begin, std::min(c.vocab_size, rank * chunk));
    EXPECT_EQ(w->lm_head.out,
              std::min(c.vocab_size, (rank + 1) * chunk) - std::min(c.vocab_size, rank * chunk));
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
    if (w->lm_head.out > 0) {
      ExpectSlice(w->lm_head, FullWeight(*ckpt, c, head), w->vocab_begin, 0, "lm_head");
    }
    lm_rows_total += w->lm_head.out;

    for (int l = 0; l < c.num_hidden_layers; ++l) {
      SCOPED_TRACE("layer " + std::to_string(l));
      const LayerWeights& L = w->layers[static_cast<size_t>(l)];
      const std::string p = "model.layers." + std::to_string(l) + ".";
      EXPECT_EQ(L.input_norm, testing::ReadFloat(*ckpt, p + "input_layernorm.weight"));
      EXPECT_EQ(L.post_attn_norm, testing::ReadFloat(*ckpt, p + "post_attention_layernorm.weight"));
      const int64_t q_rows = c.q_size() / tp;
      ExpectSlice(L.q, FullWeight(*ckpt, c, p + "self_attn.q_proj"), rank * q_rows, 0, "q");
      ExpectSlice(L.o, FullWeight(*ckpt, c, p + "self_attn.o_proj"), 0, rank * q_rows, "o");
      EXPECT_EQ(L.q.out, q_rows);
      EXPECT_EQ(L.o.in, q_rows);
      // kv: split by heads, or one replicated head when tp > kv heads.
      const int kv_local = std::max(1, c.num_key_value_heads / tp);
      const int64_t kv_head0 = tp <= c.num_key_value_heads ? int64_t{rank} * kv_local
                                                           : rank / (tp / c.num_key_value_heads);
      EXPECT_EQ(L.k.out, kv_local * hd);
      ExpectSlice(L.k, FullWeight(*ckpt, c, p + "self_attn.k_proj"), kv_head0 * hd, 0, "k");
      ExpectSlice(L.v, FullWeight(*ckpt, c, p + "self_attn.v_proj"), kv_head0 * hd, 0, "v");
      if (c.attention_bias) {
        EXPECT_EQ(L.q.bias, Slice(testing::ReadFloat(*ckpt, p + "self_attn.q_proj.bias"),
                                  rank * q_rows, q_rows));
        EXPECT_EQ(L.k.bias, Slice(testing::ReadFloat(*ckpt, p + "self_attn.k_proj.bias"),
                                  kv_head0 * hd, kv_local * hd));
        EXPECT_EQ(L.v.bias, Slice(testing::ReadFloat(*ckpt, p + "self_attn.v_proj.bias"),
                                  kv_head0 * hd, kv_local * hd));
      } else {
        EXPECT_TRUE(L.q.bias.empty());
      }
      EXPECT_TRUE(L.o.bias.empty());
      if (c.use_qk_norm) {
        EXPECT_EQ(L.q_norm, testing::ReadFloat(*ckpt, p + "self_attn.q_norm.weight"));
        EXPECT_EQ(L.k_norm, testing::ReadFloat(*ckpt, p + "self_attn.k_norm.weight"));
      }
      EXPECT_EQ(L.is_moe, c.IsMoeLayer(l));
      auto check_mlp = [&](const ExpertWeights& e, const std::string& mp, int64_t inter) {
        const int64_t local = inter / tp;
        EXPECT_EQ(e.gate.out, local);
        ExpectSlice(e.gate, FullWeight(*ckpt, c, mp + "gate_proj"), rank * local, 0, mp + "gate");
        ExpectSlice(e.up, FullWeight(*ckpt, c, mp + "up_proj"), rank * local, 0, mp + "up");
        ExpectSlice(e.down, FullWeight(*ckpt, c, mp + "down_proj"), 0, rank * local, mp + "down");
      };
      if (!L.is_moe) {
        check_mlp(L.mlp, p + "mlp.", c.intermediate_size);
        continue;
      }
      EXPECT_EQ(L.router, testing::ReadFloat(*ckpt, p + "mlp.gate.weight"));
      if (c.router_correction_bias) {
        EXPECT_EQ(L.router_bias, testing::ReadFloat(*ckpt, p + "mlp.gate.e_score_correction_bias"));
      }
      ASSERT_EQ(static_cast<int>(L.experts.size()), c.n_routed_experts);
      for (int e = 0; e < c.n_routed_experts; ++e) {
        check_mlp(L.experts[static_cast<size_t>(e)], p + "mlp.experts." + std::to_string(e) + ".",
                  c.moe_intermediate_size);
      }
      EXPECT_EQ(L.has_shared_expert, c.n_shared_experts > 0);
      if (L.has_shared_expert) {
        check_mlp(L.shared, p + "mlp.shared_experts.",
                  c.moe_intermediate_size * c.n_shared_experts);
      }
    }
  }
  EXPECT_EQ(lm_rows_total, c.vocab_size);
}

class LoaderTest : public ::testing::Test {
 protected:
  static void WriteTiny(const std::filesystem::path& dir, TinyArch arch, DType dtype,
                        bool mtp = false) {
    TinyModelOptions o;
    o.arch = arch;
    o.dtype = dtype;
    o.mtp = mtp;
    o.seed = 7;
    ASSERT_TRUE(WriteTinyModel(dir, o).ok());
  }
  TempDir dir_;
};

TEST_F(LoaderTest, GlmSlicesConcatenateBackToFullTensors) {
  WriteTiny(dir_.path(), TinyArch::kGlm4Moe, DType::kBF16);
  for (int tp : {1, 2, 4}) CheckAllRanks(dir_.path(), tp);  // tp=4 replicates the 2 kv heads
}

TEST_F(LoaderTest, OtherArchitecturesAndF32) {
  WriteTiny(dir_ / "llama", TinyArch::kLlama, DType::kF32);
  WriteTiny(dir_ / "qwen", TinyArch::kQwen3Moe, DType::kBF16);
  for (int tp : {1, 2}) {
    CheckAllRanks(dir_ / "llama", tp);
    CheckAllRanks(dir_ / "qwen", tp);
  }
  LoadOptions o;
  Result<ModelWeights> w = LoadModelWeights(dir_ / "llama", o);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->embed.dtype, DType::kF32);
  EXPECT_EQ(w->layers[0].q.dtype, DType::kF32);
  EXPECT_TRUE(w->layers[0].q_norm.empty());
  Result<ModelWeights> q = LoadModelWeights(dir_ / "qwen", o);
  ASSERT_TRUE(q.ok());
  EXPECT_FALSE(q->layers[0].is_moe);  // mlp_only_layers [0]
  EXPECT_TRUE(q->layers[1].is_moe);
  EXPECT_TRUE(q->layers[1].router_bias.empty());
  EXPECT_FALSE(q->layers[1].has_shared_expert);
}

TEST_F(LoaderTest, UnevenVocabAndTiedEmbeddings) {
  TinyModelOptions o;
  Json j = Json::parse(TinyModelConfigJson(o));
  j["vocab_size"] = 510;  // ceil(510 / 4) = 128: the last rank gets 126 rows
  ASSERT_TRUE(WriteRandomCheckpoint(dir_ / "uneven", j.dump(), 1, DType::kBF16).ok());
  CheckAllRanks(dir_ / "uneven", 4);
  j["tie_word_embeddings"] = true;
  ASSERT_TRUE(WriteRandomCheckpoint(dir_ / "tied", j.dump(), 1, DType::kBF16).ok());
  EXPECT_FALSE(Checkpoint::Open(dir_ / "tied")->Has("lm_head.weight"));
  CheckAllRanks(dir_ / "tied", 2);
}

TEST_F(LoaderTest, Fp8PerChannelAndBlockScalesSliced) {
  WriteTiny(dir_ / "bf16", TinyArch::kGlm4Moe, DType::kBF16);
  QuantizeOptions channel;
  channel.scheme = Fp8Scheme::kPerChannel;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "bf16", dir_ / "channel", channel).ok());
  QuantizeOptions block;
  block.scheme = Fp8Scheme::kBlock;
  block.block_size = 32;  // per-rank sizes of the tiny model are multiples of 32 up to tp=4
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "bf16", dir_ / "block", block).ok());
  block.format = Fp8Format::kDeepSeek;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "bf16", dir_ / "deepseek", block).ok());
  for (int tp : {1, 2, 4}) {
    CheckAllRanks(dir_ / "channel", tp);
    CheckAllRanks(dir_ / "block", tp);
  }
  CheckAllRanks(dir_ / "deepseek", 2);

  LoadOptions o;
  o.tp_size = 2;
  o.tp_rank = 1;
  Result<ModelWeights> w = LoadModelWeights(dir_ / "channel", o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const LinearWeight& q = w->layers[1].q;
  EXPECT_EQ(q.dtype, DType::kF8E4M3);
  EXPECT_EQ(q.scale_kind, ScaleKind::kPerChannel);
  EXPECT_EQ(q.scale.size(), static_cast<size_t>(q.out));
  EXPECT_EQ(w->layers[1].o.scale.size(), 128u);  // row-parallel: all H output channels
  EXPECT_EQ(w->lm_head.dtype, DType::kBF16);     // not quantised
  EXPECT_EQ(w->embed.dtype, DType::kBF16);

  w = LoadModelWeights(dir_ / "block", o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const LinearWeight& down = w->layers[1].experts[3].down;  // [128, 64] local of [128, 128]
  EXPECT_EQ(down.scale_kind, ScaleKind::kBlock);
  EXPECT_EQ(down.block_n, 32);
  EXPECT_EQ(down.scale.size(), 4u * 2u);
}

TEST_F(LoaderTest, BlockFp8RejectsSlicesThatSplitABlock) {
  WriteTiny(dir_ / "bf16", TinyArch::kGlm4Moe, DType::kBF16);
  QuantizeOptions block;
  block.scheme = Fp8Scheme::kBlock;  // 128x128: per-rank Im = 64 at tp=2
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "bf16", dir_ / "block", block).ok());
  LoadOptions o;
  EXPECT_TRUE(LoadModelWeights(dir_ / "block", o).ok());  // tp=1: partial edge blocks are fine
  o.tp_size = 2;
  Result<ModelWeights> w = LoadModelWeights(dir_ / "block", o);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(),
              HasSubstr("is not divisible by weight quantization block_n = 128"));
}

TEST_F(LoaderTest, QuantizedValuesWithinE4M3ErrorOfOriginals) {
  WriteTiny(dir_ / "f32", TinyArch::kGlm4Moe, DType::kF32);
  QuantizeOptions channel;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "f32", dir_ / "fp8", channel).ok());
  Result<Checkpoint> orig = Checkpoint::Open(dir_ / "f32");
  ASSERT_TRUE(orig.ok());
  LoadOptions o;
  Result<ModelWeights> w = LoadModelWeights(dir_ / "fp8", o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const LinearWeight& g = w->layers[2].experts[5].gate;
  std::vector<float> ref =
      testing::ReadFloat(*orig, "model.layers.2.mlp.experts.5.gate_proj.weight");
  for (int64_t r = 0; r < g.out; ++r) {
    const float scale = g.scale[static_cast<size_t>(r)];
    for (int64_t c = 0; c < g.in; ++c) {
      const float x = ref[static_cast<size_t>(r * g.in + c)];
      // Half an e4m3 ulp: 2^-4 relative for normals, 2^-10 * scale in the subnormal range.
      const float tol = std::max(std::fabs(x) * 0.0625f, scale * 0x1p-10f) * 1.0001f;
      EXPECT_LE(std::fabs(g.At(r, c) - x), tol) << r << "," << c;
    }
  }
}

TEST_F(LoaderTest, MtpMaxLayersAndProgress) {
  WriteTiny(dir_.path(), TinyArch::kGlm4Moe, DType::kBF16, /*mtp=*/true);
  Result<Checkpoint> ckpt = Checkpoint::Open(dir_.path());
  ASSERT_TRUE(ckpt.ok());
  Result<ModelConfig> config = LoadModelConfig(dir_.path());
  ASSERT_TRUE(config.ok());
  LoadOptions o;
  Result<ModelWeights> w = LoadModelWeights(dir_.path(), o);
  ASSERT_TRUE(w.ok());
  EXPECT_TRUE(w->mtp.empty());

  o.load_mtp = true;
  o.tp_size = 2;
  std::vector<std::pair<int64_t, int64_t>> calls;
  o.progress = [&](int64_t done, int64_t total) { calls.emplace_back(done, total); };
  w = LoadModelWeights(dir_.path(), o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->mtp.size(), 1u);
  const MtpWeights& mtp = w->mtp[0];
  EXPECT_EQ(mtp.enorm, testing::ReadFloat(*ckpt, "model.layers.3.enorm.weight"));
  EXPECT_EQ(mtp.hnorm, testing::ReadFloat(*ckpt, "model.layers.3.hnorm.weight"));
  EXPECT_EQ(mtp.shared_head_norm,
            testing::ReadFloat(*ckpt, "model.layers.3.shared_head.norm.weight"));
  EXPECT_EQ(mtp.eh_proj.out, 128);
  EXPECT_EQ(mtp.eh_proj.in, 256);  // replicated
  ExpectSlice(mtp.eh_proj, FullWeight(*ckpt, *config, "model.layers.3.eh_proj"), 0, 0, "eh");
  EXPECT_TRUE(mtp.layer.is_moe);
  EXPECT_EQ(mtp.layer.q.out, 128);  // 2 of 4 heads
  ExpectSlice(mtp.layer.experts[7].down,
              FullWeight(*ckpt, *config, "model.layers.3.mlp.experts.7.down_proj"), 0, 0, "mtp");
  ASSERT_FALSE(calls.empty());
  for (size_t i = 1; i < calls.size(); ++i) EXPECT_GE(calls[i].first, calls[i - 1].first);
  EXPECT_EQ(calls.back().first, calls.back().second);
  EXPECT_GT(calls.back().second, 0);
  EXPECT_LT(calls.back().second, ckpt->total_tensor_bytes());  // MTP embed/head copies skipped

  o.max_layers = 1;
  o.load_mtp = false;
  w = LoadModelWeights(dir_.path(), o);
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(w->layers.size(), 1u);
  EXPECT_EQ(w->config.num_hidden_layers, 1);
  EXPECT_FALSE(w->layers[0].is_moe);
}

TEST_F(LoaderTest, StreamingHandsOverEachLayerInOrder) {
  WriteTiny(dir_.path(), TinyArch::kGlm4Moe, DType::kBF16, /*mtp=*/false);
  LoadOptions o;
  o.tp_size = 2;
  o.tp_rank = 1;
  Result<ModelWeights> whole = LoadModelWeights(dir_.path(), o);
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  std::vector<int> order;
  std::vector<LayerWeights> streamed;
  o.on_layer = [&](int layer, LayerWeights&& w) {
    order.push_back(layer);
    streamed.push_back(std::move(w));
    return Status::Ok();
  };
  Result<ModelWeights> w = LoadModelWeights(dir_.path(), o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  ASSERT_EQ(w->layers.size(), whole->layers.size());
  ASSERT_EQ(streamed.size(), whole->layers.size());
  for (size_t l = 0; l < streamed.size(); ++l) {
    EXPECT_EQ(order[l], static_cast<int>(l));
    EXPECT_TRUE(w->layers[l].q.data.empty()) << "streamed layers are not kept";
    EXPECT_EQ(streamed[l].q.data, whole->layers[l].q.data);
    EXPECT_EQ(streamed[l].is_moe, whole->layers[l].is_moe);
    EXPECT_EQ(streamed[l].experts.size(), whole->layers[l].experts.size());
    if (!streamed[l].experts.empty()) {
      EXPECT_EQ(streamed[l].experts.back().down.data, whole->layers[l].experts.back().down.data);
    }
  }
  EXPECT_EQ(w->lm_head.data, whole->lm_head.data);
  EXPECT_EQ(w->embed.data, whole->embed.data);

  // A failing consumer aborts the load with its status, naming the layer.
  o.on_layer = [](int layer, LayerWeights&&) {
    return layer == 1 ? ResourceExhausted("device full") : Status::Ok();
  };
  w = LoadModelWeights(dir_.path(), o);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kResourceExhausted);
  EXPECT_THAT(w.status().message(), HasSubstr("layer 1"));
}

TEST_F(LoaderTest, ErrorsNameTheProblem) {
  WriteTiny(dir_.path(), TinyArch::kGlm4Moe, DType::kBF16);
  LoadOptions o;
  o.tp_size = 3;
  Result<ModelWeights> w = LoadModelWeights(dir_.path(), o);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(w.status().message(), HasSubstr("num_attention_heads"));
  EXPECT_THAT(w.status().message(), HasSubstr("tp_size 3"));
  o.tp_size = 2;
  o.tp_rank = 2;
  EXPECT_FALSE(LoadModelWeights(dir_.path(), o).ok());

  // A tensor missing from the checkpoint.
  Result<ModelConfig> config = LoadModelConfig(dir_.path());
  {
    Result<Checkpoint> ckpt = Checkpoint::Open(dir_.path());
    ASSERT_TRUE(ckpt.ok());
    SafetensorsWriter writer;
    for (const std::string& name : ckpt->names()) {
      if (name == "model.layers.2.mlp.experts.6.up_proj.weight") continue;
      TensorView v = *ckpt->Get(name);
      ASSERT_TRUE(writer.Add(name, v.dtype, v.shape, std::span(v.data, v.nbytes)).ok());
    }
    ASSERT_TRUE(writer.WriteDir(dir_ / "missing").ok());
  }
  std::filesystem::copy_file(dir_ / "config.json", dir_ / "missing" / "config.json");
  w = LoadModelWeights(dir_ / "missing", LoadOptions{});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kNotFound);
  EXPECT_THAT(w.status().message(),
              HasSubstr("tensor model.layers.2.mlp.experts.6.up_proj.weight not found"));
  EXPECT_THAT(w.status().message(), HasSubstr("layer 2"));

  // A config that does not match the tensors.
  Json j = Json::parse(testing::ReadFile(dir_ / "config.json"));
  j["moe_intermediate_size"] = 64;
  testing::WriteFile(dir_ / "missing" / "config.json", j.dump());
  w = LoadModelWeights(dir_ / "missing", LoadOptions{});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(w.status().message(), HasSubstr("expected [64, 128]"));
  EXPECT_THAT(w.status().message(), HasSubstr("got [128, 128] BF16"));
}

TEST(DummyWeightsTest, SlicesAreConsistentAcrossTpSizes) {
  for (bool fp8 : {false, true}) {
    SCOPED_TRACE(fp8 ? "fp8" : "bf16");
    TinyModelOptions t;
    Result<ModelConfig> config = ParseModelConfig(TinyModelConfigJson(t));
    ASSERT_TRUE(config.ok());
    if (fp8) config->quant.method = QuantMethod::kFp8PerChannel;
    LoadOptions o;
    o.seed = 11;
    Result<ModelWeights> full = MakeDummyWeights(*config, o);
    ASSERT_TRUE(full.ok()) << full.status().ToString();
    EXPECT_EQ(full->layers[1].q.dtype, fp8 ? DType::kF8E4M3 : DType::kBF16);
    EXPECT_EQ(full->lm_head.dtype, DType::kBF16);
    auto to_matrix = [](const LinearWeight& lw) {
      Matrix m;
      m.rows = lw.out;
      m.cols = lw.in;
      for (int64_t r = 0; r < lw.out; ++r) {
        for (int64_t c = 0; c < lw.in; ++c) m.v.push_back(lw.At(r, c));
      }
      return m;
    };
    for (int tp : {2, 4}) {
      for (int rank = 0; rank < tp; ++rank) {
        o.tp_size = tp;
        o.tp_rank = rank;
        Result<ModelWeights> part = MakeDummyWeights(*config, o);
        ASSERT_TRUE(part.ok());
        const LayerWeights& a = part->layers[2];
        const LayerWeights& f = full->layers[2];
        const int64_t q_rows = config->q_size() / tp;
        ExpectSlice(a.q, to_matrix(f.q), rank * q_rows, 0, "q");
        ExpectSlice(a.o, to_matrix(f.o), 0, rank * q_rows, "o");
        const int64_t kv_head = tp <= 2 ? rank : rank / 2;
        ExpectSlice(a.k, to_matrix(f.k), kv_head * 64, 0, "k");
        EXPECT_EQ(a.q.bias, Slice(f.q.bias, rank * q_rows, q_rows));
        const int64_t im = 128 / tp;
        ExpectSlice(a.experts[4].up, to_matrix(f.experts[4].up), rank * im, 0, "up");
        ExpectSlice(a.experts[4].down, to_matrix(f.experts[4].down), 0, rank * im, "down");
        ExpectSlice(a.shared.gate, to_matrix(f.shared.gate), rank * im, 0, "shared");
        ExpectSlice(part->layers[0].mlp.down, to_matrix(full->layers[0].mlp.down), 0,
                    rank * (256 / tp), "dense down");
        ExpectSlice(part->lm_head, to_matrix(full->lm_head), part->vocab_begin, 0, "lm_head");
        EXPECT_EQ(a.router, f.router);
        EXPECT_EQ(a.router_bias, f.router_bias);
        EXPECT_EQ(a.input_norm, f.input_norm);
      }
    }
  }
}

TEST(DummyWeightsTest, ValuesFollowTheDocumentedFunction) {
  TinyModelOptions t;
  t.dtype = DType::kF32;
  Result<ModelConfig> config = ParseModelConfig(TinyModelConfigJson(t));
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->torch_dtype, "float32");
  LoadOptions o;
  o.seed = 3;
  Result<ModelWeights> a = MakeDummyWeights(*config, o);
  ASSERT_TRUE(a.ok());
  const LinearWeight& q = a->layers[1].q;
  EXPECT_EQ(q.dtype, DType::kF32);
  double sum_sq = 0;
  for (int64_t r = 0; r < q.out; ++r) {
    for (int64_t c = 0; c < q.in; ++c) {
      const float v = DummyWeightValue(3, "model.layers.1.self_attn.q_proj.weight", r, c, 128);
      EXPECT_EQ(q.At(r, c), v);
      sum_sq += double{v} * v;
    }
  }
  const double std = std::sqrt(sum_sq / static_cast<double>(q.out * q.in));
  EXPECT_NEAR(std, 1.0 / std::sqrt(128.0), 0.05 / std::sqrt(128.0));
  // Same seed: same weights; another seed: different weights.
  Result<ModelWeights> b = MakeDummyWeights(*config, o);
  EXPECT_EQ(b->layers[1].q.data, q.data);
  o.seed = 4;
  Result<ModelWeights> c = MakeDummyWeights(*config, o);
  EXPECT_NE(c->layers[1].q.data, q.data);
  // Norms around 1, biases small.
  for (float v : a->layers[1].input_norm) EXPECT_NEAR(v, 1.0f, 0.1f);
  for (float v : a->layers[1].q.bias) EXPECT_LE(std::fabs(v), 0.02f);
}

TEST(DummyWeightsTest, BuiltinConfigWithMaxLayersAndBlockFp8Checks) {
  Result<ModelConfig> config = BuiltinConfig("glm-4.5-air");
  ASSERT_TRUE(config.ok());
  // Shrink the expensive dimensions but keep the structure.
  config->vocab_size = 1024;
  config->hidden_size = 256;
  config->intermediate_size = 512;
  config->moe_intermediate_size = 128;
  config->n_routed_experts = 8;
  config->num_attention_heads = 8;
  config->num_key_value_heads = 2;
  config->head_dim = 32;
  LoadOptions o;
  o.max_layers = 2;
  o.tp_size = 4;
  o.tp_rank = 3;
  Result<ModelWeights> w = MakeDummyWeights(*config, o);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->layers.size(), 2u);
  EXPECT_FALSE(w->layers[0].is_moe);
  EXPECT_TRUE(w->layers[1].is_moe);
  EXPECT_EQ(w->layers[1].experts[0].gate.dtype, DType::kF8E4M3);
  EXPECT_EQ(w->layers[1].experts[0].gate.out, 32);
  EXPECT_EQ(w->local_kv_heads(), 1);

  config->quant.method = QuantMethod::kFp8Block;
  Status s = ValidateTensorParallel(*config, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("block FP8 at tp_size 8"));
  // The spec's GLM-4.6 example: Im 1536 at TP8 = 192 per rank.
  Result<ModelConfig> glm46 = BuiltinConfig("glm-4.6");
  glm46->quant.method = QuantMethod::kFp8Block;
  s = ValidateTensorParallel(*glm46, 8);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("expert gate/up output size 192 is not divisible by weight "
                                     "quantization block_n = 128"));
  EXPECT_TRUE(ValidateTensorParallel(*glm46, 4).ok());
  glm46->quant.method = QuantMethod::kFp8PerChannel;
  EXPECT_TRUE(ValidateTensorParallel(*glm46, 8).ok());
  EXPECT_TRUE(ValidateTensorParallel(*glm46, 16).ok());  // kv heads replicated
  EXPECT_FALSE(ValidateTensorParallel(*glm46, 12).ok());
}

}  // namespace
}  // namespace spark::engine

namespace spark::engine {
namespace {

TEST(DummyWeightsTest, LargeTensorsFilledInParallelEqualSerialSlices) {
  TinyModelOptions t;
  t.dtype = DType::kF32;
  Result<ModelConfig> config = ParseModelConfig(TinyModelConfigJson(t));
  ASSERT_TRUE(config.ok());
  config->vocab_size = 40000;  // [40000, 128] = 5.1M elements: filled by several threads
  LoadOptions o;
  o.max_layers = 1;
  Result<ModelWeights> full = MakeDummyWeights(*config, o);
  ASSERT_TRUE(full.ok());
  for (int64_t r : {0, 255, 256, 20000, 39999}) {
    for (int64_t c : {0, 77, 127}) {
      EXPECT_EQ(full->embed.At(r, c), DummyWeightValue(0, "model.embed_tokens.weight", r, c, 128));
    }
  }
  o.tp_size = 4;  // 10000-row lm_head slices: filled serially
  for (int rank = 0; rank < 4; ++rank) {
    o.tp_rank = rank;
    Result<ModelWeights> part = MakeDummyWeights(*config, o);
    ASSERT_TRUE(part.ok());
    ASSERT_EQ(part->lm_head.out, 10000);
    EXPECT_EQ(0, std::memcmp(part->lm_head.data.data(),
                             full->lm_head.data.data() + rank * 10000 * 128 * 4,
                             part->lm_head.data.size()));
  }
}

}  // namespace
}  // namespace spark::engine
