#include "controller/deployment_options.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace spark::controller {
namespace {

using nlohmann::json;
using ::testing::HasSubstr;

TEST(DeploymentOptionsTest, ParsesEveryKeyIncludingStringNumbers) {
  json options = {{"max_batch", "8"},
                  {"max_seq_len", 512},
                  {"kv_cache_bytes", "1048576"},
                  {"kv_cache_fraction", "0.5"},
                  {"load_format", "dummy"},
                  {"dtype", "bfloat16"},
                  {"seed", 42},
                  {"speculative_steps", 3},
                  {"extra", {{"knob", "on"}, {"n", 2}}},
                  {"rendezvous_timeout_ms", "1500"},
                  {"load_timeout_ms", 20000}};
  auto parsed = ParseDeploymentOptions(options, 2);
  ASSERT_TRUE(parsed.ok()) << parsed.status().ToString();
  const spark::v1::EngineOptions& e = parsed->engine;
  EXPECT_EQ(e.tp(), 2u);
  EXPECT_EQ(e.max_batch(), 8u);
  EXPECT_EQ(e.max_seq_len(), 512u);
  EXPECT_EQ(e.kv_cache_bytes(), 1048576u);
  EXPECT_DOUBLE_EQ(e.kv_cache_fraction(), 0.5);
  EXPECT_EQ(e.load_format(), spark::v1::LOAD_FORMAT_DUMMY);
  EXPECT_EQ(e.dtype(), "bfloat16");
  EXPECT_EQ(e.seed(), 42u);
  EXPECT_EQ(e.speculative().steps(), 3u);
  EXPECT_EQ(e.extra().at("knob"), "on");
  EXPECT_EQ(e.extra().at("n"), "2");
  EXPECT_EQ(parsed->rendezvous_timeout, std::chrono::milliseconds(1500));
  EXPECT_EQ(parsed->load_timeout, std::chrono::milliseconds(20000));
  EXPECT_FALSE(parsed->first_generation_timeout.has_value());
}

TEST(DeploymentOptionsTest, NormalizedOptionsRoundTripThroughText) {
  auto normalized = NormalizeDeploymentOptions({{"max_batch", "4"}});
  ASSERT_TRUE(normalized.ok());
  EXPECT_EQ(normalized->dump(), R"({"max_batch":4})");
  auto parsed = ParseDeploymentOptionsJson(normalized->dump(), 1);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->engine.max_batch(), 4u);
  EXPECT_EQ(parsed->engine.load_format(), spark::v1::LOAD_FORMAT_AUTO);
}

TEST(DeploymentOptionsTest, RejectsBadValuesNamingTheKey) {
  auto unknown = NormalizeDeploymentOptions({{"max_batchh", 1}});
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.status().message(), HasSubstr("unknown option \"max_batchh\""));
  EXPECT_THAT(unknown.status().message(), HasSubstr("max_batch"));
  auto negative = NormalizeDeploymentOptions({{"max_batch", -1}});
  ASSERT_FALSE(negative.ok());
  EXPECT_THAT(negative.status().message(), HasSubstr("\"max_batch\" must be a non-negative"));
  EXPECT_FALSE(NormalizeDeploymentOptions({{"kv_cache_fraction", 1.5}}).ok());
  EXPECT_FALSE(NormalizeDeploymentOptions({{"load_format", "fast"}}).ok());
  EXPECT_FALSE(NormalizeDeploymentOptions({{"max_batch", "eight"}}).ok());
  EXPECT_FALSE(NormalizeDeploymentOptions(json::array()).ok());
  EXPECT_TRUE(NormalizeDeploymentOptions(nullptr).ok());
  EXPECT_FALSE(ParseDeploymentOptionsJson("{not json", 1).ok());
}

}  // namespace
}  // namespace spark::controller
