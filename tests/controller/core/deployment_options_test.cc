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
  EXPECT_EQ(e.speculative().topk(), 1u);
  EXPECT_EQ(e.speculative().draft_tokens(), 4u);
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

TEST(DeploymentOptionsTest, SpeculativeObjectIsNormalizedWithDefaults) {
  auto chain = NormalizeDeploymentOptions({{"speculative", {{"steps", "2"}}}});
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_EQ(chain->dump(), R"({"speculative":{"draft_tokens":3,"steps":2,"topk":1}})");
  auto tree = NormalizeDeploymentOptions(
      {{"speculative", {{"steps", 3}, {"topk", 4}, {"draft_tokens", 8}}}});
  ASSERT_TRUE(tree.ok()) << tree.status().ToString();
  EXPECT_EQ((*tree)["speculative"], json({{"steps", 3}, {"topk", 4}, {"draft_tokens", 8}}));
  auto parsed = ParseDeploymentOptions(*tree, 1);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->engine.speculative().steps(), 3u);
  EXPECT_EQ(parsed->engine.speculative().topk(), 4u);
  EXPECT_EQ(parsed->engine.speculative().draft_tokens(), 8u);
  // Normalizing the normalized form changes nothing (stored options are normalized again).
  auto again = NormalizeDeploymentOptions(*tree);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *tree);
}

TEST(DeploymentOptionsTest, FlatSpeculativeKeysAreAliasesOfTheObject) {
  auto flat = NormalizeDeploymentOptions(
      {{"speculative_steps", 2}, {"speculative_topk", "2"}, {"speculative_draft_tokens", 5}});
  ASSERT_TRUE(flat.ok()) << flat.status().ToString();
  EXPECT_EQ(flat->dump(), R"({"speculative":{"draft_tokens":5,"steps":2,"topk":2}})");
  auto both =
      NormalizeDeploymentOptions({{"speculative", {{"steps", 2}}}, {"speculative_topk", 1}});
  ASSERT_FALSE(both.ok());
  EXPECT_THAT(both.status().message(), HasSubstr("not both"));
}

TEST(DeploymentOptionsTest, SpeculativeIsAutomaticUnlessTurnedOff) {
  // Absent, null or "auto": no key; the shard speculates where it helps (mode AUTO, steps 0).
  for (const json& automatic :
       {json::object(), json{{"speculative", nullptr}}, json{{"speculative", "auto"}}}) {
    auto normalized = NormalizeDeploymentOptions(automatic);
    ASSERT_TRUE(normalized.ok()) << automatic.dump() << ": " << normalized.status().ToString();
    EXPECT_EQ(normalized->dump(), "{}") << automatic.dump();
    auto parsed = ParseDeploymentOptions(automatic, 1);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->engine.speculative().mode(), spark::v1::SPECULATIVE_MODE_AUTO);
    EXPECT_EQ(parsed->engine.speculative().steps(), 0u);
  }
  // "off", steps 0 or an empty object: off, kept as "off" (and again after a round trip).
  for (const json& off : {json{{"speculative", "off"}}, json{{"speculative", {{"steps", 0}}}},
                          json{{"speculative_steps", 0}}, json{{"speculative", json::object()}}}) {
    auto normalized = NormalizeDeploymentOptions(off);
    ASSERT_TRUE(normalized.ok()) << off.dump() << ": " << normalized.status().ToString();
    EXPECT_EQ(normalized->dump(), R"({"speculative":"off"})") << off.dump();
    EXPECT_EQ(NormalizeDeploymentOptions(*normalized)->dump(), normalized->dump());
    auto parsed = ParseDeploymentOptions(off, 1);
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->engine.speculative().mode(), spark::v1::SPECULATIVE_MODE_OFF) << off.dump();
    EXPECT_EQ(parsed->engine.speculative().steps(), 0u);
  }
  auto bad = NormalizeDeploymentOptions({{"speculative", "on"}});
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("must be \"auto\""));
}

TEST(DeploymentOptionsTest, SpeculativeErrorsNameTheFieldAndTheRange) {
  auto error = [](const json& speculative) {
    auto r = NormalizeDeploymentOptions({{"speculative", speculative}});
    return r.ok() ? std::string("accepted: ") + r->dump() : r.status().message();
  };
  EXPECT_THAT(error(json::array({2, 1})), HasSubstr("\"off\", or an object"));
  EXPECT_THAT(error({{"step", 2}}), HasSubstr("unknown field \"step\""));
  EXPECT_THAT(error({{"steps", -1}}), HasSubstr("\"speculative.steps\" must be a non-negative"));
  EXPECT_THAT(error({{"steps", 33}}), HasSubstr("\"speculative.steps\" must be in [1, 32]"));
  EXPECT_THAT(error({{"steps", 2}, {"topk", 17}}),
              HasSubstr("\"speculative.topk\" must be in [1, 16]"));
  EXPECT_THAT(error({{"topk", 2}, {"draft_tokens", 3}}), HasSubstr("need steps >= 1"));
  // topk 1: a chain of steps drafts plus the bonus token.
  EXPECT_THAT(error({{"steps", 2}, {"topk", 1}, {"draft_tokens", 4}}),
              HasSubstr("must be steps + 1 = 3 with topk 1"));
  EXPECT_EQ(error({{"steps", 2}, {"topk", 1}, {"draft_tokens", 3}}),
            R"(accepted: {"speculative":{"draft_tokens":3,"steps":2,"topk":1}})");
  // topk > 1: 2 <= draft_tokens <= 1 + topk + (steps - 1) * topk^2 = 1 + 2 + 2 * 4 = 11.
  EXPECT_THAT(error({{"steps", 3}, {"topk", 2}}), HasSubstr("is required with topk 2"));
  EXPECT_THAT(error({{"steps", 3}, {"topk", 2}, {"draft_tokens", 12}}),
              HasSubstr("must be in [2, 11]"));
  EXPECT_THAT(error({{"steps", 3}, {"topk", 2}, {"draft_tokens", 1}}),
              HasSubstr("must be in [2, 11]"));
  EXPECT_THAT(error({{"steps", 3}, {"topk", 2}, {"draft_tokens", 11}}), HasSubstr("accepted"));
  EXPECT_THAT(error({{"steps", 3}, {"topk", 2}, {"draft_tokens", 2}}), HasSubstr("accepted"));
  // Trees stay within 64 nodes (1 + 8 + 2 * 64 = 137 would be the formula's bound).
  EXPECT_THAT(error({{"steps", 3}, {"topk", 8}, {"draft_tokens", 65}}),
              HasSubstr("must be in [2, 64]"));
  EXPECT_THAT(error({{"steps", 3}, {"topk", 8}, {"draft_tokens", 64}}), HasSubstr("accepted"));
}

}  // namespace
}  // namespace spark::controller
