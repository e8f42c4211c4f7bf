#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <string>
#include <utility>

namespace spark::engine {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kNone:
      return "";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "";
}

struct Scheduler::Sequence {
  Request request;
  std::vector<int32_t> tokens;  // prompt + generated
  int64_t prompt_len = 0;
  int64_t generated = 0;
  int64_t cached = 0;   // tokens in the backend's KV cache
  uint64_t seq_id = 0;  // backend sequence id while admitted, 0 otherwise
  std::unique_ptr<Sampler> sampler;

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - cached; }
};

Scheduler::Scheduler(Backend* backend, const SchedulerOptions& options)
    : backend_(backend), options_(options) {}

Scheduler::~Scheduler() {
  for (auto& seq : running_) backend_->Release(seq->seq_id);
}

Result<std::unique_ptr<Scheduler>> Scheduler::Create(Backend* backend,
                                                     const SchedulerOptions& options) {
  if (backend == nullptr) return InvalidArgument("Scheduler needs a backend");
  if (options.max_batch_tokens < 1) {
    return InvalidArgument("SchedulerOptions.max_batch_tokens must be >= 1, got " +
                           std::to_string(options.max_batch_tokens));
  }
  if (options.max_running < 1) {
    return InvalidArgument("SchedulerOptions.max_running must be >= 1, got " +
                           std::to_string(options.max_running));
  }
  if (options.max_prefill_chunk_tokens < 0 || options.max_model_len < 0) {
    return InvalidArgument(
        "SchedulerOptions.max_prefill_chunk_tokens and max_model_len must be >= 0");
  }
  std::unique_ptr<Scheduler> s(new Scheduler(backend, options));
  // Every running sequence needs one token of the step budget.
  s->options_.max_running =
      static_cast<int>(std::min<int64_t>(options.max_running, options.max_batch_tokens));
  const ModelConfig& config = backend->config();
  s->vocab_size_ = config.vocab_size;
  if (s->options_.max_model_len == 0) s->options_.max_model_len = config.max_position_embeddings;
  if (options.eos_token_ids.has_value()) {
    s->eos_ = *options.eos_token_ids;
  } else {
    for (int64_t t : config.eos_token_ids) s->eos_.push_back(static_cast<int32_t>(t));
  }
  return s;
}

Status Scheduler::AddRequest(Request request) {
  const std::string who = "request " + std::to_string(request.id) + ": ";
  if (request.prompt.empty()) return InvalidArgument(who + "the prompt is empty");
  for (int32_t t : request.prompt) {
    if (t < 0 || t >= vocab_size_) {
      return InvalidArgument(who + "prompt token " + std::to_string(t) +
                             " is outside the vocabulary [0, " + std::to_string(vocab_size_) + ")");
    }
  }
  if (options_.max_model_len > 0 &&
      static_cast<int64_t>(request.prompt.size()) >= options_.max_model_len) {
    return InvalidArgument(who + "the prompt has " + std::to_string(request.prompt.size()) +
                           " tokens but the model takes at most " +
                           std::to_string(options_.max_model_len) +
                           " (prompt + output); shorten the prompt");
  }
  if (!request.on_output) return InvalidArgument(who + "no output callback");
  Status valid = request.params.Validate(vocab_size_);
  if (!valid.ok()) return valid.WithContext(who.substr(0, who.size() - 2));
  std::lock_guard<std::mutex> lock(inbox_mu_);
  if (!live_ids_.insert(request.id).second) {
    return AlreadyExists(who + "a live request already has this id; ids must be unique");
  }
  inbox_requests_.push_back(std::move(request));
  return Status::Ok();
}

void Scheduler::Cancel(uint64_t request_id) {
  std::lock_guard<std::mutex> lock(inbox_mu_);
  if (live_ids_.count(request_id) > 0) inbox_cancels_.push_back(request_id);
}

bool Scheduler::HasWork() const {
  std::lock_guard<std::mutex> lock(inbox_mu_);
  return !live_ids_.empty() || !inbox_requests_.empty() || !inbox_cancels_.empty();
}

