// Scheduler: continuous batching of generation requests over one Backend.
//
// Each Step() builds one ForwardBatch that mixes decode steps of running sequences (one token
// each, oldest first) with prefill chunks (chunked prefill) of sequences still reading their
// prompt, then of newly admitted waiting requests (FIFO), under a per-step token budget and a
// cap on running sequences. It runs Backend::Forward, samples one token for every sequence whose
// pending tokens were all consumed, emits a TokenOutput per sampled token through the request's
// callback, and releases finished sequences.
//
// KV cache pressure: new requests are admitted only while Backend::FreeKvTokens() leaves room.
// When Forward still returns ResourceExhausted, the newest running sequence is preempted
// (released, requeued at the head of the waiting queue with prompt + generated tokens as its new
// prompt, i.e. recomputed) and the batch is rebuilt; requests are never dropped. Its sampler (RNG
// and penalty state) survives, so a preempted request produces the same tokens as without
// preemption. A request that cannot fit into the whole cache even alone finishes with
// FinishReason::kError (ResourceExhausted).
//
// Speculative decoding (options.speculative.steps > 0; the backend must SupportsSpeculation()):
// every decoding sequence runs one round per step (engine/runtime/speculative.h): the MTP layer
// drafts a chain or tree after the last token, the target verifies it as one tree chunk of the
// step's Forward (prefill chunks ride along), and the accepted tokens plus one bonus token are
// emitted in order, each through the callback as usual; a stop token, max_tokens or
// max_model_len inside the run ends it there (drafts never go past the limits). Greedy output
// equals greedy output without speculation; sampled output has the target's distribution.
// Prefill chunks return the target's hidden states, which feed the MTP layer's own cache
// ("draft extend") at the sequence's next step. Logprobs are the target's. Rows verified by a
// round are sampled on the CPU with the request's Sampler processing, even with a BatchSampler
// (which still samples rows without drafts, e.g. the first token after the prompt). Preemption
// releases both caches and recomputes both.
//
// Finish reasons: kStop (a stop_token_ids token, or a model EOS token unless ignore_eos; the stop
// token is the last emitted token), kLength (max_tokens generated, or the sequence reached
// max_model_len), kCancelled (Cancel()), kError (this request only; the message says why).
//
// Thread safety: AddRequest(), Cancel() and HasWork() may be called from any thread; they post to
// an inbox that Step() drains. Step() and the accessors belong to one thread (the engine loop);
// callbacks run on that thread, inside Step(), and must not call Step().
// Ownership: the Backend is borrowed and must outlive the scheduler.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "common/status.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/batch_sampler.h"
#include "engine/runtime/sampler.h"
#include "engine/runtime/speculative.h"

