#include "controller/restart_policy.h"

#include <algorithm>

namespace spark::controller {

RestartPolicy::Decision RestartPolicy::OnFailure(Clock::TimePoint now) {
  while (!restarts_.empty() && now - restarts_.front() >= options_.window) restarts_.pop_front();
  Decision decision;
  if (static_cast<int>(restarts_.size()) >= options_.budget) {
    decision.give_up = true;
    decision.restarts_in_window = static_cast<int>(restarts_.size());
    return decision;
  }
  restarts_.push_back(now);
  decision.restarts_in_window = static_cast<int>(restarts_.size());
  std::chrono::milliseconds delay = options_.initial_backoff;
  for (int i = 0; i < consecutive_failures_ && delay < options_.max_backoff; ++i) delay *= 2;
  decision.delay = std::min(delay, options_.max_backoff);
  ++consecutive_failures_;
  return decision;
}

void RestartPolicy::Reset() {
  consecutive_failures_ = 0;
  restarts_.clear();
}

}  // namespace spark::controller