void Scheduler::DrainInbox() {
  std::vector<Request> requests;
  std::vector<uint64_t> cancels;
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    requests.swap(inbox_requests_);
    cancels.swap(inbox_cancels_);
  }
  for (Request& r : requests) {
    auto seq = std::make_unique<Sequence>();
    seq->tokens = r.prompt;
    seq->prompt_len = static_cast<int64_t>(r.prompt.size());
    seq->sampler = std::make_unique<Sampler>(r.params, r.prompt);
    seq->request = std::move(r);
    seq->request.prompt.clear();
    seq->request.prompt.shrink_to_fit();
    waiting_.push_back(std::move(seq));
  }
  for (uint64_t id : cancels) {
    auto in_running = std::find_if(running_.begin(), running_.end(),
                                   [&](const auto& s) { return s->request.id == id; });
    if (in_running != running_.end()) {
      Finish(**in_running, FinishReason::kCancelled);
      running_.erase(in_running);
      continue;
    }
    auto in_waiting = std::find_if(waiting_.begin(), waiting_.end(),
                                   [&](const auto& s) { return s->request.id == id; });
    if (in_waiting != waiting_.end()) {
      Finish(**in_waiting, FinishReason::kCancelled);
      waiting_.erase(in_waiting);
    }
  }
}

void Scheduler::Finish(Sequence& seq, FinishReason reason, Status error) {
  if (seq.seq_id != 0) {
    backend_->Release(seq.seq_id);
    seq.seq_id = 0;
    seq.cached = 0;
  }
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    live_ids_.erase(seq.request.id);
  }
  if (reason == FinishReason::kCancelled || reason == FinishReason::kError) {
    TokenOutput out;
    out.request_id = seq.request.id;
    out.finish = reason;
    out.error = std::move(error);
    out.prompt_tokens = seq.prompt_len;
    out.output_tokens = seq.generated;
    seq.request.on_output(out);
  }
}

bool Scheduler::PreemptNewest() {
  if (running_.empty()) return false;
  std::unique_ptr<Sequence> seq = std::move(running_.back());
  running_.pop_back();
  backend_->Release(seq->seq_id);
  seq->seq_id = 0;
  seq->cached = 0;  // recompute prompt + generated tokens when readmitted
  waiting_.push_front(std::move(seq));
  ++total_preemptions_;
  return true;
}

void Scheduler::BuildBatch(ForwardBatch& batch, std::vector<Sequence*>& owners) {
  batch.chunks.clear();
  owners.clear();
  int64_t budget = options_.max_batch_tokens;
  int64_t free_kv = backend_->FreeKvTokens();
  auto add_chunk = [&](Sequence& seq, int64_t n) {
    SequenceChunk chunk;
    chunk.seq_id = seq.seq_id;
    chunk.start_pos = seq.cached;
    chunk.tokens.assign(seq.tokens.begin() + seq.cached, seq.tokens.begin() + seq.cached + n);
    batch.chunks.push_back(std::move(chunk));
    owners.push_back(&seq);
    budget -= n;
    free_kv -= n;
  };
  auto chunk_limit = [&](int64_t pending) {
    int64_t n = std::min(pending, budget);
    if (options_.max_prefill_chunk_tokens > 0) n = std::min(n, options_.max_prefill_chunk_tokens);
    return n;
  };

  // Decode steps first (one token each, oldest first), then prompts already being read.
  for (auto& seq : running_) {
    if (seq->pending() == 1 && budget > 0) add_chunk(*seq, 1);
  }
  for (auto& seq : running_) {
    if (seq->pending() > 1 && budget > 0) add_chunk(*seq, chunk_limit(seq->pending()));
  }
  // Admit waiting requests while the budget, the running cap and the KV cache allow. A request
  // is admitted only when its whole prompt fits next to one more token per running sequence,
  // unless nothing runs (then it is tried alone; if it cannot fit even then it fails).
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < options_.max_running) {
    Sequence& seq = *waiting_.front();
    const int64_t reserve = static_cast<int64_t>(running_.size());
    if (!running_.empty() && seq.pending() + reserve > free_kv) break;
    seq.seq_id = next_seq_id_++;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add_chunk(seq, chunk_limit(seq.pending()));
  }
}

