#include "common/clock.h"

#include <thread>

#include "common/check.h"

namespace spark {

RealClock& RealClock::Get() {
  static auto* clock = new RealClock();
  return *clock;
}

void RealClock::SleepFor(Duration duration) {
  if (duration > Duration::zero()) std::this_thread::sleep_for(duration);
}

void RealClock::SleepUntil(TimePoint deadline) { std::this_thread::sleep_until(deadline); }

ManualClock::ManualClock()
    : ManualClock(TimePoint(std::chrono::seconds(1000)),
                  WallTimePoint(std::chrono::seconds(1735689600))) {}  // 2025-01-01T00:00:00Z

ManualClock::ManualClock(TimePoint start, WallTimePoint wall_start)
    : now_(start), wall_(wall_start) {}

Clock::TimePoint ManualClock::Now() const {
  std::lock_guard<std::mutex> lock(mu_);
  return now_;
}

Clock::WallTimePoint ManualClock::WallNow() const {
  std::lock_guard<std::mutex> lock(mu_);
  return wall_;
}

void ManualClock::SleepFor(Duration duration) {
  if (duration <= Duration::zero()) return;
  TimePoint deadline;
  {
    std::lock_guard<std::mutex> lock(mu_);
    deadline = now_ + duration;
  }
  SleepUntil(deadline);
}

void ManualClock::SleepUntil(TimePoint deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  if (now_ >= deadline) return;
  ++sleepers_;
  changed_.notify_all();
  changed_.wait(lock, [&] { return now_ >= deadline; });
  --sleepers_;
  changed_.notify_all();
}

void ManualClock::Advance(Duration duration) {
  SPARK_CHECK(duration >= Duration::zero()) << "ManualClock cannot go back in time";
  std::lock_guard<std::mutex> lock(mu_);
  now_ += duration;
  wall_ += std::chrono::duration_cast<WallTimePoint::duration>(duration);
  changed_.notify_all();
}

void ManualClock::SetWallTime(WallTimePoint wall) {
  std::lock_guard<std::mutex> lock(mu_);
  wall_ = wall;
}

int ManualClock::sleepers() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sleepers_;
}

bool ManualClock::WaitForSleepers(int count, std::chrono::milliseconds real_timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return changed_.wait_for(lock, real_timeout, [&] { return sleepers_ >= count; });
}

}  // namespace spark
