#include "engine/model/quantize.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/safetensors.h"
#include "engine/model/tiny_model.h"
#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;
using testing::TempDir;

// Independent E4M3 encoder: the nearest of the 254 finite code values (ties to the even code)
// after clamping to [-448, 448], as torch's clamp + .to(float8_e4m3fn) does.
uint8_t ReferenceE4M3(float x) {
  const double v = std::min(448.0, std::max(-448.0, static_cast<double>(x)));
  int best = 0;
  double best_err = std::numeric_limits<double>::infinity();
  for (int code = 0; code < 256; ++code) {
    const int e = (code >> 3) & 0xf;
    const int m = code & 7;
    if (e == 15 && m == 7) continue;
    double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    const bool neg = code >= 0x80;
    if (neg != std::signbit(x)) continue;
    const double err = std::fabs((neg ? -mag : mag) - v);
    if (err < best_err || (err == best_err && code % 2 == 0)) {
      best_err = err;
      best = code;
    }
  }
  return static_cast<uint8_t>(best);
}

std::vector<float> RandomMatrix(int64_t rows, int64_t cols, uint32_t seed) {
  std::vector<float> w(static_cast<size_t>(rows * cols));
  uint32_t s = seed;
  for (float& v : w) {
    s = s * 1664525u + 1013904223u;
    const float u = static_cast<float>(s >> 8) / 16777216.0f - 0.5f;
    v = Bf16ToFloat(FloatToBf16(u * 0.2f * (1.0f + static_cast<float>(s % 7))));
  }
  return w;
}

