#include "engine/bench/speculative_bench.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <ostream>
#include <random>
#include <string>
#include <system_error>
#include <vector>

#include "engine/bench/self_draft_model.h"
#include "engine/runtime/offline.h"
#include "engine/runtime/scheduler.h"

namespace spark::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

Result<SpeculativeBenchRun> RunOnce(engine::Backend* backend,
                                    const std::vector<std::vector<int32_t>>& prompts,
                                    const SpeculativeBenchOptions& o,
                                    const engine::SpeculativeOptions& speculative,
                                    std::vector<std::vector<int32_t>>* outputs) {
  engine::SchedulerOptions options;
  options.speculative = speculative;
  options.max_running = static_cast<int>(prompts.size());
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::Scheduler> scheduler,
                         engine::Scheduler::Create(backend, options));
  outputs->assign(prompts.size(), {});
  std::vector<Clock::time_point> first(prompts.size());
  Clock::time_point last{};
  Status failure;
  for (size_t i = 0; i < prompts.size(); ++i) {
    engine::Request r;
    r.id = i + 1;
    r.prompt = prompts[i];
    r.params.temperature = o.temperature;
    r.params.max_tokens = o.max_tokens;
    r.params.ignore_eos = true;
    r.params.seed = o.seed + i;
    r.on_output = [&, i](const engine::TokenOutput& out) {
      if (out.token >= 0) {
        last = Clock::now();
        if ((*outputs)[i].empty()) first[i] = last;
        (*outputs)[i].push_back(out.token);
      }
      if (out.finish == engine::FinishReason::kError) failure = out.error;
    };
    SPARK_RETURN_IF_ERROR(scheduler->AddRequest(std::move(r)));
  }
  const Clock::time_point start = Clock::now();
  while (scheduler->HasWork()) {
    SPARK_RETURN_IF_ERROR(scheduler->Step().status());
  }
  SPARK_RETURN_IF_ERROR(failure);
  SpeculativeBenchRun run;
  Clock::time_point decode_start = start;
  for (size_t i = 0; i < prompts.size(); ++i) {
    run.generated_tokens += static_cast<int64_t>((*outputs)[i].size());
    if (first[i] > decode_start) decode_start = first[i];
  }
  run.seconds = Seconds(start, last);
  if (run.seconds > 0) run.tokens_per_s = static_cast<double>(run.generated_tokens) / run.seconds;
  // Tokens emitted after every request had its first one.
  int64_t decode_tokens = 0;
  for (const auto& out : *outputs) decode_tokens += static_cast<int64_t>(out.size()) - 1;
  const double decode_s = Seconds(decode_start, last);
  if (decode_s > 0) run.decode_tokens_per_s = static_cast<double>(decode_tokens) / decode_s;
  run.stats = scheduler->speculative_stats();
  return run;
}

}  // namespace

Result<SpeculativeBenchReport> RunSpeculativeBench(const SpeculativeBenchOptions& o,
                                                   std::ostream* log) {
  SPARK_ASSIGN_OR_RETURN(engine::SpeculativeOptions speculative,
                         engine::ResolveSpeculativeOptions(o.speculative));
  if (!speculative.enabled()) {
    return InvalidArgument("--steps must be >= 1 (the benchmark compares against no speculation)");
  }
  if (o.requests < 1 || o.prompt_tokens < 1 || o.max_tokens < 2) {
    return InvalidArgument("--requests and --prompt-tokens must be >= 1, --max-tokens >= 2");
  }
  SpeculativeBenchReport report;
  report.options = o;
  report.options.speculative = speculative;
  report.greedy = o.temperature == 0.0f;

  fs::path dir = o.model_dir;
  fs::path temp;
  if (dir.empty()) {
    temp = fs::temp_directory_path() / ("spark_spec_bench_" + std::to_string(getpid()));
    SelfDraftModelOptions m;
    m.layers = o.layers;
    m.residual_scale = o.residual_scale;
    m.seed = o.seed;
    SPARK_RETURN_IF_ERROR(WriteSelfDraftModel(temp, m));
    dir = temp;
    char buf[160];
    std::snprintf(buf, sizeof(buf),
                  "self-draft tiny GLM (%d layers, residual scale %g, seed %llu; MTP layer = "
                  "layer 0 fed the token embedding)",
                  o.layers, static_cast<double>(o.residual_scale),
                  static_cast<unsigned long long>(o.seed));
    report.model = buf;
  } else {
    report.model = dir.string();
  }
  struct Cleanup {
    fs::path p;
    ~Cleanup() {
      std::error_code ec;
      if (!p.empty()) fs::remove_all(p, ec);
    }
  } cleanup{temp};

  engine::OfflineEngineOptions eo;
  eo.tp_size = o.tp;
  eo.threads = o.threads;
  eo.load_mtp = true;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<engine::LocalTpGroup> group,
                         engine::OpenOfflineEngine(dir, eo));
  engine::Backend* backend = group->backend();
  if (!backend->SupportsSpeculation()) {
    return InvalidArgument(report.model +
                           ": the model has no MTP (nextn) layer; speculative decoding needs one");
  }
  const int64_t vocab = backend->config().vocab_size;
  std::mt19937_64 rng(o.seed * 7919 + 1);
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(o.requests));
  for (auto& p : prompts) {
    for (int i = 0; i < o.prompt_tokens; ++i) {
      p.push_back(static_cast<int32_t>(rng() % static_cast<uint64_t>(vocab)));
    }
  }
  if (log != nullptr) *log << "model: " << report.model << "\n";
  std::vector<std::vector<int32_t>> plain_out, spec_out;
  // A warm-up pass keeps first-touch costs out of both timings.
  {
    std::vector<std::vector<int32_t>> warm;
    SPARK_RETURN_IF_ERROR(RunOnce(backend, prompts, o, {}, &warm).status());
  }
  SPARK_ASSIGN_OR_RETURN(report.baseline, RunOnce(backend, prompts, o, {}, &plain_out));
  SPARK_ASSIGN_OR_RETURN(report.speculative, RunOnce(backend, prompts, o, speculative, &spec_out));
  report.identical_outputs = plain_out == spec_out;
  SPARK_RETURN_IF_ERROR(group->Shutdown());
  return report;
}

