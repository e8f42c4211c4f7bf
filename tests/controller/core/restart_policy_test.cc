#include "controller/restart_policy.h"

#include <gtest/gtest.h>

namespace spark::controller {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(RestartPolicyTest, BackoffDoublesUpToTheCap) {
  RestartPolicy policy({.initial_backoff = milliseconds(1000),
                        .max_backoff = milliseconds(5000),
                        .budget = 100,
                        .window = seconds(600)});
  Clock::TimePoint t{};
  std::vector<int64_t> delays;
  for (int i = 0; i < 5; ++i) delays.push_back(policy.OnFailure(t + seconds(i)).delay.count());
  EXPECT_EQ(delays, (std::vector<int64_t>{1000, 2000, 4000, 5000, 5000}));
}

TEST(RestartPolicyTest, ReadyResetsTheBackoffButNotTheBudget) {
  RestartPolicy policy({.initial_backoff = milliseconds(1000),
                        .max_backoff = milliseconds(30000),
                        .budget = 3,
                        .window = seconds(600)});
  Clock::TimePoint t{};
  EXPECT_EQ(policy.OnFailure(t).delay.count(), 1000);
  EXPECT_EQ(policy.OnFailure(t).delay.count(), 2000);
  policy.OnReady();
  RestartPolicy::Decision d = policy.OnFailure(t);
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay.count(), 1000);
  EXPECT_EQ(d.restarts_in_window, 3);
  EXPECT_TRUE(policy.OnFailure(t).give_up);
}

TEST(RestartPolicyTest, BudgetIsASlidingWindow) {
  RestartPolicy policy({.initial_backoff = milliseconds(1000),
                        .max_backoff = milliseconds(30000),
                        .budget = 5,
                        .window = seconds(600)});
  Clock::TimePoint t{};
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(policy.OnFailure(t + seconds(i * 10)).give_up);
  EXPECT_TRUE(policy.OnFailure(t + seconds(100)).give_up);  // 6th within 10 min
  // The first restart leaves the window 600 s after it happened.
  RestartPolicy::Decision later = policy.OnFailure(t + seconds(600));
  EXPECT_FALSE(later.give_up);
  EXPECT_EQ(later.restarts_in_window, 5);
}

TEST(RestartPolicyTest, ResetForgetsEverything) {
  RestartPolicy policy({.initial_backoff = milliseconds(1000),
                        .max_backoff = milliseconds(30000),
                        .budget = 1,
                        .window = seconds(600)});
  Clock::TimePoint t{};
  EXPECT_FALSE(policy.OnFailure(t).give_up);
  EXPECT_TRUE(policy.OnFailure(t).give_up);
  policy.Reset();
  RestartPolicy::Decision d = policy.OnFailure(t);
  EXPECT_FALSE(d.give_up);
  EXPECT_EQ(d.delay.count(), 1000);
}

}  // namespace
}  // namespace spark::controller
