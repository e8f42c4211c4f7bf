// Runs the built spark-model binary: tiny -> inspect -> quantize -> inspect, and its errors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/safetensors.h"
#include "tests/engine/model/test_util.h"
#include "tests/engine/tools/run_tool.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;
using Json = nlohmann::json;

const char* const kBinary = testing::kSparkModelBinary;
using testing::RunResult;
using testing::RunTool;

class ModelToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(std::filesystem::exists(kBinary)) << kBinary << " is not built";
  }
  testing::TempDir dir_;
};

TEST_F(ModelToolsTest, TinyInspectQuantizeInspect) {
  const std::string tiny = (dir_ / "tiny").string();
  RunResult r = RunTool("tiny " + tiny + " --seed 3 --mtp");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("wrote tiny glm4moe model"));
  Result<ModelConfig> config = LoadModelConfig(tiny);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  EXPECT_EQ(config->num_nextn_predict_layers, 1);
  LoadOptions lo;
  lo.load_mtp = true;
  Result<ModelWeights> w = LoadModelWeights(tiny, lo);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_EQ(w->mtp.size(), 1u);

  r = RunTool("inspect " + tiny);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("architecture: Glm4MoeForCausalLM"));
  EXPECT_THAT(r.output, HasSubstr("layers: 3 (1 dense, 2 MoE) + 1 MTP"));
  EXPECT_THAT(r.output, HasSubstr("quantization: none"));

  r = RunTool("inspect " + tiny + " --tp 2 --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Json j = Json::parse(r.output, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  EXPECT_EQ(j["tp_size"], 2);
  EXPECT_EQ(j["kv_bytes_per_token_per_rank"], 3 * 2 * 1 * 64 * 2);
  EXPECT_EQ(j["dtypes"]["BF16"]["tensors"].get<int>() + j["dtypes"]["F32"]["tensors"].get<int>(),
            j["num_tensors"].get<int>());
  const int64_t total = j["total_params"];
  const int64_t active = j["active_params"];
  EXPECT_GT(total, active);

  const std::string fp8 = (dir_ / "fp8").string();
  r = RunTool("quantize " + tiny + " " + fp8 + " --scheme fp8-channel");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = RunTool("inspect " + fp8 + " --json");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  j = Json::parse(r.output);
  EXPECT_EQ(j["quantization"]["method"], "fp8_per_channel");
  EXPECT_EQ(j["dtypes"]["F8_E4M3"]["tensors"], 100);
  EXPECT_EQ(j["total_params"], total);
  EXPECT_TRUE(std::filesystem::exists(dir_ / "fp8" / "tokenizer.json"));

  const std::string block = (dir_ / "block").string();
  r = RunTool("quantize " + tiny + " " + block + " --scheme fp8-block --format deepseek");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  Result<ModelConfig> bc = LoadModelConfig(block);
  ASSERT_TRUE(bc.ok()) << bc.status().ToString();
  EXPECT_EQ(bc->quant.method, QuantMethod::kFp8Block);
  EXPECT_TRUE(bc->quant.scale_inv_name);
  EXPECT_TRUE(LoadModelWeights(block, LoadOptions{}).ok());
  // Block FP8 at tp=2 splits a 128 block of the tiny model: a clear error.
  r = RunTool("inspect " + block + " --tp 2");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("not divisible by weight quantization block_n = 128"));
}

TEST_F(ModelToolsTest, OtherArchitecturesAndDtypes) {
  for (const char* arch : {"llama", "qwen3moe"}) {
    const std::string out = (dir_ / arch).string();
    RunResult r = RunTool(std::string("tiny ") + out + " --arch " + arch + " --dtype f32");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    Result<Checkpoint> ckpt = Checkpoint::Open(out);
    ASSERT_TRUE(ckpt.ok());
    EXPECT_EQ(ckpt->Get("model.embed_tokens.weight")->dtype, DType::kF32);
    r = RunTool("inspect " + out);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  EXPECT_THAT(RunTool("inspect " + (dir_ / "llama").string()).output,
              HasSubstr("LlamaForCausalLM"));
  EXPECT_THAT(RunTool("inspect " + (dir_ / "qwen3moe").string()).output,
              HasSubstr("8 routed (top-2) + 0 shared"));
}

TEST_F(ModelToolsTest, ErrorsAreClear) {
  const std::string out = (dir_ / "x").string();
  RunResult r = RunTool("tiny " + out + " --arch mixtral");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("use glm4moe, llama or qwen3moe"));

  r = RunTool("tiny " + out + " --dtype f16");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("use bf16 or f32"));

  r = RunTool("inspect " + (dir_ / "missing").string());
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("config.json"));

  ASSERT_EQ(RunTool("tiny " + out).exit_code, 0);
  r = RunTool("inspect " + out + " --tp 3");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("tp_size 3"));

  r = RunTool("quantize " + out + " " + (dir_ / "q").string() + " --scheme int4");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("use fp8-channel or fp8-block"));

  r = RunTool("quantize " + out + " " + (dir_ / "q").string() +
              " --scheme fp8-channel --format deepseek");
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.output, HasSubstr("--scheme fp8-block"));

  r = RunTool("quantize " + out + " " + (dir_ / "q").string());  // --scheme is required
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("--scheme"));
}

}  // namespace
}  // namespace spark::engine