void PrintSpeculativeBenchReport(const SpeculativeBenchReport& r, bool json, std::ostream& out) {
  const SpeculativeBenchOptions& o = r.options;
  const engine::SpeculativeStats& s = r.speculative.stats;
  const double speedup = r.baseline.decode_tokens_per_s > 0
                             ? r.speculative.decode_tokens_per_s / r.baseline.decode_tokens_per_s
                             : 0;
  char buf[2048];
  if (json) {
    std::snprintf(
        buf, sizeof(buf),
        "{\"model\":\"%s\",\"tp\":%d,\"requests\":%d,\"prompt_tokens\":%d,\"max_tokens\":%d,"
        "\"temperature\":%g,\"steps\":%d,\"topk\":%d,\"draft_tokens\":%d,"
        "\"baseline\":{\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.2f,"
        "\"decode_tokens_per_s\":%.2f},"
        "\"speculative\":{\"tokens\":%lld,\"seconds\":%.4f,\"tokens_per_s\":%.2f,"
        "\"decode_tokens_per_s\":%.2f,\"verify_steps\":%lld,\"drafted_tokens\":%lld,"
        "\"accepted_tokens\":%lld,\"acceptance_length\":%.4f,\"draft_ms\":%.2f,"
        "\"verify_ms\":%.2f},\"decode_speedup\":%.3f,\"identical_outputs\":%s}\n",
        r.model.c_str(), o.tp, o.requests, o.prompt_tokens, o.max_tokens,
        static_cast<double>(o.temperature), o.speculative.steps, o.speculative.topk,
        o.speculative.draft_tokens, static_cast<long long>(r.baseline.generated_tokens),
        r.baseline.seconds, r.baseline.tokens_per_s, r.baseline.decode_tokens_per_s,
        static_cast<long long>(r.speculative.generated_tokens), r.speculative.seconds,
        r.speculative.tokens_per_s, r.speculative.decode_tokens_per_s,
        static_cast<long long>(s.verify_steps), static_cast<long long>(s.drafted_tokens),
        static_cast<long long>(s.accepted_tokens), s.AcceptanceLength(), s.draft_ms, s.verify_ms,
        speedup, r.greedy ? (r.identical_outputs ? "true" : "false") : "null");
    out << buf;
    return;
  }
  std::snprintf(buf, sizeof(buf),
                "model: %s\n"
                "tp %d, %d request(s) x %d prompt tokens -> %d tokens, temperature %g; "
                "speculation: steps %d, topk %d, draft tokens %d\n"
                "  no speculation: %lld tokens in %.3f s, %.1f tok/s (decode %.1f tok/s)\n"
                "  speculative:    %lld tokens in %.3f s, %.1f tok/s (decode %.1f tok/s)\n"
                "  acceptance length %.3f (%lld of %lld draft tokens accepted, %lld verify "
                "steps), draft %.1f ms, verify %.1f ms\n"
                "  decode speed-up x%.2f; greedy outputs identical: %s\n",
                r.model.c_str(), o.tp, o.requests, o.prompt_tokens, o.max_tokens,
                static_cast<double>(o.temperature), o.speculative.steps, o.speculative.topk,
                o.speculative.draft_tokens, static_cast<long long>(r.baseline.generated_tokens),
                r.baseline.seconds, r.baseline.tokens_per_s, r.baseline.decode_tokens_per_s,
                static_cast<long long>(r.speculative.generated_tokens), r.speculative.seconds,
                r.speculative.tokens_per_s, r.speculative.decode_tokens_per_s, s.AcceptanceLength(),
                static_cast<long long>(s.accepted_tokens), static_cast<long long>(s.drafted_tokens),
                static_cast<long long>(s.verify_steps), s.draft_ms, s.verify_ms, speedup,
                r.greedy ? (r.identical_outputs ? "yes" : "NO") : "n/a (sampled)");
  out << buf;
}

}  // namespace spark::bench
