#include "tests/load/stream_trace.h"

#include <gtest/gtest.h>

#include <vector>

namespace spark::load {
namespace {

using std::chrono::milliseconds;

TEST(SummarizeTest, NearestRankPercentiles) {
  std::vector<double> values;
  for (int i = 100; i >= 1; --i) values.push_back(i);
  Percentiles p = Summarize(values);
  EXPECT_EQ(p.count, 100u);
  EXPECT_DOUBLE_EQ(p.mean, 50.5);
  EXPECT_DOUBLE_EQ(p.p50, 50);
  EXPECT_DOUBLE_EQ(p.p90, 90);
  EXPECT_DOUBLE_EQ(p.p99, 99);
  EXPECT_DOUBLE_EQ(p.max, 100);

  std::vector<double> one = {7};
  p = Summarize(one);
  EXPECT_DOUBLE_EQ(p.p50, 7);
  EXPECT_DOUBLE_EQ(p.p99, 7);

  std::vector<double> none;
  EXPECT_EQ(Summarize(none).count, 0u);
}

TEST(AnalyzeTest, TtftItlTpotAndDeliveryFromArrivalTimes) {
  const Clock::time_point t0{};
  StreamTrace a;  // tokens at 10, 12, 16 ms
  a.sent = t0;
  a.token_times = {t0 + milliseconds(10), t0 + milliseconds(12), t0 + milliseconds(16)};
  a.usage_completion_tokens = 4;  // one token carried no text
  StreamTrace b;                  // tokens at 25, 30 ms after a send at 5 ms
  b.sent = t0 + milliseconds(5);
  b.token_times = {t0 + milliseconds(25), t0 + milliseconds(30)};
  StreamTrace failed;
  failed.error = "HTTP 500: boom";

  LoadStats s = Analyze({a, b, failed}, /*wall_s=*/2.0);
  EXPECT_EQ(s.requests, 3u);
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.first_error, "HTTP 500: boom");
  EXPECT_DOUBLE_EQ(s.requests_per_s, 1.0);
  EXPECT_EQ(s.tokens, 6u);  // 4 from a's usage, 2 counted for b
  EXPECT_DOUBLE_EQ(s.output_tokens_per_s, 3.0);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 15.0);  // 10 and 20
  EXPECT_DOUBLE_EQ(s.ttft_ms.max, 20.0);
  EXPECT_EQ(s.itl_ms.count, 3u);  // 2, 4, 5
  EXPECT_DOUBLE_EQ(s.itl_ms.p50, 4.0);
  EXPECT_DOUBLE_EQ(s.tpot_ms.mean, (3.0 + 5.0) / 2);  // (16-10)/2 and (30-25)/1
  EXPECT_DOUBLE_EQ(s.token_latency_ms.mean, (10 + 12 + 16 + 20 + 25) / 5.0);
  EXPECT_DOUBLE_EQ(s.e2e_ms.max, 25.0);
}

TEST(AnalyzeTest, RequestWithoutTokensIsAFailure) {
  StreamTrace empty;
  LoadStats s = Analyze({empty}, 1.0);
  EXPECT_EQ(s.failed, 1u);
  EXPECT_EQ(s.first_error, "no token arrived");
}

}  // namespace
}  // namespace spark::load
