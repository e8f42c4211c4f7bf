// Sampler: turns one row of logits into the next token of one request.
//
// Processing order (vLLM / Hugging Face conventions):
//   1. penalties on the raw logits:
//        repetition_penalty (HF): over every token seen in prompt + output, a positive logit is
//          divided by the penalty, a negative one multiplied;
//        frequency_penalty / presence_penalty (OpenAI): over output tokens only,
//          logit -= frequency_penalty * count + presence_penalty * (count > 0);
//   2. temperature: logits / temperature (temperature == 0 means greedy: argmax, lowest id on
//      ties, no filter and no randomness);
//   3. top-k: keep the k largest (0 = off);
//   4. top-p: keep the smallest set of most probable tokens whose probability (renormalised over
//      what top-k kept) reaches top_p (1 = off; at least one token is always kept);
//   5. min-p: keep tokens whose probability is >= min_p * the largest probability (0 = off);
//   6. sample from the renormalised survivors with the request's RNG.
// Ties in every ordering are broken by the lower token id, so results are deterministic.
//
// Log-probabilities are "processed" in vLLM's sense, up to step 2: the log-softmax over the full
// vocabulary of the logits after penalties and temperature (temperature 1 when greedy), before
// the truncation filters. The sampled token's logprob and the top_logprobs list use it.
//
// RNG: a per-request 64-bit Mersenne Twister seeded from `seed`, so a seeded request gives the
// same tokens on every run and machine; unseeded requests draw a seed from std::random_device.
//
// Thread safety: a Sampler belongs to one request and one thread. SamplingParams is a value.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/status.h"

namespace spark::engine {

struct SamplingParams {
  float temperature = 1.0f;             // 0 = greedy; otherwise > 0
  int top_k = 0;                        // 0 (or -1) = off
  float top_p = 1.0f;                   // (0, 1]; 1 = off
  float min_p = 0.0f;                   // [0, 1]; 0 = off
  float repetition_penalty = 1.0f;      // > 0; 1 = off
  float presence_penalty = 0.0f;        // [-2, 2] typically; 0 = off
  float frequency_penalty = 0.0f;       // [-2, 2] typically; 0 = off
  std::optional<uint64_t> seed;         // unset: random
  std::vector<int32_t> stop_token_ids;  // finish (reason "stop") after emitting one of these
  bool ignore_eos = false;              // do not stop at the model's EOS tokens
  int64_t max_tokens = 16;              // generated tokens at most (>= 1)
  bool logprobs = false;                // report the sampled token's logprob
  int top_logprobs = 0;                 // also report the n most likely tokens (0..kMaxTopLogprobs)

  static constexpr int kMaxTopLogprobs = 20;

  // InvalidArgument naming the field and its allowed range. `vocab_size` <= 0 skips the checks
  // that need it.
  Status Validate(int64_t vocab_size = 0) const;
  bool greedy() const { return temperature == 0.0f; }
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// The distribution of one position as a Sampler processes it (Sampler::Distribution).
struct TokenDistribution {
  int32_t argmax = 0;  // of the processed logits, lowest id on ties (the greedy token)
  // Sampling: the probabilities Sample() draws from (the survivors of top-k/top-p/min-p,
  // renormalised; 0 elsewhere), vocab_size entries. Greedy: empty (the argmax is certain).
  std::vector<float> probs;
  // When asked for: the processed logits (after penalties and temperature; temperature 1 when
  // greedy) and their log-sum-exp, from which logprobs and draft scores derive.
  std::vector<float> logits;
  double lse = 0;
};

struct SampleResult {
  int32_t token = 0;
  float logprob = 0.0f;                    // processed logprob of `token` (see above)
  std::vector<TokenLogprob> top_logprobs;  // params.top_logprobs entries, most likely first
};

class Sampler {
 public:
  // `prompt` feeds the repetition penalty. params must be valid (Validate()).
  Sampler(const SamplingParams& params, std::span<const int32_t> prompt);

  // Samples the next token from `logits` (vocab_size floats). Does not record it: call Accept()
  // with the token that is actually emitted.
  SampleResult Sample(std::span<const float> logits);

  // Records an emitted output token (frequency/presence counts, repetition set).
  void Accept(int32_t token);

  // The distribution Sample() would draw from at a position that follows the accepted output
  // and then `pending` (output tokens not Accept()ed yet, e.g. a speculative draft path; the
  // penalties count them as output). `keep_logits` also keeps the processed logits. The result
  // equals what Sample() uses after Accept() of every pending token, bit for bit. Uses no
  // random numbers.
  void Distribution(std::span<const float> logits, std::span<const int32_t> pending,
                    bool keep_logits, TokenDistribution* out);
  // `token` with the logprob and top_logprobs Sample() would report for it under `dist` (whose
  // logits must have been kept when params().logprobs or top_logprobs is set).
  SampleResult Describe(const TokenDistribution& dist, int32_t token) const;

  const SamplingParams& params() const { return params_; }
  uint64_t seed() const { return seed_; }

 private:
  double NextUniform();  // [0, 1)
  struct Processed {
    int32_t argmax = 0;
    float max_logit = 0;
    double lse = 0;
  };
  // Steps 1-2 (penalties with `pending` counted as output, temperature) into scratch_.
  Processed Process(std::span<const float> logits, std::span<const int32_t> pending);
  // Steps 3-5 over scratch_: the survivors into candidates_ (most likely first when an ordering
  // was needed). Not for greedy.
  void Filter(const Processed& p);

  SamplingParams params_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  std::unordered_set<int32_t> seen_;                // prompt + output (repetition penalty)
  std::unordered_map<int32_t, int> output_counts_;  // output only (frequency / presence)
  std::vector<float> scratch_;                      // processed logits
  std::vector<int32_t> candidates_;
};

}  // namespace spark::engine
