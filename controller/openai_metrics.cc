#include "controller/openai_metrics.h"

#include <cstdio>

#include "controller/store/records.h"

namespace spark::controller {
namespace {

std::string Number(double value) {
  char text[64];
  std::snprintf(text, sizeof(text), "%.17g", value);
  return text;
}

// Escapes a label value (backslash, double quote, newline).
std::string Label(const std::string& value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') {
      out += '\\';
      out += c;
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void Header(std::string* out, const std::string& name, const char* type, const char* help) {
  *out += "# HELP " + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

void LatencyHistogram::Observe(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  size_t i = 0;
  while (i < kBounds.size() && seconds > kBounds[i]) ++i;
  ++counts_[i];
  sum_ += seconds;
  ++count_;
}

void LatencyHistogram::Render(const std::string& name, std::string* out) const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kBounds.size(); ++i) {
    cumulative += counts_[i];
    *out +=
        name + "_bucket{le=\"" + Number(kBounds[i]) + "\"} " + std::to_string(cumulative) + "\n";
  }
  cumulative += counts_[kBounds.size()];
  *out += name + "_bucket{le=\"+Inf\"} " + std::to_string(cumulative) + "\n";
  *out += name + "_sum " + Number(sum_) + "\n";
  *out += name + "_count " + std::to_string(count_) + "\n";
}

void OpenAiMetrics::CountRequest(const std::string& endpoint, int http_status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[{endpoint, http_status}];
}

std::string OpenAiMetrics::Render(const std::vector<DeploymentView>& deployments) const {
  std::string out;
  Header(&out, "spark_http_requests_total", "counter",
         "Answered inference requests by endpoint and HTTP status.");
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, count] : requests_) {
      out += "spark_http_requests_total{endpoint=\"" + Label(key.first) + "\",status=\"" +
             std::to_string(key.second) + "\"} " + std::to_string(count) + "\n";
    }
  }
  Header(&out, "spark_time_to_first_token_seconds", "histogram",
         "Time from the request's arrival to its first generated token.");
  ttft_.Render("spark_time_to_first_token_seconds", &out);
  Header(&out, "spark_inter_token_latency_seconds", "histogram",
         "Time between successive generated tokens of a request.");
  itl_.Render("spark_inter_token_latency_seconds", &out);
  Header(&out, "spark_prompt_tokens_total", "counter", "Prompt tokens of answered requests.");
  out += "spark_prompt_tokens_total " + std::to_string(prompt_tokens_.load()) + "\n";
  Header(&out, "spark_completion_tokens_total", "counter", "Generated tokens.");
  out += "spark_completion_tokens_total " + std::to_string(completion_tokens_.load()) + "\n";
  Header(&out, "spark_requests_queued", "gauge",
         "Admitted inference requests without a first token yet.");
  out += "spark_requests_queued " + std::to_string(queued_.load()) + "\n";
  Header(&out, "spark_requests_running", "gauge", "Inference requests generating tokens.");
  out += "spark_requests_running " + std::to_string(running_.load()) + "\n";

  static constexpr store::DeploymentState kStates[] = {
      store::DeploymentState::kPending, store::DeploymentState::kLoading,
      store::DeploymentState::kReady,   store::DeploymentState::kRecovering,
      store::DeploymentState::kFailed,  store::DeploymentState::kStopping,
      store::DeploymentState::kStopped};
  Header(&out, "spark_deployment_state", "gauge",
         "1 for the deployment's current state, 0 for the others.");
  for (const DeploymentView& d : deployments) {
    for (store::DeploymentState state : kStates) {
      out += "spark_deployment_state{model=\"" + Label(d.record.name) + "\",state=\"" +
             std::string(store::DeploymentStateName(state)) + "\"} " +
             (d.record.state == state ? "1" : "0") + "\n";
    }
  }
  Header(&out, "spark_deployment_restarts", "gauge",
         "Runs the deployment restarted after failures.");
  for (const DeploymentView& d : deployments) {
    out += "spark_deployment_restarts{model=\"" + Label(d.record.name) + "\"} " +
           std::to_string(d.record.restarts) + "\n";
  }
  Header(&out, "spark_deployment_generation", "gauge",
         "Generation of the deployment's current run.");
  for (const DeploymentView& d : deployments) {
    out += "spark_deployment_generation{model=\"" + Label(d.record.name) + "\"} " +
           std::to_string(d.record.generation) + "\n";
  }
  RenderSpeculative(deployments, &out);
  return out;
}

void RenderSpeculative(const std::vector<DeploymentView>& deployments, std::string* out) {
  struct Series {
    const char* name;
    const char* type;
    const char* help;
    double (*value)(const spark::v1::SpeculativeStats&);
  };
  static constexpr Series kSeries[] = {
      {"spark_spec_acceptance_length", "gauge",
       "Mean tokens per speculative verify step (accepted drafts / verify steps + 1).",
       [](const spark::v1::SpeculativeStats& s) { return AcceptanceLength(s); }},
      {"spark_spec_verify_steps_total", "counter", "Speculative verifications.",
       [](const spark::v1::SpeculativeStats& s) { return static_cast<double>(s.verify_steps()); }},
      {"spark_spec_drafted_tokens_total", "counter",
       "Draft tokens verified (proposed by the MTP layer).",
       [](const spark::v1::SpeculativeStats& s) {
         return static_cast<double>(s.drafted_tokens());
       }},
      {"spark_spec_accepted_tokens_total", "counter", "Draft tokens accepted by the target model.",
       [](const spark::v1::SpeculativeStats& s) {
         return static_cast<double>(s.accepted_tokens());
       }},
      {"spark_spec_emitted_tokens_total", "counter", "Tokens emitted by speculative verifications.",
       [](const spark::v1::SpeculativeStats& s) {
         return static_cast<double>(s.emitted_tokens());
       }},
      {"spark_spec_draft_seconds_total", "counter",
       "Time spent drafting (MTP forwards, tree building).",
       [](const spark::v1::SpeculativeStats& s) { return s.draft_ms() / 1000.0; }},
      {"spark_spec_verify_seconds_total", "counter",
       "Time spent verifying drafts (target model forwards).",
       [](const spark::v1::SpeculativeStats& s) { return s.verify_ms() / 1000.0; }},
  };
  bool any = false;
  for (const DeploymentView& d : deployments) any = any || d.speculative.has_value();
  if (!any) return;
  for (const Series& series : kSeries) {
    Header(out, series.name, series.type, series.help);
    for (const DeploymentView& d : deployments) {
      if (!d.speculative) continue;
      *out += std::string(series.name) + "{model=\"" + Label(d.record.name) + "\"} " +
              Number(series.value(*d.speculative)) + "\n";
    }
  }
}

}  // namespace spark::controller
