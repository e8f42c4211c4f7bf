// GpuSampler: samples a batch of requests' next tokens on the GPU (engine/cuda/sampling.h), from
// logits already in device memory (or copied there), with the CPU Sampler's semantics
// (engine/runtime/sampler.h) and Philox randomness keyed by (seed, draw).
//
// The caller keeps each request's state: its parameters, prompt, emitted tokens, seed and how
// many tokens it has sampled; GpuSampler turns them into the kernel's penalty lists. As an
// engine::BatchSampler it serves the Scheduler (SchedulerOptions::batch_sampler) from host rows
// or from the backend's device logits (ForwardOutput::device_logits); for device rows its stream
// must be the backend's (or ordered after it).
//
// Thread safety: one thread (the engine loop). Ownership: owns its device and pinned host
// buffers; borrows the stream.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/cuda/sampling.h"
#include "engine/runtime/batch_sampler.h"
#include "engine/runtime/sampler.h"

namespace spark::cuda {

struct GpuSampleRequest {
  const engine::SamplingParams* params = nullptr;  // must be valid (Validate())
  std::span<const int32_t> prompt;                 // feeds the repetition penalty
  std::span<const int32_t> output;                 // tokens emitted so far
  uint64_t seed = 0;
  uint64_t draw = 0;  // tokens this request sampled before
};

class GpuSampler final : public engine::BatchSampler {
 public:
  // `max_rows` rows of `vocab_size` logits per call at most.
  static Result<std::unique_ptr<GpuSampler>> Create(int64_t vocab_size, int64_t max_rows,
                                                    cudaStream_t stream);
  ~GpuSampler() override;
  GpuSampler(const GpuSampler&) = delete;
  GpuSampler& operator=(const GpuSampler&) = delete;

  // `logits`: device memory [rows.size(), vocab_size], overwritten with the processed logits.
  // InvalidArgument for more rows than max_rows or bad parameters.
  Result<std::vector<engine::SampleResult>> Sample(float* logits,
                                                   std::span<const GpuSampleRequest> rows);
  // Same for host logits (copied to the sampler's own device buffer first).
  Result<std::vector<engine::SampleResult>> SampleHost(const float* logits,
                                                       std::span<const GpuSampleRequest> rows);

  // engine::BatchSampler: host rows, or device rows of the stream's device (sampled in place,
  // and overwritten, when they follow each other in memory), max_rows at a time.
  Result<std::vector<engine::SampleResult>> SampleBatch(
      int64_t vocab_size, std::span<const engine::BatchSampleRow> rows) override;
  bool SamplesDeviceRows() const override { return true; }

  int64_t vocab_size() const { return vocab_; }
  int64_t max_rows() const { return max_rows_; }

 private:
  GpuSampler(int64_t vocab, int64_t max_rows, cudaStream_t stream)
      : vocab_(vocab), max_rows_(max_rows), stream_(stream) {}
  Status Reserve(size_t tokens);
  // The results of the rows just sampled into d_results_, copied back (stream synchronised).
  Result<std::vector<engine::SampleResult>> Collect(std::span<const GpuSampleRequest> rows);

  int64_t vocab_;
  int64_t max_rows_;
  cudaStream_t stream_;
  float* d_logits_ = nullptr;  // for SampleHost
  SampleRowParams* d_params_ = nullptr;
  SampleRowResult* d_results_ = nullptr;
  SampleRowResult* h_results_ = nullptr;  // pinned
  void* d_greedy_ = nullptr;              // SampleGreedyRows partials for max_rows rows
  int32_t* d_tokens_ = nullptr;           // rep ids, then output ids, then output counts
  size_t token_capacity_ = 0;
  std::vector<SampleRowParams> params_;
  std::vector<int32_t> tokens_;
};

}  // namespace spark::cuda