// The reference algorithm, element by element, with its own loops.
void ExpectMatchesReference(const Fp8Tensor& t, const std::vector<float>& w, int64_t rows,
                            int64_t cols, int bn, int bk) {
  const int64_t nb = (rows + bn - 1) / bn;
  const int64_t kb = (cols + bk - 1) / bk;
  ASSERT_EQ(t.scale.size(), static_cast<size_t>(nb * kb));
  int bad = 0;
  for (int64_t i = 0; i < nb; ++i) {
    for (int64_t j = 0; j < kb; ++j) {
      float amax = 0.0f;
      for (int64_t r = i * bn; r < std::min(rows, (i + 1) * bn); ++r) {
        for (int64_t c = j * bk; c < std::min(cols, (j + 1) * bk); ++c) {
          amax = std::max(amax, std::fabs(w[static_cast<size_t>(r * cols + c)]));
        }
      }
      float scale = amax / 448.0f;
      if (scale == 0.0f) scale = 1.0f;
      ASSERT_EQ(t.scale[static_cast<size_t>(i * kb + j)], scale) << i << "," << j;
      for (int64_t r = i * bn; r < std::min(rows, (i + 1) * bn); ++r) {
        for (int64_t c = j * bk; c < std::min(cols, (j + 1) * bk); ++c) {
          const size_t idx = static_cast<size_t>(r * cols + c);
          const uint8_t want = ReferenceE4M3(w[idx] / scale);
          if (t.q[idx] != want && ++bad < 5) {
            ADD_FAILURE() << "[" << r << "," << c << "] w=" << w[idx] << " got " << int{t.q[idx]}
                          << " want " << int{want};
          }
        }
      }
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(QuantizeTest, PerChannelEqualsReferenceComputation) {
  const int64_t rows = 37;
  const int64_t cols = 300;
  std::vector<float> w = RandomMatrix(rows, cols, 1);
  for (int64_t c = 0; c < cols; ++c) w[static_cast<size_t>(5 * cols + c)] = 0.0f;  // zero row
  Fp8Tensor t = QuantizeFp8PerChannel(w, rows, cols);
  EXPECT_EQ(t.scale_shape, (std::vector<int64_t>{rows, 1}));
  EXPECT_EQ(t.scale[5], 1.0f);
  ExpectMatchesReference(t, w, rows, cols, 1, static_cast<int>(cols));
  // The row maximum maps exactly to +-448.
  for (int64_t r = 0; r < rows; ++r) {
    if (r == 5) continue;
    float amax = 0;
    for (int64_t c = 0; c < cols; ++c)
      amax = std::max(amax, std::fabs(w[static_cast<size_t>(r * cols + c)]));
    EXPECT_FLOAT_EQ(amax / t.scale[static_cast<size_t>(r)], 448.0f);
  }
}

TEST(QuantizeTest, BlockEqualsReferenceIncludingPartialEdgeBlocks) {
  const int64_t rows = 130;
  const int64_t cols = 200;
  std::vector<float> w = RandomMatrix(rows, cols, 2);
  Fp8Tensor t = QuantizeFp8Block(w, rows, cols, 128, 128);
  EXPECT_EQ(t.scale_shape, (std::vector<int64_t>{2, 2}));
  ExpectMatchesReference(t, w, rows, cols, 128, 128);
  Fp8Tensor small = QuantizeFp8Block(w, rows, cols, 32, 64);
  EXPECT_EQ(small.scale_shape, (std::vector<int64_t>{5, 4}));
  ExpectMatchesReference(small, w, rows, cols, 32, 64);
  EXPECT_EQ(DequantizeFp8(small, 100, 150, 32, 64),
            F8E4M3ToFloat(small.q[100 * cols + 150]) * small.scale[3 * 4 + 2]);
}

TEST(QuantizeTest, QuantizableNames) {
  for (const char* yes :
       {"model.layers.0.self_attn.q_proj.weight", "model.layers.12.self_attn.o_proj.weight",
        "model.layers.0.mlp.gate_proj.weight", "model.layers.3.mlp.experts.159.down_proj.weight",
        "model.layers.3.mlp.shared_experts.up_proj.weight",
        "model.layers.92.self_attn.k_proj.weight"}) {
    EXPECT_TRUE(IsQuantizableWeightName(yes)) << yes;
  }
  for (const char* no :
       {"lm_head.weight", "model.embed_tokens.weight", "model.layers.3.mlp.gate.weight",
        "model.layers.3.mlp.gate.e_score_correction_bias", "model.layers.0.self_attn.q_proj.bias",
        "model.layers.0.input_layernorm.weight", "model.layers.92.eh_proj.weight",
        "model.layers.92.shared_head.head.weight", "model.layers.0.self_attn.q_norm.weight",
        "model.norm.weight"}) {
    EXPECT_FALSE(IsQuantizableWeightName(no)) << no;
  }
}

class QuantizeCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    TinyModelOptions o;
    o.mtp = true;
    o.seed = 5;
    ASSERT_TRUE(WriteTinyModel(dir_ / "in", o).ok());
  }
  TempDir dir_;
};

TEST_F(QuantizeCheckpointTest, ChannelCompressedTensors) {
  QuantizeOptions o;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "in", dir_ / "out", o).ok());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json"}) {
    EXPECT_EQ(testing::ReadFile(dir_ / "in" / f), testing::ReadFile(dir_ / "out" / f)) << f;
  }
  Json config = Json::parse(testing::ReadFile(dir_ / "out" / "config.json"));
  const Json& q = config["quantization_config"];
  EXPECT_EQ(q["quant_method"], "compressed-tensors");
  EXPECT_EQ(q["config_groups"]["group_0"]["weights"]["strategy"], "channel");
  EXPECT_EQ(q["config_groups"]["group_0"]["input_activations"]["strategy"], "token");
  std::vector<std::string> ignore = q["ignore"];
  EXPECT_THAT(ignore, ::testing::Contains("lm_head"));
  EXPECT_THAT(ignore, ::testing::Contains("model.layers.1.mlp.gate"));
  EXPECT_THAT(ignore, ::testing::Contains("model.layers.3.eh_proj"));
  EXPECT_THAT(ignore, ::testing::Contains("model.layers.3.shared_head.head"));
  EXPECT_THAT(ignore, ::testing::Not(::testing::Contains("model.embed_tokens")));
  Result<ModelConfig> parsed = LoadModelConfig(dir_ / "out");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->quant.method, QuantMethod::kFp8PerChannel);

  Result<Checkpoint> in = Checkpoint::Open(dir_ / "in");
  Result<Checkpoint> out = Checkpoint::Open(dir_ / "out");
  ASSERT_TRUE(in.ok() && out.ok());
  int quantized = 0;
  for (const std::string& name : in->names()) {
    TensorView a = *in->Get(name);
    TensorView b = *out->Get(name);
    if (!IsQuantizableWeightName(name)) {
      EXPECT_EQ(b.dtype, a.dtype) << name;
      EXPECT_EQ(0, std::memcmp(a.data, b.data, a.nbytes)) << name;
      continue;
    }
    ++quantized;
    EXPECT_EQ(b.dtype, DType::kF8E4M3);
    EXPECT_EQ(b.shape, a.shape);
    TensorView s = *out->Get(name + "_scale");
    EXPECT_EQ(s.dtype, DType::kF32);
    EXPECT_EQ(s.shape, (std::vector<int64_t>{a.shape[0], 1}));
    if (name == "model.layers.2.self_attn.o_proj.weight" ||
        name == "model.layers.3.mlp.experts.1.gate_proj.weight") {
      Fp8Tensor t;
      t.q.assign(reinterpret_cast<const uint8_t*>(b.data),
                 reinterpret_cast<const uint8_t*>(b.data) + b.nbytes);
      t.scale = ToFloatVector(s);
      ExpectMatchesReference(t, ToFloatVector(a), a.shape[0], a.shape[1], 1,
                             static_cast<int>(a.shape[1]));
    }
  }
  // 3 layers + MTP: 4 attention x 4, 1 dense MLP x 3, 3 MoE layers x (8 experts + shared) x 3.
  EXPECT_EQ(quantized, 4 * 4 + 3 + 3 * 9 * 3);
  EXPECT_EQ(out->Get("model.layers.1.mlp.gate.e_score_correction_bias")->dtype, DType::kF32);
  EXPECT_EQ(out->Get("model.layers.1.mlp.gate.weight")->dtype, DType::kBF16);

  // quantize -> load: the loaded dequantised weights equal the independent computation.
  LoadOptions lo;
  lo.load_mtp = true;
  Result<ModelWeights> w = LoadModelWeights(dir_ / "out", lo);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const LinearWeight& up = w->mtp[0].layer.experts[2].up;
  std::vector<float> orig = testing::ReadFloat(*in, "model.layers.3.mlp.experts.2.up_proj.weight");
  for (int64_t r = 0; r < up.out; ++r) {
    float amax = 0;
    for (int64_t c = 0; c < up.in; ++c) amax = std::max(amax, std::fabs(orig[r * up.in + c]));
    const float scale = amax / 448.0f;
    for (int64_t c = 0; c < up.in; ++c) {
      const float want = F8E4M3ToFloat(ReferenceE4M3(orig[r * up.in + c] / scale)) * scale;
      ASSERT_EQ(up.At(r, c), want) << r << "," << c;
    }
  }
  EXPECT_EQ(w->mtp[0].eh_proj.dtype, DType::kBF16);
}

