// Watchdog: bounds how long the shard's engine thread may stay inside one step or collective, and
// how long the shard may take from start to READY.
//
//   Watchdog watchdog(RealClock::Get(), std::chrono::seconds(30), [&](const std::string& why) {
//     reporter.ReportFailed(why);  // then _exit: the engine thread is stuck
//   });
//   { Watchdog::Scope scope = watchdog.Watch("AllReduceSum"); comm->AllReduceSum(...); }
//
// Watch() arms the step deadline; scopes nest (only the outermost one counts: a collective inside
// a step is timed as part of the step). When a scope stays open past the deadline, or the startup
// deadline (SetStartupDeadline) passes before ClearStartupDeadline(), the watchdog thread calls
// `on_expired` once with a plain-language reason and stops watching. The handler runs on the
// watchdog thread; the shard's handler reports FAILED and ends the process with _exit, since the
// engine thread cannot be unwound from a hung collective.
//
// Time comes from the injected Clock (deadlines compare Clock::Now()); the thread itself checks
// every `check_interval` of real time, so a test with a ManualClock advances the clock and waits
// (bounded) for the handler.
//
// Thread safety: Watch/Scope, SetStartupDeadline and ClearStartupDeadline may be called from any
// thread. Ownership: RAII; the destructor stops and joins the thread. The clock must outlive it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/clock.h"

namespace spark::shard {

class Watchdog {
 public:
  using ExpiredHandler = std::function<void(const std::string& reason)>;

  Watchdog(Clock& clock, std::chrono::milliseconds step_deadline, ExpiredHandler on_expired,
           std::chrono::milliseconds check_interval = std::chrono::milliseconds(50));
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  class [[nodiscard]] Scope {
   public:
    Scope(Scope&& other) noexcept : watchdog_(other.watchdog_) { other.watchdog_ = nullptr; }
    Scope& operator=(Scope&&) = delete;
    Scope(const Scope&) = delete;
    ~Scope() {
      if (watchdog_ != nullptr) watchdog_->Leave();
    }

   private:
    friend class Watchdog;
    explicit Scope(Watchdog* watchdog) : watchdog_(watchdog) {}
    Watchdog* watchdog_;
  };

  // Opens a watched scope named `what` ("scheduler step", "AllReduceSum").
  Scope Watch(const std::string& what);

  // The shard must be READY by `deadline`; `phase` names what it is doing (updated by calling
  // again with the same deadline).
  void SetStartupDeadline(Clock::TimePoint deadline, const std::string& phase);
  void ClearStartupDeadline();

  std::chrono::milliseconds step_deadline() const { return step_deadline_; }
  // True once the handler has run.
  bool expired() const;

 private:
  void Enter(const std::string& what);
  void Leave();
  void Run();

  Clock& clock_;
  const std::chrono::milliseconds step_deadline_;
  const std::chrono::milliseconds check_interval_;
  ExpiredHandler on_expired_;

  mutable std::mutex mu_;
  std::condition_variable wake_;
  int depth_ = 0;                                     // guarded by mu_
  Clock::TimePoint armed_since_;                      // guarded by mu_; valid when depth_ > 0
  std::string armed_what_;                            // guarded by mu_
  std::optional<Clock::TimePoint> startup_deadline_;  // guarded by mu_
  Clock::TimePoint startup_set_at_;                   // guarded by mu_
  std::string startup_phase_;                         // guarded by mu_
  bool expired_ = false;                              // guarded by mu_
  bool stop_ = false;                                 // guarded by mu_
  std::thread thread_;
};

}  // namespace spark::shard
