#include "engine/runtime/offline.h"

#include <atomic>
#include <charconv>
#include <chrono>
#include <utility>

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

Result<std::vector<int32_t>> ParseTokenIds(std::string_view text) {
  std::vector<int32_t> ids;
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = Trim(text.substr(start, comma - start));
    int64_t value = -1;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size() || value < 0 ||
        value > INT32_MAX) {
      return InvalidArgument("token ids: '" + std::string(item) +
                             "' is not a non-negative integer; write ids as 5,17,3");
    }
    ids.push_back(static_cast<int32_t>(value));
    start = comma + 1;
  }
  return ids;
}

Result<std::unique_ptr<LocalTpGroup>> OpenOfflineEngine(const std::filesystem::path& model_dir,
                                                        const OfflineEngineOptions& options) {
  if (options.backend == "cuda") {
    return Unimplemented(
        "--backend cuda: not supported yet: the CUDA backend is not built; use "
        "--backend cpu");
  }
  if (options.backend != "cpu") {
    return InvalidArgument("--backend " + options.backend + ": unknown backend; use cpu");
  }
  if (options.tp_size < 1) {
    return InvalidArgument("--tp " + std::to_string(options.tp_size) + ": must be >= 1");
  }
  if (options.kv_cache_bytes <= 0) {
    return InvalidArgument("the KV cache size must be > 0 bytes");
  }
  LocalTpGroupOptions group;
  group.model_dir = model_dir;
  group.tp_size = options.tp_size;
  group.load.dummy = options.dummy_weights;
  group.load.seed = options.dummy_seed;
  group.load.load_mtp = options.load_mtp;
  group.cpu.threads = options.threads;
  group.cpu.kv_cache_bytes = options.kv_cache_bytes;
  group.gloo.host = "127.0.0.1";
  group.gloo.prefix = "spark-model";
  return LocalTpGroup::Create(group);
}

Result<std::vector<float>> PromptLogits(Backend* backend, const std::vector<int32_t>& ids) {
  if (ids.empty()) return InvalidArgument("no token ids to run");
  const int64_t vocab = backend->config().vocab_size;
  for (int32_t t : ids) {
    if (t >= vocab) {
      return InvalidArgument("token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                             std::to_string(vocab) + ")");
    }
  }
  static std::atomic<uint64_t> next_id{uint64_t{1} << 62};  // apart from scheduler ids
  SequenceChunk chunk;
  chunk.seq_id = next_id.fetch_add(1);
  chunk.start_pos = 0;
  chunk.tokens = ids;
  chunk.all_logits = true;
  ForwardBatch batch;
  batch.chunks.push_back(std::move(chunk));
  Result<ForwardOutput> out = backend->Forward(batch);
  backend->Release(batch.chunks[0].seq_id);
  if (!out.ok()) return out.status();
  if (out->vocab_size != vocab || out->logits.size() != ids.size() * static_cast<size_t>(vocab)) {
    return Internal("backend returned " + std::to_string(out->logits.size()) + " logits for " +
                    std::to_string(ids.size()) + " tokens x vocab " + std::to_string(vocab));
  }
  return std::move(out->logits);
}

double OfflineGenerateResult::decode_tokens_per_s() const {
  if (ids.size() < 2 || decode_ms <= 0) return 0;
  return static_cast<double>(ids.size() - 1) / (decode_ms / 1000.0);
}

Result<OfflineGenerateResult> GenerateOffline(Backend* backend, const std::vector<int32_t>& prompt,
                                              const SamplingParams& params,
                                              const std::function<void(int32_t)>& on_token,
                                              const SpeculativeOptions& speculative) {
  SchedulerOptions options;
  options.speculative = speculative;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<Scheduler> scheduler, Scheduler::Create(backend, options));
  OfflineGenerateResult result;
  result.prompt_tokens = static_cast<int64_t>(prompt.size());
  Status request_error;
  Clock::time_point first_token{}, last_token{};
  Request request;
  request.id = 1;
  request.prompt = prompt;
  request.params = params;
  request.on_output = [&](const TokenOutput& out) {
    if (out.token >= 0) {
      last_token = Clock::now();
      if (result.ids.empty()) first_token = last_token;
      result.ids.push_back(out.token);
      if (on_token) on_token(out.token);
    }
    if (out.finish != FinishReason::kNone) result.finish = out.finish;
    if (out.finish == FinishReason::kError) request_error = out.error;
  };
  const Clock::time_point start = Clock::now();
  SPARK_RETURN_IF_ERROR(scheduler->AddRequest(std::move(request)));
  while (scheduler->HasWork()) {
    Result<StepStats> step = scheduler->Step();
    if (!step.ok()) return step.status();
  }
  if (!request_error.ok()) return request_error;
  result.speculative = scheduler->speculative_stats();
  if (!result.ids.empty()) {
    result.prefill_ms = MsBetween(start, first_token);
    result.decode_ms = MsBetween(first_token, last_token);
  }
  return result;
}

}  // namespace spark::engine
