// Clock: the time source every component takes instead of calling std::chrono directly, so tests
// can run "3 missed heartbeats" or "backoff of 30 s" in microseconds and deterministically.
//
//   Now()      monotonic time (std::chrono::steady_clock): for deadlines, timeouts, leases.
//   WallNow()  calendar time (std::chrono::system_clock): only for timestamps shown to people or
//              stored; it may jump.
//   SleepFor / SleepUntil block the calling thread.
//
// RealClock is the process clock (RealClock::Get() returns a shared instance). ManualClock stands
// still until a test calls Advance(); its SleepFor blocks until another thread advances the clock
// past the sleeper's deadline, so code under test can sleep on it from its own threads. A test
// synchronises with such a thread through WaitForSleepers(n), which waits in real time (bounded)
// until n threads are blocked in SleepFor/SleepUntil, without fixed sleeps.
//
// Thread safety: all methods of both clocks are safe to call concurrently from any thread.
// Ownership: components hold a Clock& or Clock* whose clock must outlive them.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace spark {

class Clock {
 public:
  using TimePoint = std::chrono::steady_clock::time_point;
  using WallTimePoint = std::chrono::system_clock::time_point;
  using Duration = std::chrono::nanoseconds;

  virtual ~Clock() = default;
  virtual TimePoint Now() const = 0;
  virtual WallTimePoint WallNow() const = 0;
  // Returns at once for a zero or negative duration.
  virtual void SleepFor(Duration duration) = 0;
  virtual void SleepUntil(TimePoint deadline) = 0;
};

class RealClock : public Clock {
 public:
  // The process-wide real clock (never destroyed).
  static RealClock& Get();

  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  WallTimePoint WallNow() const override { return std::chrono::system_clock::now(); }
  void SleepFor(Duration duration) override;
  void SleepUntil(TimePoint deadline) override;
};

class ManualClock : public Clock {
 public:
  // Starts at steady time 1000 s (so a zero time_point reads as "long ago") and wall time
  // 2025-01-01T00:00:00Z.
  ManualClock();
  ManualClock(TimePoint start, WallTimePoint wall_start);

  TimePoint Now() const override;
  WallTimePoint WallNow() const override;
  void SleepFor(Duration duration) override;
  void SleepUntil(TimePoint deadline) override;

  // Moves both clocks forward (a negative duration is a broken invariant) and wakes the
  // sleepers whose deadline has passed.
  void Advance(Duration duration);
  // Sets only the wall clock, as an NTP step would; the monotonic clock is unaffected.
  void SetWallTime(WallTimePoint wall);

  // Number of threads blocked in SleepFor/SleepUntil right now.
  int sleepers() const;
  // Waits (in real time, at most `real_timeout`) until at least `count` threads are blocked in
  // SleepFor/SleepUntil. Returns false on timeout.
  bool WaitForSleepers(int count, std::chrono::milliseconds real_timeout) const;

 private:
  mutable std::mutex mu_;
  mutable std::condition_variable changed_;  // time advanced or the sleeper count changed
  TimePoint now_;
  WallTimePoint wall_;
  int sleepers_ = 0;
};

}  // namespace spark
