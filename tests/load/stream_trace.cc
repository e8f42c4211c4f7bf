#include "tests/load/stream_trace.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

namespace spark::load {

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double NearestRank(const std::vector<double>& sorted, double fraction) {
  const size_t rank = static_cast<size_t>(std::ceil(fraction * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank == 0 ? 0 : rank - 1)];
}

std::string Line(const char* name, const Percentiles& p) {
  char line[200];
  std::snprintf(line, sizeof(line),
                "  %-26s mean %8.2f  p50 %8.2f  p90 %8.2f  p99 %8.2f  max %8.2f ms  (n=%zu)\n",
                name, p.mean, p.p50, p.p90, p.p99, p.max, p.count);
  return line;
}

}  // namespace

Percentiles Summarize(std::vector<double>& values) {
  Percentiles p;
  if (values.empty()) return p;
  std::sort(values.begin(), values.end());
  p.count = values.size();
  p.mean = std::accumulate(values.begin(), values.end(), 0.0) / static_cast<double>(values.size());
  p.p50 = NearestRank(values, 0.50);
  p.p90 = NearestRank(values, 0.90);
  p.p99 = NearestRank(values, 0.99);
  p.max = values.back();
  return p;
}

LoadStats Analyze(const std::vector<StreamTrace>& traces, double wall_s) {
  LoadStats s;
  s.requests = traces.size();
  s.wall_s = wall_s;
  std::vector<double> ttft, itl, tpot, token_latency, e2e;
  for (const StreamTrace& t : traces) {
    if (!t.ok() || t.token_times.empty()) {
      ++s.failed;
      if (s.first_error.empty()) s.first_error = t.ok() ? "no token arrived" : t.error;
      continue;
    }
    // The final usage counts every token; a chat stream carries no event for a token that adds no
    // text (a special token, part of a UTF-8 character).
    s.tokens += t.usage_completion_tokens >= 0 ? static_cast<size_t>(t.usage_completion_tokens)
                                               : t.token_times.size();
    ttft.push_back(Ms(t.token_times.front() - t.sent));
    e2e.push_back(Ms(t.token_times.back() - t.sent));
    for (size_t i = 0; i < t.token_times.size(); ++i) {
      token_latency.push_back(Ms(t.token_times[i] - t.sent));
      if (i > 0) itl.push_back(Ms(t.token_times[i] - t.token_times[i - 1]));
    }
    if (t.token_times.size() > 1) {
      tpot.push_back(Ms(t.token_times.back() - t.token_times.front()) /
                     static_cast<double>(t.token_times.size() - 1));
    }
  }
  const size_t ok = s.requests - s.failed;
  s.requests_per_s = wall_s > 0 ? static_cast<double>(ok) / wall_s : 0;
  s.output_tokens_per_s = wall_s > 0 ? static_cast<double>(s.tokens) / wall_s : 0;
  s.ttft_ms = Summarize(ttft);
  s.itl_ms = Summarize(itl);
  s.tpot_ms = Summarize(tpot);
  s.token_latency_ms = Summarize(token_latency);
  s.e2e_ms = Summarize(e2e);
  return s;
}

std::string FormatStats(const std::string& title, const LoadStats& s) {
  char head[300];
  std::snprintf(
      head, sizeof(head),
      "%s\n  %zu requests (%zu failed) in %.2f s: %.2f requests/s, %.1f output tokens/s\n",
      title.c_str(), s.requests, s.failed, s.wall_s, s.requests_per_s, s.output_tokens_per_s);
  std::string out = head;
  out += Line("time to first token", s.ttft_ms);
  out += Line("inter-token latency", s.itl_ms);
  out += Line("time per output token", s.tpot_ms);
  out += Line("token delivery (send->tok)", s.token_latency_ms);
  out += Line("end to end", s.e2e_ms);
  if (!s.first_error.empty()) out += "  first error: " + s.first_error + "\n";
  return out;
}

}  // namespace spark::load
