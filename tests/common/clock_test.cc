#include "common/clock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

namespace spark {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

TEST(ManualClockTest, StandsStillUntilAdvanced) {
  ManualClock clock;
  const Clock::TimePoint t0 = clock.Now();
  const Clock::WallTimePoint w0 = clock.WallNow();
  EXPECT_EQ(t0.time_since_epoch(), seconds(1000));
  EXPECT_EQ(std::chrono::duration_cast<seconds>(w0.time_since_epoch()).count(), 1735689600);
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(milliseconds(1500));
  EXPECT_EQ(clock.Now() - t0, milliseconds(1500));
  EXPECT_EQ(clock.WallNow() - w0, milliseconds(1500));
}

TEST(ManualClockTest, WallJumpDoesNotMoveMonotonicTime) {
  ManualClock clock;
  const auto t0 = clock.Now();
  clock.SetWallTime(Clock::WallTimePoint(seconds(0)));
  EXPECT_EQ(clock.WallNow().time_since_epoch(), Clock::WallTimePoint::duration(0));
  EXPECT_EQ(clock.Now(), t0);
}

TEST(ManualClockTest, SleepBlocksUntilAnotherThreadAdvancesPastDeadline) {
  ManualClock clock;
  const auto start = clock.Now();
  std::atomic<bool> woke{false};
  Clock::TimePoint woke_at;
  std::thread sleeper([&] {
    clock.SleepFor(seconds(30));
    woke_at = clock.Now();
    woke = true;
  });
  ASSERT_TRUE(clock.WaitForSleepers(1, milliseconds(5000)));
  EXPECT_EQ(clock.sleepers(), 1);
  clock.Advance(seconds(29));
  // Still asleep: the sleeper is re-counted only once it wakes, so it must still be registered.
  EXPECT_TRUE(clock.WaitForSleepers(1, milliseconds(0)));
  EXPECT_FALSE(woke.load());
  clock.Advance(seconds(1));
  sleeper.join();
  EXPECT_TRUE(woke.load());
  EXPECT_EQ(woke_at - start, seconds(30));
  EXPECT_EQ(clock.sleepers(), 0);
}

TEST(ManualClockTest, ZeroAndPastSleepsReturnAtOnce) {
  ManualClock clock;
  clock.SleepFor(Clock::Duration::zero());
  clock.SleepFor(-seconds(1));
  clock.SleepUntil(clock.Now());
  clock.SleepUntil(clock.Now() - seconds(5));
  EXPECT_EQ(clock.sleepers(), 0);
}

TEST(ManualClockTest, ManySleepersWakeInDeadlineOrder) {
  ManualClock clock;
  std::atomic<int> awake{0};
  std::vector<std::thread> threads;
  for (int i = 1; i <= 3; ++i) {
    threads.emplace_back([&, i] {
      clock.SleepFor(seconds(10 * i));
      ++awake;
    });
  }
  ASSERT_TRUE(clock.WaitForSleepers(3, milliseconds(5000)));
  clock.Advance(seconds(10));
  // Exactly one wakes: wait until only two are still sleeping.
  const auto deadline = std::chrono::steady_clock::now() + seconds(5);
  while (clock.sleepers() != 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::yield();
  }
  EXPECT_EQ(clock.sleepers(), 2);
  clock.Advance(seconds(20));
  for (auto& t : threads) t.join();
  EXPECT_EQ(awake.load(), 3);
}

TEST(ManualClockTest, WaitForSleepersTimesOut) {
  ManualClock clock;
  EXPECT_FALSE(clock.WaitForSleepers(1, milliseconds(10)));
}

TEST(RealClockTest, MonotonicAndSleeps) {
  RealClock& clock = RealClock::Get();
  EXPECT_EQ(&clock, &RealClock::Get());
  const auto t0 = clock.Now();
  clock.SleepFor(milliseconds(5));
  EXPECT_GE(clock.Now() - t0, milliseconds(5));
  const auto wall = clock.WallNow();
  EXPECT_GT(std::chrono::duration_cast<seconds>(wall.time_since_epoch()).count(), 1700000000);
}

}  // namespace
}  // namespace spark