namespace spark::engine {

enum class FinishReason { kNone, kStop, kLength, kCancelled, kError };

// "stop", "length", "cancelled", "error" ("" for kNone): the OpenAI finish_reason spelling.
std::string_view FinishReasonName(FinishReason reason);

struct TokenOutput {
  uint64_t request_id = 0;
  // The generated token; -1 for events without a token (kCancelled, kError).
  int32_t token = -1;
  float logprob = 0.0f;                    // when params.logprobs (or top_logprobs > 0)
  std::vector<TokenLogprob> top_logprobs;  // params.top_logprobs entries
  FinishReason finish = FinishReason::kNone;
  Status error;               // set when finish == kError
  int64_t prompt_tokens = 0;  // the original prompt length
  int64_t output_tokens = 0;  // tokens generated so far, this one included
};

using OutputCallback = std::function<void(const TokenOutput&)>;

struct Request {
  uint64_t id = 0;  // unique among live requests
  std::vector<int32_t> prompt;
  SamplingParams params;
  OutputCallback on_output;  // called on the Step() thread for every event of this request
};

struct SchedulerOptions {
  // Tokens (prefill chunk tokens + one per decode step) one Forward may carry.
  int64_t max_batch_tokens = 2048;
  // Sequences admitted at once (running = prefilling or decoding); capped at max_batch_tokens.
  int max_running = 64;
  // Largest prefill chunk of one sequence per step; 0 = limited by the budget only.
  int64_t max_prefill_chunk_tokens = 0;
  // Total sequence length limit (prompt + output); 0 = the backend config's
  // max_position_embeddings (no limit when that is 0 too).
  int64_t max_model_len = 0;
  // EOS tokens that end a request (unless ignore_eos); nullopt = the backend config's.
  std::optional<std::vector<int32_t>> eos_token_ids;
  // Samples every finished-prompt row of a step at once (e.g. on the GPU); nullptr = each
  // request's CPU Sampler. Borrowed; must outlive the scheduler.
  BatchSampler* batch_sampler = nullptr;
  // Speculative decoding with the backend's MTP layer; steps 0 = off. Needs max_batch_tokens >=
  // draft_tokens (every decoding sequence takes draft_tokens of a step's budget).
  SpeculativeOptions speculative;
  // Called inside Step() once the backend has taken the step's forward pass, before its tokens
  // are sampled. When the logits stay on the device (StepStats::on_device) the device is still
  // computing the step then, so host work placed here (delivering the previous step's tokens)
  // overlaps it. Runs on the Step() thread; must not call Step(). Null = nothing.
  std::function<void()> on_forward_issued;
};

struct StepStats {
  int64_t prefill_tokens = 0;  // prompt tokens computed in this step (recomputes included)
  int64_t decode_tokens = 0;   // decode steps in this step (a speculative round counts once)
  int sequences = 0;           // chunks in the batch
  int sampled = 0;             // tokens emitted (all tokens of accepted speculative runs)
  int preemptions = 0;         // sequences preempted during this step
  int finished = 0;            // requests finished (any reason) during this step
  // The step's logits stayed in device memory (ForwardOutput::device_logits): its forward pass
  // ran asynchronously until the sampler read the tokens.
  bool on_device = false;
};

class Scheduler {
 public:
  // Options are validated by Create (InvalidArgument naming the field; also when speculation is
  // asked for and the backend does not support it).
  static Result<std::unique_ptr<Scheduler>> Create(Backend* backend,
                                                   const SchedulerOptions& options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues a request. InvalidArgument: empty prompt, a token outside the vocabulary, bad
  // SamplingParams, prompt not shorter than max_model_len, missing callback; AlreadyExists: a
  // live request has this id.
  Status AddRequest(Request request);
  // Cancels a live request: it ends with one kCancelled event during the next Step(). Unknown or
  // finished ids are ignored.
  void Cancel(uint64_t request_id);
  // True while any request is queued, running, or a cancellation is pending.
  bool HasWork() const;

  // Schedules and runs one batch. An error means the backend failed (not a single request): the
  // engine is broken and should stop. A step with nothing to do returns zero stats.
  Result<StepStats> Step();

  int num_running() const { return static_cast<int>(running_.size()); }
  int num_waiting() const { return static_cast<int>(waiting_.size()); }
  int64_t total_preemptions() const { return total_preemptions_; }
  // Totals since creation (all zero without speculation).
  const SpeculativeStats& speculative_stats() const { return spec_stats_; }

 private:
  struct Sequence;

  Scheduler(Backend* backend, const SchedulerOptions& options);
  void DrainInbox();
  void Finish(Sequence& seq, FinishReason reason, Status error = Status::Ok());
  // Builds the next batch into `batch`, recording which sequence each chunk belongs to; admits
  // waiting requests only when `admit` (not after a preemption in the same step, so a request
  // that does not fit is not admitted and preempted over and over).
  void BuildBatch(ForwardBatch& batch, std::vector<Sequence*>& owners, bool admit);
  // Preempts the newest running sequence; false when there is none to preempt.
  bool PreemptNewest();
  // Emits one token of `seq` (callback, counters); true when it finished the request.
  bool EmitToken(Sequence& seq, SampleResult sample, StepStats& stats);

  // Speculative decoding (see speculative.h).
  struct Round;
  // Drafts for every chunk of `batch` whose sequence has pending MTP pairs and fills the
  // verification chunks into `batch`.
  Status Draft(ForwardBatch& batch, const std::vector<Sequence*>& owners,
               std::vector<std::unique_ptr<Round>>& rounds);
  // Undoes the MTP cache entries of a failed step.
  Status RollBackDraft(const std::vector<std::unique_ptr<Round>>& rounds);
  // Accepts a verified tree, emits its tokens and compacts the caches; *finished when the
  // request ended.
  Status Verify(Round& round, const ForwardOutput& output, StepStats& stats, bool* finished);

  Backend* backend_;
  SchedulerOptions options_;
  int64_t vocab_size_ = 0;
  std::vector<int32_t> eos_;

  mutable std::mutex inbox_mu_;
  std::vector<Request> inbox_requests_;    // guarded by inbox_mu_
  std::vector<uint64_t> inbox_cancels_;    // guarded by inbox_mu_
  std::unordered_set<uint64_t> live_ids_;  // guarded by inbox_mu_
  int64_t live_count_ = 0;                 // guarded by inbox_mu_

  std::vector<std::unique_ptr<Sequence>> running_;  // admission order (oldest first)
  std::deque<std::unique_ptr<Sequence>> waiting_;   // FIFO; preempted ones at the front
  uint64_t next_seq_id_ = 1;
  int64_t total_preemptions_ = 0;

  SpeculativeOptions speculative_;  // resolved
  SpeculativeStats spec_stats_;
  int64_t hidden_size_ = 0;
};

}  // namespace spark::engine
