#include "engine/runtime/sampler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

namespace spark::engine {
namespace {

std::vector<float> LogitsFromProbs(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<double> Softmax(const std::vector<double>& x) {
  double m = x[0];
  for (double v : x) m = std::max(m, v);
  double s = 0;
  for (double v : x) s += std::exp(v - m);
  std::vector<double> p;
  for (double v : x) p.push_back(std::exp(v - m) / s);
  return p;
}

// Draws `n` samples and returns the chi-square statistic against `expected` (probabilities that
// sum to 1); any sample of a token with expected probability 0 fails the test.
double ChiSquare(Sampler& sampler, const std::vector<float>& logits,
                 const std::vector<double>& expected, int n) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < n; ++i) {
    int32_t t = sampler.Sample(logits).token;
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(logits.size()));
    ++counts[t];
  }
  double chi2 = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] == 0) {
      EXPECT_EQ(counts[i], 0) << "token " << i << " must be filtered out";
      continue;
    }
    double e = expected[i] * n;
    chi2 += (counts[i] - e) * (counts[i] - e) / e;
  }
  return chi2;
}

// Critical values of chi-square at p = 0.001.
double Chi2Critical(int df) {
  static const std::map<int, double> kTable = {{1, 10.83}, {2, 13.82}, {3, 16.27}, {4, 18.47}};
  return kTable.at(df);
}

SamplingParams Seeded(uint64_t seed) {
  SamplingParams p;
  p.seed = seed;
  return p;
}

TEST(SamplerTest, GreedyTakesArgmaxWithLowestIdOnTiesAndReportsLogSoftmax) {
  SamplingParams p;
  p.temperature = 0;
  p.top_logprobs = 3;
  Sampler s(p, {});
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f};
  SampleResult r = s.Sample(logits);
  EXPECT_EQ(r.token, 1);
  double lse = std::log(std::exp(0.5) + 2 * std::exp(2.0) + std::exp(-1.0));
  EXPECT_NEAR(r.logprob, 2.0 - lse, 1e-6);
  ASSERT_EQ(r.top_logprobs.size(), 3u);
  EXPECT_EQ(r.top_logprobs[0].token, 1);
  EXPECT_EQ(r.top_logprobs[1].token, 3);
  EXPECT_EQ(r.top_logprobs[2].token, 0);
  EXPECT_NEAR(r.top_logprobs[2].logprob, 0.5 - lse, 1e-6);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  p.top_logprobs = 4;
  std::vector<int32_t> prompt = {0, 1};
  Sampler s(p, prompt);
  // Processed: [3/2, -1*2, 1.4, 0.5]; without the penalty 0 would win by far more.
  std::vector<float> logits = {3.0f, -1.0f, 1.4f, 0.5f};
  SampleResult r = s.Sample(logits);
  EXPECT_EQ(r.token, 0);
  std::vector<double> processed = {1.5, -2.0, 1.4, 0.5};
  std::vector<double> probs = Softmax(processed);
  EXPECT_NEAR(r.logprob, std::log(probs[0]), 1e-6);
  std::map<int32_t, float> got;
  for (auto& tl : r.top_logprobs) got[tl.token] = tl.logprob;
  EXPECT_NEAR(got[1], std::log(probs[1]), 1e-6);
  // An emitted token joins the penalised set: token 2 falls to 0.7, and 0 stays on top.
  s.Accept(0);
  s.Accept(2);
  r = s.Sample(logits);
  EXPECT_EQ(r.token, 0);
  processed = {1.5, -2.0, 0.7, 0.5};
  EXPECT_NEAR(r.logprob, std::log(Softmax(processed)[0]), 1e-6);
}

TEST(SamplerTest, FrequencyAndPresencePenaltiesCountOutputTokensOnly) {
  SamplingParams p;
  p.temperature = 0;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  std::vector<int32_t> prompt = {1, 1, 1};  // prompt tokens are not penalised
  Sampler s(p, prompt);
  std::vector<float> logits = {1.0f, 2.0f, 1.9f};
  EXPECT_EQ(s.Sample(logits).token, 1);
  s.Accept(1);  // logit 1 -> 2 - 0.5 - 0.25 = 1.25 < 1.9
  SampleResult r = s.Sample(logits);
  EXPECT_EQ(r.token, 2);
  s.Accept(2);  // 2 -> 1.9 - 0.75 = 1.15 < 1.25
  EXPECT_EQ(s.Sample(logits).token, 1);
  s.Accept(1);  // 1 -> 2 - 1.0 - 0.25 = 0.75; 2 stays 1.15 > 1.0
  EXPECT_EQ(s.Sample(logits).token, 2);
  s.Accept(2);  // 2 -> 1.9 - 1.0 - 0.25 = 0.65: token 0, never emitted, wins
  r = s.Sample(logits);
  EXPECT_EQ(r.token, 0);
  EXPECT_NEAR(r.logprob, std::log(Softmax({1.0, 0.75, 0.65})[0]), 1e-6);
}

