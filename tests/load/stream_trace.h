// StreamTrace: what a load generator saw of one streamed generation request (send time, the
// arrival time of every token, the final usage, an error), and the latency statistics over many
// traces: time to first token, inter-token latency, time per output token and mean token delivery
// latency, with nearest-rank percentiles.
//
// Thread safety: plain values and pure functions.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace spark::load {

using Clock = std::chrono::steady_clock;

struct StreamTrace {
  Clock::time_point sent{};
  // One entry per generated token, in order (a message carrying k tokens adds k equal entries).
  std::vector<Clock::time_point> token_times;
  int64_t usage_completion_tokens = -1;  // from the final usage, -1 when none arrived
  std::string error;                     // empty: the request succeeded
  bool ok() const { return error.empty(); }
};

struct Percentiles {
  size_t count = 0;
  double mean = 0, p50 = 0, p90 = 0, p99 = 0, max = 0;
};

// Nearest-rank percentiles of `values` (sorted in place); all zero when empty.
Percentiles Summarize(std::vector<double>& values);

struct LoadStats {
  size_t requests = 0;
  size_t failed = 0;
  std::string first_error;
  double wall_s = 0;
  double requests_per_s = 0;       // successful requests / wall time
  double output_tokens_per_s = 0;  // tokens of successful requests / wall time
  size_t tokens = 0;    // generated tokens of successful requests (final usage when reported)
  Percentiles ttft_ms;  // send -> first token
  Percentiles itl_ms;   // gaps between consecutive token-carrying events, all requests
  Percentiles tpot_ms;  // per request: (last - first token) / (tokens - 1)
  Percentiles token_latency_ms;  // per token: arrival - send (mean = mean delivery latency)
  Percentiles e2e_ms;            // send -> last token
};

LoadStats Analyze(const std::vector<StreamTrace>& traces, double wall_s);

// "ttft p50 12.3 ms ..." lines for a report.
std::string FormatStats(const std::string& title, const LoadStats& stats);

}  // namespace spark::load
