// OpenAiMetrics: the inference endpoints' Prometheus metrics, rendered for GET /metrics in the
// text exposition format (version 0.0.4):
//   spark_http_requests_total{endpoint, status}       counter: answered requests
//   spark_time_to_first_token_seconds                 histogram: arrival to the first token
//   spark_inter_token_latency_seconds                 histogram: between tokens of a stream
//   spark_prompt_tokens_total, spark_completion_tokens_total   counters
//   spark_requests_queued                             gauge: admitted, no token yet
//   spark_requests_running                            gauge: generating
//   spark_deployment_state{model, state}              gauge: 1 for the current state
//   spark_deployment_restarts{model}, spark_deployment_generation{model}   gauges
// and, for each deployment with speculative decoding on (summed over its runs since the
// controller started; rank 0 reports them about once a second while they change):
//   spark_spec_acceptance_length{model}         gauge: accepted / verify steps + 1
//   spark_spec_verify_steps_total{model}        counter: verify steps (per sequence)
//   spark_spec_drafted_tokens_total{model}      counter: draft tokens verified
//   spark_spec_accepted_tokens_total{model}     counter: draft tokens accepted
//   spark_spec_emitted_tokens_total{model}      counter: tokens emitted by verifications
//   spark_spec_draft_seconds_total{model}       counter: time spent drafting
//   spark_spec_verify_seconds_total{model}      counter: time spent verifying
//
// Thread safety: every method may be called from any thread.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "controller/views.h"

namespace spark::controller {

class LatencyHistogram {
 public:
  // Upper bounds in seconds (the +Inf bucket is implicit).
  static constexpr std::array<double, 14> kBounds = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                     0.25,  0.5,    1,     2.5,  5,     10,   30};
  void Observe(double seconds);
  // Appends the _bucket, _sum and _count lines of `name`.
  void Render(const std::string& name, std::string* out) const;

 private:
  mutable std::mutex mu_;
  std::array<uint64_t, kBounds.size() + 1> counts_{};
  double sum_ = 0;
  uint64_t count_ = 0;
};

class OpenAiMetrics {
 public:
  void CountRequest(const std::string& endpoint, int http_status);
  void ObserveTimeToFirstToken(double seconds) { ttft_.Observe(seconds); }
  void ObserveInterTokenLatency(double seconds) { itl_.Observe(seconds); }
  void AddPromptTokens(uint64_t n) { prompt_tokens_ += n; }
  void AddCompletionTokens(uint64_t n) { completion_tokens_ += n; }
  void AddQueued(int64_t delta) { queued_ += delta; }
  void AddRunning(int64_t delta) { running_ += delta; }

  int64_t queued() const { return queued_; }
  int64_t running() const { return running_; }

  // The whole exposition, with the deployment gauges from `deployments`.
  std::string Render(const std::vector<DeploymentView>& deployments) const;

 private:
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;
  LatencyHistogram ttft_;
  LatencyHistogram itl_;
  std::atomic<uint64_t> prompt_tokens_{0};
  std::atomic<uint64_t> completion_tokens_{0};
  std::atomic<int64_t> queued_{0};
  std::atomic<int64_t> running_{0};
};

// Appends the spark_spec_* families (nothing when no deployment has speculative decoding on).
void RenderSpeculative(const std::vector<DeploymentView>& deployments, std::string* out);

}  // namespace spark::controller