TEST_F(QuantizeCheckpointTest, BlockFormatsAndShardedInput) {
  QuantizeOptions o;
  o.scheme = Fp8Scheme::kBlock;
  o.format = Fp8Format::kDeepSeek;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "in", dir_ / "ds", o).ok());
  Json config = Json::parse(testing::ReadFile(dir_ / "ds" / "config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "fp8");
  EXPECT_EQ(config["quantization_config"]["weight_block_size"], Json({128, 128}));
  Result<Checkpoint> ds = Checkpoint::Open(dir_ / "ds");
  ASSERT_TRUE(ds.ok());
  EXPECT_EQ(ds->Get("model.layers.0.mlp.down_proj.weight_scale_inv")->shape,
            (std::vector<int64_t>{1, 2}));  // [128, 256] in 128x128 blocks
  EXPECT_FALSE(ds->Has("model.layers.0.mlp.down_proj.weight_scale"));
  Result<ModelConfig> parsed = LoadModelConfig(dir_ / "ds");
  ASSERT_TRUE(parsed.ok());
  EXPECT_TRUE(parsed->quant.scale_inv_name);

  o.format = Fp8Format::kCompressedTensors;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "in", dir_ / "ct", o).ok());
  parsed = LoadModelConfig(dir_ / "ct");
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  EXPECT_EQ(parsed->quant.method, QuantMethod::kFp8Block);
  EXPECT_FALSE(parsed->quant.scale_inv_name);

  // A sharded input gives a sharded output with an index.
  Json cfg = Json::parse(testing::ReadFile(dir_ / "in" / "config.json"));
  ASSERT_TRUE(WriteRandomCheckpoint(dir_ / "sharded", cfg.dump(), 5, DType::kBF16, 400000).ok());
  ASSERT_TRUE(std::filesystem::exists(dir_ / "sharded" / "model.safetensors.index.json"));
  o.format = Fp8Format::kCompressedTensors;
  o.scheme = Fp8Scheme::kPerChannel;
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "sharded", dir_ / "sharded_fp8", o).ok());
  Result<Checkpoint> sharded = Checkpoint::Open(dir_ / "sharded_fp8");
  ASSERT_TRUE(sharded.ok()) << sharded.status().ToString();
  EXPECT_GT(sharded->num_files(), 1u);
  EXPECT_TRUE(sharded->Has("model.layers.2.mlp.experts.7.down_proj.weight_scale"));
  EXPECT_TRUE(LoadModelWeights(dir_ / "sharded_fp8", LoadOptions{}).ok());
}

TEST_F(QuantizeCheckpointTest, Errors) {
  QuantizeOptions o;
  o.format = Fp8Format::kDeepSeek;
  Status s = QuantizeCheckpoint(dir_ / "in", dir_ / "x", o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("--scheme fp8-block"));

  o = QuantizeOptions{};
  ASSERT_TRUE(QuantizeCheckpoint(dir_ / "in", dir_ / "once", o).ok());
  s = QuantizeCheckpoint(dir_ / "once", dir_ / "twice", o);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("already quantised"));

  s = QuantizeCheckpoint(dir_ / "nope", dir_ / "y", o);
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("config.json"));

  s = QuantizeCheckpoint(dir_ / "in", dir_ / "in", o);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spark::engine
