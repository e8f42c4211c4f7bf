// GPU sampling kernel: one row of logits -> the next token, with the semantics of the CPU
// Sampler (engine/runtime/sampler.h, the reference): penalties (repetition over prompt + output,
// frequency / presence over output), temperature (0 = greedy: argmax, lowest id on ties), top-k,
// top-p, min-p, then a draw from the renormalised survivors; the processed logprob of the token
// and the top_logprobs list (log-softmax after penalties and temperature, before truncation).
//
// Differences from the CPU sampler, by design:
//   - randomness: Philox4x32-10 keyed by the row's seed, at counter offset 4 * draw (one draw per
//     sampled token), instead of the CPU's Mersenne Twister; seeded rows are reproducible on
//     every GPU run, and the distribution is the same as the CPU's;
//   - at exactly equal logits on the top-p boundary every tied token is kept (the CPU keeps them
//     in id order until the mass is reached); top-k ties are broken by the lower id, as on the CPU;
//   - among the survivors the draw walks token ids in increasing order (the CPU walks them most
//     likely first); both draw each survivor with its renormalised probability.
//
// Thread safety: stream-ordered; callers own every buffer. Raw device pointers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace spark::cuda {

constexpr int kMaxSampleTopLogprobs = 20;

// One row's parameters (plain data, copied to the device by the caller).
struct SampleRowParams {
  float temperature = 1.0f;  // 0 = greedy
  int32_t top_k = 0;         // <= 0 or >= vocab: off
  float top_p = 1.0f;        // 1 = off
  float min_p = 0.0f;        // 0 = off
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  int32_t top_logprobs = 0;  // 0..kMaxSampleTopLogprobs
  uint64_t seed = 0;
  uint64_t draw = 0;      // how many tokens this request sampled before (Philox offset)
  int32_t rep_begin = 0;  // [rep_begin, rep_end) in rep_tokens: distinct prompt + output ids
  int32_t rep_end = 0;
  int32_t out_begin = 0;  // [out_begin, out_end) in out_tokens / out_counts: distinct
  int32_t out_end = 0;    // output ids with how often each was emitted
};

struct SampleRowResult {
  int32_t token = 0;
  float logprob = 0.0f;
  int32_t top_tokens[kMaxSampleTopLogprobs] = {};
  float top_logprobs[kMaxSampleTopLogprobs] = {};
};

// Samples `rows` rows of `logits` ([rows, vocab] fp32, processed in place: after the call they
// hold the penalised, temperature-scaled logits). `params` and `results` have `rows` entries.
cudaError_t SampleRows(float* logits, int64_t rows, int64_t vocab, const SampleRowParams* params,
                       const int32_t* rep_tokens, const int32_t* out_tokens,
                       const int32_t* out_counts, SampleRowResult* results, cudaStream_t stream);

// Plain greedy rows (GreedyFastPathServes: temperature 0, no penalties, no top logprobs) over
// kGreedyBlocksPerRow blocks per row instead of one: the same token (the largest logit, the lowest
// id on ties) and logprob (log-sum-exp in double, per block and merged) as SampleRows, the logits
// untouched (SampleRows would not change them either). `partials`: GreedyPartialBytes(rows) bytes
// of device memory. A decode step's single row no longer waits on one multiprocessor.
constexpr int kGreedyBlocksPerRow = 32;
bool GreedyFastPathServes(const SampleRowParams& params);
int64_t GreedyPartialBytes(int64_t rows);
cudaError_t SampleGreedyRows(const float* logits, int64_t rows, int64_t vocab, void* partials,
                             SampleRowResult* results, cudaStream_t stream);

}  // namespace spark::cuda