TEST(SamplerTest, LogprobsAreAfterTemperatureBeforeFilters) {
  SamplingParams p = Seeded(7);
  p.temperature = 0.5f;
  p.top_k = 1;  // forces token 2, but its logprob is not log(1)
  p.logprobs = true;
  Sampler s(p, {});
  std::vector<float> logits = {0.0f, 1.0f, 1.5f};
  SampleResult r = s.Sample(logits);
  EXPECT_EQ(r.token, 2);
  EXPECT_NEAR(r.logprob, std::log(Softmax({0.0, 2.0, 3.0})[2]), 1e-6);
}

TEST(SamplerTest, TemperatureDistribution) {
  std::vector<float> logits = {1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
  SamplingParams p = Seeded(1);
  p.temperature = 0.7f;
  Sampler s(p, {});
  std::vector<double> scaled;
  for (float l : logits) scaled.push_back(l / 0.7);
  EXPECT_LT(ChiSquare(s, logits, Softmax(scaled), 40000), Chi2Critical(4));
}

TEST(SamplerTest, TemperatureDistributionRejectsAWrongReference) {
  // The chi-square check can fail: temperature 0.7 samples are not temperature-1 samples.
  std::vector<float> logits = {1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
  SamplingParams p = Seeded(1);
  p.temperature = 0.7f;
  Sampler s(p, {});
  std::vector<double> unscaled(logits.begin(), logits.end());
  EXPECT_GT(ChiSquare(s, logits, Softmax(unscaled), 40000), Chi2Critical(4));
}

TEST(SamplerTest, TopKKeepsTheKLargest) {
  std::vector<float> logits = LogitsFromProbs({0.1, 0.4, 0.05, 0.3, 0.15});
  SamplingParams p = Seeded(2);
  p.top_k = 3;
  Sampler s(p, {});
  // Kept: 1 (0.4), 3 (0.3), 4 (0.15), renormalised over 0.85.
  std::vector<double> want = {0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85};
  EXPECT_LT(ChiSquare(s, logits, want, 40000), Chi2Critical(2));
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  std::vector<float> logits = LogitsFromProbs({0.4, 0.3, 0.15, 0.1, 0.05});
  SamplingParams p = Seeded(3);
  p.top_p = 0.8f;  // 0.4, 0.7 < 0.8, 0.85 >= 0.8: three tokens
  Sampler s(p, {});
  std::vector<double> want = {0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0};
  EXPECT_LT(ChiSquare(s, logits, want, 40000), Chi2Critical(2));
}

TEST(SamplerTest, TopPRenormalisesAfterTopK) {
  std::vector<float> logits = LogitsFromProbs({0.4, 0.3, 0.15, 0.1, 0.05});
  SamplingParams p = Seeded(4);
  p.top_k = 4;
  p.top_p = 0.72f;  // over top-4 (sum 0.95): 0.421, 0.737 >= 0.72 -> two tokens (not three)
  Sampler s(p, {});
  std::vector<double> want = {0.4 / 0.7, 0.3 / 0.7, 0, 0, 0};
  EXPECT_LT(ChiSquare(s, logits, want, 40000), Chi2Critical(1));
}

TEST(SamplerTest, MinPKeepsTokensAboveAFractionOfTheBest) {
  std::vector<float> logits = LogitsFromProbs({0.05, 0.4, 0.1, 0.3, 0.15});
  SamplingParams p = Seeded(5);
  p.min_p = 0.3f;  // threshold 0.12: keeps 0.4, 0.3, 0.15
  Sampler s(p, {});
  std::vector<double> want = {0, 0.4 / 0.85, 0, 0.3 / 0.85, 0.15 / 0.85};
  EXPECT_LT(ChiSquare(s, logits, want, 40000), Chi2Critical(2));
}

TEST(SamplerTest, SeedMakesSamplingReproducible) {
  std::vector<float> logits(50);
  for (int i = 0; i < 50; ++i) logits[i] = std::sin(i * 0.7f);
  auto run = [&](std::optional<uint64_t> seed) {
    SamplingParams p;
    p.seed = seed;
    p.top_p = 0.9f;
    Sampler s(p, {});
    std::vector<int32_t> out;
    for (int i = 0; i < 200; ++i) out.push_back(s.Sample(logits).token);
    return out;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
  EXPECT_NE(run(std::nullopt), run(std::nullopt));
}

TEST(SamplerTest, DistributionWithPendingTokensEqualsSamplingAfterAcceptingThem) {
  std::vector<float> logits(40);
  for (int i = 0; i < 40; ++i) logits[i] = std::sin(i * 1.3f) * 3.0f;
  const std::vector<int32_t> prompt = {3, 5, 7};
  const std::vector<int32_t> pending = {11, 35, 11, 20};  // 35: the raw argmax
  SamplingParams p;
  p.repetition_penalty = 1.4f;
  p.frequency_penalty = 0.3f;
  p.presence_penalty = 0.2f;
  p.temperature = 0.8f;
  p.top_k = 12;
  p.top_p = 0.9f;
  p.logprobs = true;
  p.top_logprobs = 4;
  p.seed = 5;
  Sampler speculative(p, prompt);
  speculative.Accept(20);
  TokenDistribution d;
  speculative.Distribution(logits, pending, /*keep_logits=*/true, &d);

  Sampler plain(p, prompt);
  plain.Accept(20);
  for (int32_t t : pending) plain.Accept(t);
  // The probabilities are what Sample() draws from: compare with its frequencies.
  std::vector<double> want(d.probs.begin(), d.probs.end());
  int nonzero = 0;
  for (double v : want) nonzero += v > 0;
  EXPECT_LT(ChiSquare(plain, logits, want, 40000), 30.0) << nonzero << " tokens kept";
  EXPECT_LE(nonzero, 12);
  // Logprobs equal Sample()'s report bit for bit.
  SampleResult sampled = plain.Sample(logits);
  SampleResult described = speculative.Describe(d, sampled.token);
  EXPECT_EQ(described.logprob, sampled.logprob);
  ASSERT_EQ(described.top_logprobs.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(described.top_logprobs[i].token, sampled.top_logprobs[i].token);
    EXPECT_EQ(described.top_logprobs[i].logprob, sampled.top_logprobs[i].logprob);
  }
  // Greedy: the argmax after the penalties, and no probabilities.
  p.temperature = 0;
  Sampler greedy(p, prompt);
  greedy.Distribution(logits, pending, false, &d);
  EXPECT_TRUE(d.probs.empty());
  EXPECT_TRUE(d.logits.empty());
  Sampler greedy_plain(p, prompt);
  for (int32_t t : pending) greedy_plain.Accept(t);
  EXPECT_EQ(d.argmax, greedy_plain.Sample(logits).token);
  // The penalties matter here: without the pending tokens the argmax differs.
  greedy.Distribution(logits, {}, false, &d);
  EXPECT_NE(d.argmax, greedy_plain.Sample(logits).token);
}

TEST(SamplerTest, ValidateNamesTheBadField) {
  SamplingParams p;
  EXPECT_TRUE(p.Validate(100).ok());
  p.temperature = -1;
  EXPECT_NE(p.Validate().message().find("temperature"), std::string::npos);
  p = {};
  p.top_p = 0;
  EXPECT_NE(p.Validate().message().find("top_p"), std::string::npos);
  p = {};
  p.min_p = 1.5f;
  EXPECT_NE(p.Validate().message().find("min_p"), std::string::npos);
  p = {};
  p.repetition_penalty = 0;
  EXPECT_NE(p.Validate().message().find("repetition_penalty"), std::string::npos);
  p = {};
  p.max_tokens = 0;
  EXPECT_NE(p.Validate().message().find("max_tokens"), std::string::npos);
  p = {};
  p.top_logprobs = 21;
  EXPECT_NE(p.Validate().message().find("top_logprobs"), std::string::npos);
  p = {};
  p.stop_token_ids = {100};
  EXPECT_EQ(p.Validate(100).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(p.Validate(101).ok());
}

}  // namespace
}  // namespace spark::engine
