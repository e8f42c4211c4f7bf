#include "engine/runtime/scheduler.h"

#include <algorithm>
#include <chrono>
#include <string>
#include <utility>

#include "common/check.h"

namespace spark::engine {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// The key of a speculative round's generator: (request seed, tokens generated so far).
uint64_t RoundSeed(uint64_t seed, int64_t generated) {
  uint64_t x = seed ^ (static_cast<uint64_t>(generated) * 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

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
  // Speculative decoding: entries in the MTP cache, and the target hiddens of the positions
  // [mtp_cached, cached) not yet in it (pending pairs), row-major.
  int64_t mtp_cached = 0;
  std::vector<float> mtp_hidden;

  int64_t pending() const { return static_cast<int64_t>(tokens.size()) - cached; }
};

struct Scheduler::Round {
  size_t chunk = 0;  // index in the step's batch
  Sequence* seq = nullptr;
  std::mt19937_64 rng;
  DraftJob job;
  bool verifies() const { return job.tree.size() > 1; }
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
  SPARK_ASSIGN_OR_RETURN(SpeculativeOptions speculative,
                         ResolveSpeculativeOptions(options.speculative));
  if (speculative.enabled()) {
    if (!backend->SupportsSpeculation()) {
      return InvalidArgument(
          "speculative decoding needs the model's MTP (nextn) layer, and this backend has none: "
          "load a checkpoint that has one (num_nextn_predict_layers >= 1) with its MTP weights, "
          "or turn speculation off (steps 0)");
    }
    if (options.max_batch_tokens < speculative.draft_tokens) {
      return InvalidArgument("SchedulerOptions.max_batch_tokens (" +
                             std::to_string(options.max_batch_tokens) +
                             ") must be >= the speculative draft_tokens (" +
                             std::to_string(speculative.draft_tokens) + ")");
    }
  }
  std::unique_ptr<Scheduler> s(new Scheduler(backend, options));
  s->speculative_ = speculative;
  // Every running sequence needs one token (a draft tree with speculation) of the step budget.
  const int64_t decode_cost = speculative.enabled() ? speculative.draft_tokens : 1;
  s->options_.max_running = static_cast<int>(
      std::min<int64_t>(options.max_running, options.max_batch_tokens / decode_cost));
  const ModelConfig& config = backend->config();
  s->hidden_size_ = config.hidden_size;
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
  seq->mtp_cached = 0;
  seq->mtp_hidden.clear();
  waiting_.push_front(std::move(seq));
  ++total_preemptions_;
  return true;
}

void Scheduler::BuildBatch(ForwardBatch& batch, std::vector<Sequence*>& owners, bool admit) {
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

  // Decode steps first (one token each, a draft tree's budget with speculation; oldest first),
  // then prompts already being read.
  const int64_t decode_cost = speculative_.enabled() ? speculative_.draft_tokens : 1;
  const int64_t decode_kv = speculative_.enabled() ? decode_cost + speculative_.steps : 1;
  for (auto& seq : running_) {
    if (seq->pending() == 1 && budget >= decode_cost) {
      add_chunk(*seq, 1);
      budget -= decode_cost - 1;
      free_kv -= decode_kv - 1;
    }
  }
  for (auto& seq : running_) {
    if (seq->pending() > 1 && budget > 0) add_chunk(*seq, chunk_limit(seq->pending()));
  }
  // Admit waiting requests while the budget, the running cap and the KV cache allow. A request
  // is admitted only when its whole prompt fits next to one more token per running sequence,
  // unless nothing runs (then it is tried alone; if it cannot fit even then it fails).
  while (admit && !waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < options_.max_running) {
    Sequence& seq = *waiting_.front();
    const int64_t reserve = static_cast<int64_t>(running_.size()) * decode_kv;
    if (!running_.empty() && seq.pending() + reserve > free_kv) break;
    seq.seq_id = next_seq_id_++;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
    add_chunk(seq, chunk_limit(seq.pending()));
  }
}

bool Scheduler::EmitToken(Sequence& seq, SampleResult sample, StepStats& stats) {
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
  return reason != FinishReason::kNone;
}

Status Scheduler::Draft(ForwardBatch& batch, const std::vector<Sequence*>& owners,
                        std::vector<std::unique_ptr<Round>>& rounds) {
  rounds.clear();
  const Clock::time_point start = Clock::now();
  std::vector<DraftJob*> jobs;
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    Sequence& seq = *owners[i];
    batch.chunks[i].return_hidden = true;
    const int64_t pairs = static_cast<int64_t>(seq.mtp_hidden.size()) / hidden_size_;
    if (pairs == 0) continue;
    SPARK_CHECK_EQ(seq.mtp_cached + pairs, seq.cached);
    auto round = std::make_unique<Round>();
    round->chunk = i;
    round->seq = &seq;
    round->rng.seed(RoundSeed(seq.sampler->seed(), seq.generated));
    DraftJob& job = round->job;
    job.seq_id = seq.seq_id;
    job.sampler = seq.sampler.get();
    job.rng = &round->rng;
    job.mtp_start = seq.mtp_cached;
    job.extend_tokens.assign(seq.tokens.begin() + seq.mtp_cached + 1,
                             seq.tokens.begin() + seq.cached + 1);
    job.extend_hidden = seq.mtp_hidden;
    job.root = seq.tokens[static_cast<size_t>(seq.cached)];
    if (seq.pending() == 1) {
      // Tokens this request may still emit; a round emits at most depth + 1.
      int64_t remaining = seq.request.params.max_tokens - seq.generated;
      if (options_.max_model_len > 0) {
        remaining = std::min<int64_t>(
            remaining, options_.max_model_len - static_cast<int64_t>(seq.tokens.size()));
      }
      job.depth = static_cast<int>(std::clamp<int64_t>(remaining - 1, 0, speculative_.steps));
      if (job.depth == 0) continue;  // its last token: decoded plainly, no draft needed
    }
    jobs.push_back(&job);
    rounds.push_back(std::move(round));
  }
  Status status = RunDraft(backend_, speculative_, jobs, options_.max_batch_tokens);
  spec_stats_.draft_ms += MsSince(start);
  if (!status.ok()) return status;
  for (const auto& round : rounds) {
    if (!round->verifies()) continue;
    SequenceChunk& chunk = batch.chunks[round->chunk];
    chunk.tokens = round->job.tree.tokens;
    chunk.tree_parents.clear();
    if (speculative_.topk > 1) chunk.tree_parents = round->job.tree.parents;
    chunk.all_logits = true;
  }
  return Status::Ok();
}

Status Scheduler::RollBackDraft(const std::vector<std::unique_ptr<Round>>& rounds) {
  for (const auto& round : rounds) {
    const Sequence& seq = *round->seq;
    if (seq.seq_id == 0) continue;  // released (preempted or finished)
    if (backend_->CachedTokens(seq.seq_id, CacheKind::kMtp) > seq.mtp_cached) {
      SPARK_RETURN_IF_ERROR(
          backend_->KeepCacheEntries(seq.seq_id, CacheKind::kMtp, seq.mtp_cached, {})
              .WithContext("undoing the draft of a failed step"));
    }
  }
  return Status::Ok();
}

Status Scheduler::Verify(Round& round, const ForwardOutput& output, StepStats& stats,
                         bool* finished) {
  const Clock::time_point start = Clock::now();
  Sequence& seq = *round.seq;
  const DraftTree& tree = round.job.tree;
  const int32_t nodes = tree.size();
  const SamplingParams& params = seq.request.params;
  const bool want_logprobs = params.logprobs || params.top_logprobs > 0;
  const size_t vocab = static_cast<size_t>(output.vocab_size);

  // The target's processed distribution at a node, counting the path's drafts as output.
  std::vector<TokenDistribution> dists(static_cast<size_t>(nodes));
  std::vector<char> have(static_cast<size_t>(nodes), 0);
  auto dist = [&](int32_t node) -> const TokenDistribution& {
    if (!have[node]) {
      std::vector<int32_t> path;
      for (int32_t x = node; x > 0; x = tree.parents[x]) path.push_back(tree.tokens[x]);
      std::reverse(path.begin(), path.end());
      const std::span<const float> row(output.ChunkLogits(round.chunk) + node * vocab, vocab);
      seq.sampler->Distribution(row, path, want_logprobs, &dists[node]);
      have[node] = 1;
    }
    return dists[node];
  };
  VerifyResult result;
  if (params.greedy()) {
    result = VerifyGreedy(tree, [&](int32_t node) { return dist(node).argmax; });
  } else {
    result = VerifySampled(
        tree, [&](int32_t node) { return std::span<const float>(dist(node).probs); }, round.rng);
  }
  ++spec_stats_.verify_steps;
  spec_stats_.drafted_tokens += nodes - 1;
  spec_stats_.accepted_tokens += static_cast<int64_t>(result.path.size());

  // Compact the caches to the accepted path first (the callbacks may not see a half state).
  const int64_t prefix = seq.cached;  // the root's position
  std::vector<int32_t> keep = {0};
  keep.insert(keep.end(), result.path.begin(), result.path.end());
  SPARK_RETURN_IF_ERROR(backend_->KeepCacheEntries(seq.seq_id, CacheKind::kTarget, prefix, keep));
  if (backend_->CachedTokens(seq.seq_id, CacheKind::kMtp) > seq.mtp_cached) {
    SPARK_RETURN_IF_ERROR(
        backend_->KeepCacheEntries(seq.seq_id, CacheKind::kMtp, seq.mtp_cached, {}));
  }
  seq.cached = prefix + static_cast<int64_t>(keep.size());
  const int64_t hidden_first = output.hidden_row_begin[round.chunk];
  for (int32_t node : keep) {
    const float* h = output.hidden.data() + (hidden_first + node) * hidden_size_;
    seq.mtp_hidden.insert(seq.mtp_hidden.end(), h, h + hidden_size_);
  }
  spec_stats_.verify_ms += MsSince(start);

  *finished = false;
  const std::vector<int32_t> emitted = result.Emitted(tree);
  for (size_t j = 0; j < emitted.size() && !*finished; ++j) {
    const int32_t parent = j == 0 ? 0 : result.path[j - 1];
    SampleResult sample;
    sample.token = emitted[j];
    if (want_logprobs) sample = seq.sampler->Describe(dist(parent), emitted[j]);
    ++spec_stats_.emitted_tokens;
    *finished = EmitToken(seq, std::move(sample), stats);
  }
  return Status::Ok();
}

Result<StepStats> Scheduler::Step() {
  DrainInbox();
  StepStats stats;
  ForwardBatch batch;
  std::vector<Sequence*> owners;
  std::vector<std::unique_ptr<Round>> rounds;
  ForwardOutput output;
  const bool speculate = speculative_.enabled();
  double forward_ms = 0;
  bool admit = true;
  while (true) {
    BuildBatch(batch, owners, admit);
    if (batch.chunks.empty()) return stats;
    batch.logits_on_device = !speculate && options_.batch_sampler != nullptr &&
                             options_.batch_sampler->SamplesDeviceRows();
    Status drafted = speculate ? Draft(batch, owners, rounds) : Status::Ok();
    Status failure = drafted;
    if (drafted.ok()) {
      const Clock::time_point start = Clock::now();
      Result<ForwardOutput> result = backend_->Forward(batch);
      forward_ms = MsSince(start);
      if (result.ok()) {
        output = std::move(result).value();
        break;
      }
      failure = result.status();
    }
    if (speculate) SPARK_RETURN_IF_ERROR(RollBackDraft(rounds));
    if (failure.code() != StatusCode::kResourceExhausted) {
      return failure.WithContext("scheduler step");
    }
    if (running_.size() <= 1) {
      // Alone and still out of KV cache: this request can never fit.
      std::unique_ptr<Sequence> seq = std::move(running_.back());
      running_.pop_back();
      const int64_t needed = static_cast<int64_t>(seq->tokens.size());
      Finish(*seq, FinishReason::kError,
             ResourceExhausted(
                 "request " + std::to_string(seq->request.id) + " needs " + std::to_string(needed) +
                 " tokens of KV cache, more than the whole cache holds (" + failure.message() +
                 "); shorten the prompt or max_tokens, or give the backend more "
                 "KV cache memory"));
      ++stats.finished;
      continue;
    }
    PreemptNewest();
    ++stats.preemptions;
    admit = false;
  }

  stats.sequences = static_cast<int>(batch.chunks.size());
  stats.on_device = output.device_logits != nullptr;
  if (options_.on_forward_issued) options_.on_forward_issued();
  if (speculate && (output.hidden_size != hidden_size_ ||
                    output.hidden_row_begin.size() != batch.chunks.size())) {
    return Internal("the backend returned no hidden states for a speculative step (hidden size " +
                    std::to_string(output.hidden_size) + ", " +
                    std::to_string(output.hidden_row_begin.size()) + " chunk offsets for " +
                    std::to_string(batch.chunks.size()) + " chunks)");
  }
  // The draft extends are in the MTP caches now.
  std::vector<Round*> verifying;
  std::vector<Round*> round_of(batch.chunks.size(), nullptr);
  for (const auto& round : rounds) {
    Sequence& seq = *round->seq;
    seq.mtp_cached = round->job.mtp_start + static_cast<int64_t>(round->job.extend_tokens.size());
    seq.mtp_hidden.clear();
    round_of[round->chunk] = round.get();
    if (round->verifies()) verifying.push_back(round.get());
  }
  if (!verifying.empty()) spec_stats_.verify_ms += forward_ms;

  std::vector<size_t> ready;  // chunks whose sequence samples its next token now
  for (size_t i = 0; i < batch.chunks.size(); ++i) {
    Sequence& seq = *owners[i];
    const int64_t n = static_cast<int64_t>(batch.chunks[i].tokens.size());
    if (round_of[i] != nullptr && round_of[i]->verifies()) {
      ++stats.decode_tokens;
      continue;  // accepted below
    }
    if (seq.pending() == 1 && n == 1 && seq.generated > 0 && seq.cached > 0) {
      ++stats.decode_tokens;
    } else {
      stats.prefill_tokens += n;
    }
    if (speculate) {
      const float* h = output.hidden.data() + output.hidden_row_begin[i] * hidden_size_;
      seq.mtp_hidden.insert(seq.mtp_hidden.end(), h, h + n * hidden_size_);
    }
    seq.cached += n;
    if (seq.pending() == 0) ready.push_back(i);  // else a prompt chunk; more to read
  }

  if (stats.on_device && options_.batch_sampler == nullptr) {
    return Internal("the backend returned device logits to a scheduler that samples on the host");
  }
  std::vector<SampleResult> samples;
  if (options_.batch_sampler != nullptr && !ready.empty()) {
    std::vector<BatchSampleRow> rows;
    rows.reserve(ready.size());
    for (size_t i : ready) {
      const Sequence& seq = *owners[i];
      const std::span<const int32_t> all(seq.tokens);
      rows.push_back({output.ChunkLogits(i), stats.on_device, &seq.request.params,
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
      samples.push_back(owners[i]->sampler->Sample(
          {output.ChunkLogits(i), static_cast<size_t>(output.vocab_size)}));
    }
  }

  std::vector<Sequence*> finished;
  for (size_t k = 0; k < ready.size(); ++k) {
    Sequence& seq = *owners[ready[k]];
    if (EmitToken(seq, std::move(samples[k]), stats)) finished.push_back(&seq);
  }
  for (Round* round : verifying) {
    bool done = false;
    SPARK_RETURN_IF_ERROR(Verify(*round, output, stats, &done).WithContext("speculative verify"));
    if (done) finished.push_back(round->seq);
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
