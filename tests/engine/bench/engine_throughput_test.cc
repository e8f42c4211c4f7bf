// spark-bench engine: the decode-step byte model against hand-computed numbers, config
// resolution errors, and a real run of the tiny checkpoint on the CPU backend.
#include "engine/bench/engine_throughput.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "engine/model/config.h"

namespace spark::bench {
namespace {

namespace fs = std::filesystem;

fs::path Model(const char* name) {
  return fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models" / name;
}

TEST(DecodeStepBytesTest, TinyGlmByHand) {
  Result<engine::ModelConfig> c = engine::LoadModelConfig(Model("glm_base"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // H 64, q 4x32, kv 2x32, 3 layers (layer 0 dense I=128; layers 1-2: 8 experts of Im=32, top-2,
  // one shared), vocab 256, BF16.
  const double attention = 128 * 64 * 2 + 2 * (64 * 64 * 2) + 64 * 128 * 2;  // q, k, v, o
  const double dense = 3 * 128 * 64 * 2;
  const double expert = 3 * 32 * 64 * 2;
  const double router = 8 * 64 * 4;
  const double lm_head = 256 * 64 * 2;
  const double kv_per_token = 3 * 2 * 2 * 32 * 2;

  StepBytes one = DecodeStepBytes(*c, 1, 1, 10);
  EXPECT_DOUBLE_EQ(one.expected_experts, 2.0);  // 8 * (1 - (6/8)^1)
  EXPECT_DOUBLE_EQ(one.weight_bytes,
                   3 * attention + dense + 2 * (2 * expert + expert + router) + lm_head);
  EXPECT_DOUBLE_EQ(one.kv_bytes, 10 * kv_per_token);

  StepBytes four = DecodeStepBytes(*c, 1, 4, 20);
  const double e4 = 8 * (1 - 0.75 * 0.75 * 0.75 * 0.75);
  EXPECT_DOUBLE_EQ(four.expected_experts, e4);
  EXPECT_DOUBLE_EQ(four.kv_bytes, 4 * 20 * kv_per_token);

  // Two ranks: every sliced matrix halves, the router does not; one kv head per rank.
  StepBytes tp2 = DecodeStepBytes(*c, 2, 1, 10);
  EXPECT_DOUBLE_EQ(tp2.weight_bytes,
                   (3 * attention + dense + 2 * 3 * expert + lm_head) / 2 + 2 * router);
  EXPECT_DOUBLE_EQ(tp2.kv_bytes, one.kv_bytes / 2);

  // FP8 KV cache: one byte per element, the weights unchanged.
  StepBytes fp8_kv = DecodeStepBytes(*c, 1, 1, 10, 1);
  EXPECT_DOUBLE_EQ(fp8_kv.kv_bytes, 10 * kv_per_token / 2);
  EXPECT_DOUBLE_EQ(fp8_kv.weight_bytes, one.weight_bytes);
}

TEST(DecodeStepFlopsTest, TinyGlmByHand) {
  Result<engine::ModelConfig> c = engine::LoadModelConfig(Model("glm_base"));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  // Multiply-adds per token (shapes as above): q, k, v, o; attention over `context` keys of the
  // 4x32 query width; dense MLP; top-2 + 1 shared expert and the router; lm_head.
  const double projections = 64 * 128 + 2 * 64 * 64 + 128 * 64;
  const double dense = 3 * 64 * 128;
  const double experts = 3 * (3 * 64 * 32) + 8 * 64;
  const double lm_head = 64 * 256;
  auto by_hand = [&](double context, int batch) {
    return 2 * batch * (3 * (projections + 2 * context * 128) + dense + 2 * experts + lm_head);
  };
  EXPECT_DOUBLE_EQ(DecodeStepFlops(*c, 1, 1, 10), by_hand(10, 1));
  EXPECT_DOUBLE_EQ(DecodeStepFlops(*c, 1, 8, 20), by_hand(20, 8));
  // Two ranks: every sliced matrix and the attention width halve, the router does not.
  const double tp2 = 2 * (3 * ((projections + 2 * 10 * 128) / 2) + dense / 2 +
                          2 * (3 * (3 * 64 * 32) / 2 + 8 * 64) + lm_head / 2);
  EXPECT_DOUBLE_EQ(DecodeStepFlops(*c, 2, 1, 10), tp2);
}

TEST(DecodeStepBytesTest, Fp8WeightsCountOneByteAndTheirScales) {
  Result<engine::ModelConfig> air = engine::BuiltinConfig("glm-4.5-air");
  ASSERT_TRUE(air.ok());
  engine::ModelConfig bf16 = *air;
  bf16.quant = engine::QuantConfig{};
  const StepBytes f = DecodeStepBytes(*air, 1, 1, 0);
  const StepBytes b = DecodeStepBytes(bf16, 1, 1, 0);
  const double lm_head = static_cast<double>(air->vocab_size) * air->hidden_size * 2;
  // FP8 linears are a little over half of BF16 (per-channel scales); lm_head stays BF16.
  const double ratio = (f.weight_bytes - lm_head) / (b.weight_bytes - lm_head);
  EXPECT_GT(ratio, 0.5);
  EXPECT_LT(ratio, 0.51);
  // GLM-4.5-Air at batch 1: 8 routed + 1 shared expert per MoE layer, about 12B active
  // parameters; FP8 weights plus the BF16 lm_head come to roughly 13 GB.
  EXPECT_GT(f.weight_bytes, 10e9);
  EXPECT_LT(f.weight_bytes, 16e9);
}

TEST(ResolveBenchConfigTest, ErrorsNameTheFix) {
  EngineBenchOptions o;
  Result<engine::ModelConfig> none = ResolveBenchConfig(o);
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("--model"), std::string::npos);
  o.config = "glm-4.5-air";
  Result<engine::ModelConfig> no_dummy = ResolveBenchConfig(o);
  ASSERT_FALSE(no_dummy.ok());
  EXPECT_NE(no_dummy.status().message().find("--load-format dummy"), std::string::npos);
  o.dummy = true;
  EXPECT_TRUE(ResolveBenchConfig(o).ok());
  o.config = (Model("glm_base") / "config.json").string();
  Result<engine::ModelConfig> from_file = ResolveBenchConfig(o);
  ASSERT_TRUE(from_file.ok()) << from_file.status().ToString();
  EXPECT_EQ(from_file->hidden_size, 64);
  o.config = "glm-9";
  EXPECT_EQ(ResolveBenchConfig(o).status().code(), StatusCode::kNotFound);
}

TEST(RunEngineBenchTest, TinyCheckpointOnCpuWithTwoRanks) {
  for (int tp : {1, 2}) {
    EngineBenchOptions o;
    o.model_dir = Model("glm_base");
    o.tp = tp;
    o.threads = 1;
    o.batch_sizes = {1, 3};
    o.input_len = 9;
    o.output_len = 4;
    o.max_batch_tokens = 16;  // the batch of 3 prefills in two steps
    o.peak_bandwidth_gbs = 10;
    Result<EngineBenchReport> r = RunEngineBench(o, nullptr);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->batches.size(), 2u);
    EXPECT_EQ(r->layers, 3);
    EXPECT_EQ(r->quant, "bf16");
    for (const BatchResult& b : r->batches) {
      EXPECT_GT(b.prefill_tokens_per_s, 0);
      EXPECT_GT(b.decode_tokens_per_s, 0);
      EXPECT_GT(b.itl_ms, 0);
      EXPECT_GT(b.first_step_ms, 0);  // the untimed first decode step
      // The CPU backend's Forward is the whole step (no sampler here).
      EXPECT_GT(b.issue_ms, 0);
      EXPECT_LE(b.issue_ms, b.itl_ms * 1.0001);
      EXPECT_NEAR(b.decode_tokens_per_s, b.batch * 1000.0 / b.itl_ms, 1e-6);
      const StepBytes want =
          DecodeStepBytes(*engine::LoadModelConfig(o.model_dir), tp, b.batch, 9 + 1.5 + 2);
      EXPECT_DOUBLE_EQ(b.bytes.total(), want.total());
      EXPECT_NEAR(b.roofline_ms, want.total() / 10e9 * 1000, 1e-9);
      EXPECT_NEAR(b.bandwidth_ratio, b.achieved_gbs / 10, 1e-12);
    }
    std::ostringstream table;
    PrintEngineBenchReport(*r, false, table);
    EXPECT_NE(table.str().find("roofline ms"), std::string::npos);
    std::ostringstream json;
    PrintEngineBenchReport(*r, true, json);
    EXPECT_NE(json.str().find("\"batch\":3"), std::string::npos);
    EXPECT_NE(json.str().find("\"issue_ms\":"), std::string::npos);
    EXPECT_NE(json.str().find("\"first_step_ms\":"), std::string::npos);
    EXPECT_NE(table.str().find("first ms"), std::string::npos);
  }
}

TEST(RunEngineBenchTest, BadOptionsAreRejected) {
  EngineBenchOptions o;
  o.model_dir = Model("glm_base");
  o.batch_sizes = {0};
  EXPECT_EQ(RunEngineBench(o, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.batch_sizes = {1};
  o.tp = 3;  // 4 heads do not split over 3 ranks
  EXPECT_FALSE(RunEngineBench(o, nullptr).ok());
  o.tp = 1;
  o.kv_cache_dtype = "fp8";  // the CPU cache is fp32
  Result<EngineBenchReport> fp8 = RunEngineBench(o, nullptr);
  EXPECT_EQ(fp8.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(fp8.status().message().find("--kv-cache-dtype fp8 is not supported on the CPU"),
            std::string::npos);
  o.kv_cache_dtype = "fp16";
  EXPECT_EQ(RunEngineBench(o, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.kv_cache_dtype = "bf16";
  o.attention_tensor_cores = true;  // a CUDA kernel
  Result<EngineBenchReport> tc = RunEngineBench(o, nullptr);
  EXPECT_EQ(tc.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(tc.status().message().find("--backend cuda"), std::string::npos);
  o.attention_tensor_cores = false;
  o.moe_tune = true;  // tunes CUDA kernels
  EXPECT_EQ(RunEngineBench(o, nullptr).status().code(), StatusCode::kInvalidArgument);
  o.moe_tune = false;
  o.fuse_shared_experts = true;  // a CUDA kernel layout
  Result<EngineBenchReport> fused = RunEngineBench(o, nullptr);
  EXPECT_EQ(fused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(fused.status().message().find("--fuse-shared-experts"), std::string::npos);
  o.fuse_shared_experts = false;
  o.programmatic_launch = true;  // a CUDA launch mode
  Result<EngineBenchReport> pdl = RunEngineBench(o, nullptr);
  EXPECT_EQ(pdl.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(pdl.status().message().find("--programmatic-launch"), std::string::npos);
  o.programmatic_launch = false;
  o.l2_prefetch_percent = 30;  // a GPU cache
  Result<EngineBenchReport> l2 = RunEngineBench(o, nullptr);
  EXPECT_EQ(l2.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(l2.status().message().find("--l2-prefetch-percent"), std::string::npos);
  o.l2_prefetch_percent = -1;
  o.smem_cap_bytes = 101376;  // a GPU's shared memory
  Result<EngineBenchReport> cap = RunEngineBench(o, nullptr);
  EXPECT_EQ(cap.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(cap.status().message().find("--smem-cap-bytes"), std::string::npos);
  o.smem_cap_bytes = 0;
  o.one_shot_all_reduce_bytes = -1;  // an NCCL group's collective
  Result<EngineBenchReport> one_shot = RunEngineBench(o, nullptr);
  EXPECT_EQ(one_shot.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(one_shot.status().message().find("--one-shot-all-reduce-bytes"), std::string::npos);
  o.one_shot_all_reduce_bytes = 0;
  o.gemv_fp8_auto = true;  // times CUDA kernels
  Result<EngineBenchReport> gemv_auto = RunEngineBench(o, nullptr);
  EXPECT_EQ(gemv_auto.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(gemv_auto.status().message().find("--gemv-fp8-auto"), std::string::npos);
  o.gemv_fp8_auto = false;
#if !defined(SPARK_HAVE_CUDA)
  o.tp = 1;
  o.backend = "cuda";
  Result<EngineBenchReport> r = RunEngineBench(o, nullptr);
  EXPECT_EQ(r.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(r.status().message().find("built without CUDA"), std::string::npos);
#endif
}

}  // namespace
}  // namespace spark::bench
