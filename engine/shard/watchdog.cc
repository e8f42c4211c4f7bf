#include "engine/shard/watchdog.h"

#include <utility>

namespace spark::shard {
namespace {

int64_t Ms(Clock::Duration d) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(d).count();
}

}  // namespace

Watchdog::Watchdog(Clock& clock, std::chrono::milliseconds step_deadline, ExpiredHandler on_expired,
                   std::chrono::milliseconds check_interval)
    : clock_(clock),
      step_deadline_(step_deadline),
      check_interval_(check_interval),
      on_expired_(std::move(on_expired)) {
  thread_ = std::thread([this] { Run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

Watchdog::Scope Watchdog::Watch(const std::string& what) {
  Enter(what);
  return Scope(this);
}

void Watchdog::Enter(const std::string& what) {
  std::lock_guard<std::mutex> lock(mu_);
  if (depth_++ == 0) {
    armed_since_ = clock_.Now();
    armed_what_ = what;
  }
}

void Watchdog::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  if (depth_ > 0) --depth_;
}

void Watchdog::SetStartupDeadline(Clock::TimePoint deadline, const std::string& phase) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!startup_deadline_ || *startup_deadline_ != deadline) startup_set_at_ = clock_.Now();
  startup_deadline_ = deadline;
  startup_phase_ = phase;
}

void Watchdog::ClearStartupDeadline() {
  std::lock_guard<std::mutex> lock(mu_);
  startup_deadline_.reset();
}

bool Watchdog::expired() const {
  std::lock_guard<std::mutex> lock(mu_);
  return expired_;
}

void Watchdog::Run() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    wake_.wait_for(lock, check_interval_, [this] { return stop_; });
    if (stop_ || expired_) continue;
    const Clock::TimePoint now = clock_.Now();
    std::string reason;
    if (depth_ > 0 && now - armed_since_ >= step_deadline_) {
      reason = "collective hung: " + armed_what_ + " has not finished after " +
               std::to_string(Ms(now - armed_since_)) + " ms (step deadline " +
               std::to_string(step_deadline_.count()) +
               " ms); a peer rank is stuck or dead, or one step of this model takes longer than "
               "the deadline (raise the engine option step_timeout_ms)";
    } else if (startup_deadline_ && now >= *startup_deadline_) {
      reason = "not READY within the assignment deadline (" +
               std::to_string(Ms(*startup_deadline_ - startup_set_at_)) + " ms) while " +
               startup_phase_ +
               "; a peer rank did not start or loading is too slow (raise deadline_ms)";
    }
    if (reason.empty()) continue;
    expired_ = true;
    lock.unlock();
    on_expired_(reason);
    lock.lock();
  }
}

}  // namespace spark::shard
