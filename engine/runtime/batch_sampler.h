// BatchSampler: samples the next token of several sequences of one step at once, from rows of
// full-vocabulary logits. The Scheduler (engine/runtime/scheduler.h) uses one when its options
// name it (the CUDA backend's GPU sampler, engine/cuda/gpu_sampler.h); otherwise it samples row
// by row on the CPU with each request's Sampler (engine/runtime/sampler.h), the reference.
//
// An implementation keeps the Sampler's semantics (penalties, temperature, top-k, top-p, min-p,
// logprobs); its random numbers may come from another generator, keyed by (seed, draw) so that a
// seeded request is reproducible with that implementation.
//
// Thread safety: one thread (the engine loop). Ownership: rows borrow the caller's memory.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/runtime/sampler.h"

namespace spark::engine {

struct BatchSampleRow {
  // vocab_size floats: host memory, or the backend's device memory (ForwardOutput::
  // device_logits, writable) when `on_device`, which only a sampler whose SamplesDeviceRows()
  // is true receives.
  const float* logits = nullptr;
  bool on_device = false;
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt;  // feeds the repetition penalty
  std::span<const int32_t> output;  // tokens emitted so far
  uint64_t seed = 0;                // the request's seed (Sampler::seed())
  uint64_t draw = 0;                // tokens the request sampled before this one
};

class BatchSampler {
 public:
  virtual ~BatchSampler() = default;
  // One result per row, in order.
  virtual Result<std::vector<SampleResult>> SampleBatch(int64_t vocab_size,
                                                        std::span<const BatchSampleRow> rows) = 0;
  // True when rows may point into the backend's device memory (the Scheduler then asks the
  // backend for device logits, ForwardBatch::logits_on_device, and skips the host copy).
  virtual bool SamplesDeviceRows() const { return false; }
};

}  // namespace spark::engine