Result<StepStats> Scheduler::Step() {
  DrainInbox();
  StepStats stats;
  ForwardBatch batch;
  std::vector<Sequence*> owners;
  ForwardOutput output;
  while (true) {
    BuildBatch(batch, owners);
    if (batch.chunks.empty()) return stats;
    Result<ForwardOutput> result = backend_->Forward(batch);
    if (result.ok()) {
      output = std::move(result).value();
      break;
    }
    if (result.status().code() != StatusCode::kResourceExhausted) {
      return result.status().WithContext("scheduler step");
    }
    if (running_.size() <= 1) {
      // Alone and still out of KV cache: this request can never fit.
      std::unique_ptr<Sequence> seq = std::move(running_.back());
      running_.pop_back();
      const int64_t needed = static_cast<int64_t>(seq->tokens.size());
      Finish(*seq, FinishReason::kError,
             ResourceExhausted("request " + std::to_string(seq->request.id) + " needs " +
                               std::to_string(needed) +
                               " tokens of KV cache, more than the whole cache holds (" +
                               result.status().message() +
                               "); shorten the prompt or max_tokens, or give the backend more "
                               "KV cache memory"));
      ++stats.finished;
      continue;
    }
    PreemptNewest();
    ++stats.preemptions;
  }

  stats.sequences = static_cast<int>(batch.chunks.size());
  std::vector<size_t> ready;  // chunks whose sequence samples its next token now
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    Sequence& seq = *owners[i];
    const int64_t n = static_cast<int64_t>(batch.chunks[i].tokens.size());
    if (seq.pending() == 1 && n == 1 && seq.generated > 0 && seq.cached > 0) {
      ++stats.decode_tokens;
    } else {
      stats.prefill_tokens += n;
    }
    seq.cached += n;
    if (seq.pending() == 0) ready.push_back(i);  // else a prompt chunk; more to read
  }

  auto row_of = [&](size_t i) {
    return output.logits.data() + output.row_begin[i] * output.vocab_size;
  };
  std::vector<SampleResult> samples;
  if (options_.batch_sampler != nullptr && !ready.empty()) {
    std::vector<BatchSampleRow> rows;
    rows.reserve(ready.size());
    for (size_t i : ready) {
      const Sequence& seq = *owners[i];
      const std::span<const int32_t> all(seq.tokens);
      rows.push_back({row_of(i), &seq.request.params,
                      all.first(static_cast<size_t>(seq.prompt_len)),
                      all.subspan(static_cast<size_t>(seq.prompt_len)), seq.sampler->seed(),
                      static_cast<uint64_t>(seq.generated)});
    }
    SPARK_ASSIGN_OR_RETURN(samples, options_.batch_sampler->SampleBatch(output.vocab_size, rows));
    if (samples.size() != rows.size()) {
      return Internal("batch sampler returned " + std::to_string(samples.size()) + " results for " +
                      std::to_string(rows.size()) + " rows");
    }
  } else {
    for (size_t i : ready) {
      samples.push_back(
          owners[i]->sampler->Sample({row_of(i), static_cast<size_t>(output.vocab_size)}));
    }
  }

  std::vector<Sequence*> finished;
  for (size_t k = 0; k < ready.size(); ++k) {
    Sequence& seq = *owners[ready[k]];
    SampleResult& sample = samples[k];
    seq.sampler->Accept(sample.token);
    seq.tokens.push_back(sample.token);
    ++seq.generated;
    ++stats.sampled;

    const SamplingParams& params = seq.request.params;
    FinishReason reason = FinishReason::kNone;
    auto contains = [](const std::vector<int32_t>& v, int32_t t) {
      return std::find(v.begin(), v.end(), t) != v.end();
    };
    if (contains(params.stop_token_ids, sample.token) ||
        (!params.ignore_eos && contains(eos_, sample.token))) {
      reason = FinishReason::kStop;
    } else if (seq.generated >= params.max_tokens ||
               (options_.max_model_len > 0 &&
                static_cast<int64_t>(seq.tokens.size()) >= options_.max_model_len)) {
      reason = FinishReason::kLength;
    }

    TokenOutput out;
    out.request_id = seq.request.id;
    out.token = sample.token;
    out.logprob = sample.logprob;
    out.top_logprobs = std::move(sample.top_logprobs);
    out.finish = reason;
    out.prompt_tokens = seq.prompt_len;
    out.output_tokens = seq.generated;
    seq.request.on_output(out);
    if (reason != FinishReason::kNone) finished.push_back(&seq);
  }
  for (Sequence* seq : finished) {
    Finish(*seq, FinishReason::kNone);  // event already emitted with the last token
    auto it = std::find_if(running_.begin(), running_.end(),
                           [&](const auto& s) { return s.get() == seq; });
    running_.erase(it);
    ++stats.finished;
  }
  return stats;
}

}  // namespace spark::engine
