// Helpers for the scheduler tests (plain and speculative): what a request's output callback
// received, and a loop that steps a Scheduler until it has no work.
//
// Thread safety: used from the test thread only. Ownership: none.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "engine/runtime/scheduler.h"

namespace spark::engine::testing {

// The outputs one request received: every event, the tokens among them and how it finished.
struct Collected {
  std::vector<int32_t> tokens;
  std::vector<TokenOutput> events;
  FinishReason finish = FinishReason::kNone;
  int finish_events = 0;

  // Records `out` (a test failure when it comes after the request finished).
  void Add(uint64_t id, const TokenOutput& out) {
    EXPECT_EQ(finish, FinishReason::kNone) << "event after the finish of request " << id;
    events.push_back(out);
    if (out.token >= 0) tokens.push_back(out.token);
    if (out.finish != FinishReason::kNone) {
      finish = out.finish;
      ++finish_events;
    }
  }
};

// Steps `s` until it has no work; a test failure when a step fails or `max_steps` do not finish.
inline void RunScheduler(Scheduler& s, int max_steps) {
  for (int i = 0; i < max_steps && s.HasWork(); ++i) {
    auto stats = s.Step();
    ASSERT_TRUE(stats.ok()) << stats.status().ToString();
  }
  ASSERT_FALSE(s.HasWork()) << "scheduler did not finish";
}

}  // namespace spark::engine::testing
