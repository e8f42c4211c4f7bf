#include "engine/runtime/local_tp_group.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>

#include "engine/model/tiny_model.h"
#include "engine/runtime/offline.h"
#include "engine/runtime/scheduler.h"

namespace spark::engine {
namespace {

class LocalTpGroupTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::filesystem::path(std::filesystem::temp_directory_path() /
                                     ("spark_tp_group_test_" + std::to_string(getpid())));
    TinyModelOptions options;
    options.seed = 3;
    ASSERT_TRUE(WriteTinyModel(*dir_, options).ok());
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }

  static std::unique_ptr<LocalTpGroup> Open(int tp) {
    OfflineEngineOptions options;
    options.tp_size = tp;
    options.threads = 1;
    auto group = OpenOfflineEngine(*dir_, options);
    EXPECT_TRUE(group.ok()) << group.status().ToString();
    return group.ok() ? std::move(group).value() : nullptr;
  }

  static std::filesystem::path* dir_;
};

std::filesystem::path* LocalTpGroupTest::dir_ = nullptr;

TEST_F(LocalTpGroupTest, TensorParallelLogitsMatchASingleRank) {
  const std::vector<int32_t> ids = {5, 17, 3, 99, 1, 250, 42};
  auto one = Open(1);
  ASSERT_NE(one, nullptr);
  auto reference = PromptLogits(one->backend(), ids);
  ASSERT_TRUE(reference.ok()) << reference.status().ToString();
  const int64_t vocab = one->config().vocab_size;
  ASSERT_EQ(reference->size(), ids.size() * static_cast<size_t>(vocab));
  float max_abs = 0;
  for (float v : *reference) max_abs = std::max(max_abs, std::abs(v));
  ASSERT_GT(max_abs, 0.1f);

  for (int tp : {2, 4}) {
    auto group = Open(tp);
    ASSERT_NE(group, nullptr);
    EXPECT_EQ(group->tp_size(), tp);
    auto logits = PromptLogits(group->backend(), ids);
    ASSERT_TRUE(logits.ok()) << logits.status().ToString();
    ASSERT_EQ(logits->size(), reference->size());
    float max_diff = 0;
    for (size_t i = 0; i < logits->size(); ++i) {
      max_diff = std::max(max_diff, std::abs((*logits)[i] - (*reference)[i]));
    }
    EXPECT_LT(max_diff, 1e-4f * max_abs) << "tp " << tp;
    EXPECT_TRUE(group->KeepAlive().ok());
    EXPECT_TRUE(group->Shutdown().ok());
    EXPECT_TRUE(group->Shutdown().ok());
  }
}

TEST_F(LocalTpGroupTest, ScheduledGreedyGenerationIsTheSameAtEveryTpSize) {
  std::map<int, std::vector<std::vector<int32_t>>> outputs;
  for (int tp : {1, 2}) {
    auto group = Open(tp);
    ASSERT_NE(group, nullptr);
    SchedulerOptions options;
    options.max_batch_tokens = 8;  // chunked prefill and mixed batches
    auto scheduler = Scheduler::Create(group->backend(), options);
    ASSERT_TRUE(scheduler.ok());
    outputs[tp].resize(3);
    for (uint64_t id = 0; id < 3; ++id) {
      Request r;
      r.id = id;
      for (int i = 0; i < 6 + static_cast<int>(id) * 4; ++i) r.prompt.push_back((i * 31 + 7) % 500);
      r.params.temperature = 0;
      r.params.max_tokens = 10;
      r.params.ignore_eos = true;
      r.on_output = [&outputs, tp](const TokenOutput& o) {
        outputs[tp][o.request_id].push_back(o.token);
      };
      ASSERT_TRUE((*scheduler)->AddRequest(std::move(r)).ok());
    }
    while ((*scheduler)->HasWork()) ASSERT_TRUE((*scheduler)->Step().ok());
    scheduler->reset();
    EXPECT_TRUE(group->Shutdown().ok());
  }
  for (int id = 0; id < 3; ++id) EXPECT_EQ(outputs[1][id].size(), 10u);
  EXPECT_EQ(outputs[1], outputs[2]);
}

TEST_F(LocalTpGroupTest, GenerateOfflineReportsTokensAndTimings) {
  auto group = Open(1);
  ASSERT_NE(group, nullptr);
  SamplingParams params;
  params.temperature = 0;
  params.max_tokens = 6;
  params.ignore_eos = true;
  std::vector<int32_t> streamed;
  auto result = GenerateOffline(group->backend(), {1, 2, 3, 4}, params,
                                [&](int32_t t) { streamed.push_back(t); });
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_EQ(result->ids.size(), 6u);
  EXPECT_EQ(streamed, result->ids);
  EXPECT_EQ(result->finish, FinishReason::kLength);
  EXPECT_EQ(result->prompt_tokens, 4);
  EXPECT_GT(result->prefill_ms, 0);
  EXPECT_GT(result->decode_ms, 0);
  EXPECT_GT(result->decode_tokens_per_s(), 0);
  // The scheduler's tokens are the argmax of the prompt logits, step by step.
  std::vector<int32_t> seq = {1, 2, 3, 4};
  for (int32_t expected : result->ids) {
    auto logits = PromptLogits(group->backend(), seq);
    ASSERT_TRUE(logits.ok());
    const int64_t vocab = group->config().vocab_size;
    const float* last = logits->data() + (seq.size() - 1) * vocab;
    EXPECT_EQ(std::max_element(last, last + vocab) - last, expected);
    seq.push_back(expected);
  }
}

TEST_F(LocalTpGroupTest, ARankThatCannotLoadFailsTheGroupWithItsError) {
  OfflineEngineOptions options;
  options.tp_size = 3;  // 4 heads are not divisible by 3
  auto group = OpenOfflineEngine(*dir_, options);
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().code(), StatusCode::kInvalidArgument) << group.status().ToString();
  EXPECT_NE(group.status().message().find("rank"), std::string::npos) << group.status().ToString();
}

TEST_F(LocalTpGroupTest, CudaBackendIsNotBuilt) {
  OfflineEngineOptions options;
  options.backend = "cuda";
  auto group = OpenOfflineEngine(*dir_, options);
  EXPECT_EQ(group.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(group.status().message().find("not supported yet: the CUDA backend is not built"),
            std::string::npos);
  options.backend = "tpu";
  EXPECT_EQ(OpenOfflineEngine(*dir_, options).status().code(), StatusCode::kInvalidArgument);
}

TEST(ParseTokenIdsTest, ParsesAndRejects) {
  auto ids = ParseTokenIds("5, 17,3");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int32_t>{5, 17, 3}));
  EXPECT_FALSE(ParseTokenIds("").ok());
  EXPECT_FALSE(ParseTokenIds("1,,2").ok());
  EXPECT_FALSE(ParseTokenIds("1,-2").ok());
  EXPECT_FALSE(ParseTokenIds("1,2x").ok());
  EXPECT_FALSE(ParseTokenIds("99999999999").ok());
  EXPECT_NE(ParseTokenIds("1,abc").status().message().find("'abc'"), std::string::npos);
}

}  // namespace
}  // namespace spark::engine
