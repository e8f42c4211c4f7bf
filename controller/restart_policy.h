// RestartPolicy: when a failed run of a deployment may be retried.
//
// After each failure the next run waits an exponential backoff (initial, 2x, 4x, ... capped at
// max_backoff); the exponent counts failures since the deployment was last ready. A sliding
// restart budget bounds how often that happens: at most `budget` restarts within `window`; the
// failure that would exceed it gives up (the deployment becomes `failed` until an operator
// restarts it, which calls Reset).
//
// Thread safety: a plain value, used by the controller's owner thread only.
#pragma once

#include <chrono>
#include <deque>

#include "common/clock.h"

namespace spark::controller {

struct RestartPolicyOptions {
  std::chrono::milliseconds initial_backoff{1000};
  std::chrono::milliseconds max_backoff{30000};
  int budget = 5;                            // restarts allowed within `window`
  std::chrono::milliseconds window{600000};  // sliding window of the budget
};

class RestartPolicy {
 public:
  explicit RestartPolicy(RestartPolicyOptions options = {}) : options_(options) {}

  struct Decision {
    bool give_up = false;                // budget spent: do not restart
    std::chrono::milliseconds delay{0};  // wait this long before the next run
    int restarts_in_window = 0;          // restarts counted in the window, this one included
  };
  // Records a failure at `now` and decides about the next run.
  Decision OnFailure(Clock::TimePoint now);
  // A run became ready: the backoff starts from `initial_backoff` again (the budget window keeps
  // its history).
  void OnReady() { consecutive_failures_ = 0; }
  // Operator restart: forget every failure.
  void Reset();

  const RestartPolicyOptions& options() const { return options_; }

 private:
  RestartPolicyOptions options_;
  int consecutive_failures_ = 0;
  std::deque<Clock::TimePoint> restarts_;  // times of the restarts granted within the window
};

}  // namespace spark::controller
