#include "engine/cuda/gpu_sampler.h"

#include <algorithm>
#include <string>
#include <unordered_map>

#include "engine/cuda/cuda_check.h"

namespace spark::cuda {

Result<std::unique_ptr<GpuSampler>> GpuSampler::Create(int64_t vocab_size, int64_t max_rows,
                                                       cudaStream_t stream) {
  if (vocab_size <= 0 || max_rows <= 0) {
    return InvalidArgument("GpuSampler needs vocab_size > 0 and max_rows > 0, got " +
                           std::to_string(vocab_size) + " and " + std::to_string(max_rows));
  }
  std::unique_ptr<GpuSampler> s(new GpuSampler(vocab_size, max_rows, stream));
  const auto rows = static_cast<size_t>(max_rows);
  SPARK_CUDA_RETURN_IF_ERROR(
      cudaMalloc(&s->d_logits_, rows * static_cast<size_t>(vocab_size) * sizeof(float)));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&s->d_params_, rows * sizeof(SampleRowParams)));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&s->d_results_, rows * sizeof(SampleRowResult)));
  SPARK_CUDA_RETURN_IF_ERROR(
      cudaMalloc(&s->d_greedy_, static_cast<size_t>(GreedyPartialBytes(max_rows))));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMallocHost(&s->h_results_, rows * sizeof(SampleRowResult)));
  SPARK_RETURN_IF_ERROR(s->Reserve(4096));
  return s;
}

GpuSampler::~GpuSampler() {
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  cudaFree(d_logits_);
  cudaFree(d_params_);
  cudaFree(d_results_);
  cudaFree(d_greedy_);
  cudaFreeHost(h_results_);
  cudaFree(d_tokens_);
}

Status GpuSampler::Reserve(size_t tokens) {
  if (tokens <= token_capacity_) return Status::Ok();
  const size_t capacity = std::max(tokens, token_capacity_ * 2);
  if (d_tokens_ != nullptr) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    SPARK_CUDA_RETURN_IF_ERROR(cudaFree(d_tokens_));
    d_tokens_ = nullptr;
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&d_tokens_, capacity * sizeof(int32_t)));
  token_capacity_ = capacity;
  return Status::Ok();
}

Result<std::vector<engine::SampleResult>> GpuSampler::SampleHost(
    const float* logits, std::span<const GpuSampleRequest> rows) {
  if (static_cast<int64_t>(rows.size()) > max_rows_) {
    return InvalidArgument("GpuSampler: " + std::to_string(rows.size()) + " rows exceed max_rows " +
                           std::to_string(max_rows_));
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_logits_, logits,
                                             rows.size() * static_cast<size_t>(vocab_) * 4,
                                             cudaMemcpyHostToDevice, stream_));
  return Sample(d_logits_, rows);
}

Result<std::vector<engine::SampleResult>> GpuSampler::SampleBatch(
    int64_t vocab_size, std::span<const engine::BatchSampleRow> rows) {
  if (vocab_size != vocab_) {
    return InvalidArgument("GpuSampler made for a vocabulary of " + std::to_string(vocab_) +
                           " got rows of " + std::to_string(vocab_size));
  }
  std::vector<engine::SampleResult> all;
  all.reserve(rows.size());
  std::vector<GpuSampleRequest> reqs;
  const size_t row_floats = static_cast<size_t>(vocab_);
  for (size_t begin = 0; begin < rows.size(); begin += static_cast<size_t>(max_rows_)) {
    const size_t end = std::min(rows.size(), begin + static_cast<size_t>(max_rows_));
    reqs.clear();
    // Device rows that follow each other in memory (a decode batch) are sampled in place.
    bool in_place = true;
    for (size_t r = begin; r < end; ++r) {
      in_place = in_place && rows[r].on_device &&
                 rows[r].logits == rows[begin].logits + (r - begin) * row_floats;
    }
    for (size_t r = begin; r < end; ++r) {
      const engine::BatchSampleRow& row = rows[r];
      if (!in_place) {
        SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(
            d_logits_ + (r - begin) * row_floats, row.logits, row_floats * sizeof(float),
            row.on_device ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice, stream_));
      }
      reqs.push_back({row.params, row.prompt, row.output, row.seed, row.draw});
    }
    float* logits = in_place ? const_cast<float*>(rows[begin].logits) : d_logits_;
    SPARK_ASSIGN_OR_RETURN(std::vector<engine::SampleResult> part, Sample(logits, reqs));
    for (engine::SampleResult& s : part) all.push_back(std::move(s));
  }
  return all;
}

Result<std::vector<engine::SampleResult>> GpuSampler::Sample(
    float* logits, std::span<const GpuSampleRequest> rows) {
  const size_t n = rows.size();
  if (static_cast<int64_t>(n) > max_rows_) {
    return InvalidArgument("GpuSampler: " + std::to_string(n) + " rows exceed max_rows " +
                           std::to_string(max_rows_));
  }
  if (n == 0) return std::vector<engine::SampleResult>{};
  params_.assign(n, SampleRowParams{});
  // Per row: distinct prompt + output ids, then (distinct output id, count) pairs.
  std::vector<int32_t> rep;
  std::vector<int32_t> out_ids;
  std::vector<int32_t> out_counts;
  for (size_t r = 0; r < n; ++r) {
    const GpuSampleRequest& req = rows[r];
    if (req.params == nullptr) return InvalidArgument("GpuSampler: row without parameters");
    const engine::SamplingParams& sp = *req.params;
    SPARK_RETURN_IF_ERROR(sp.Validate(vocab_));
    SampleRowParams& p = params_[r];
    p.temperature = sp.temperature;
    p.top_k = sp.top_k;
    p.top_p = sp.top_p;
    p.min_p = sp.min_p;
    p.repetition_penalty = sp.repetition_penalty;
    p.presence_penalty = sp.presence_penalty;
    p.frequency_penalty = sp.frequency_penalty;
    p.top_logprobs = sp.top_logprobs;
    p.seed = req.seed;
    p.draw = req.draw;
    p.rep_begin = static_cast<int32_t>(rep.size());
    if (sp.repetition_penalty != 1.0f) {
      const size_t from = rep.size();
      rep.insert(rep.end(), req.prompt.begin(), req.prompt.end());
      rep.insert(rep.end(), req.output.begin(), req.output.end());
      std::sort(rep.begin() + static_cast<std::ptrdiff_t>(from), rep.end());
      rep.erase(std::unique(rep.begin() + static_cast<std::ptrdiff_t>(from), rep.end()), rep.end());
    }
    p.rep_end = static_cast<int32_t>(rep.size());
    p.out_begin = static_cast<int32_t>(out_ids.size());
    if (sp.frequency_penalty != 0.0f || sp.presence_penalty != 0.0f) {
      std::unordered_map<int32_t, int32_t> counts;
      for (int32_t t : req.output) ++counts[t];
      for (const auto& [t, c] : counts) {
        out_ids.push_back(t);
        out_counts.push_back(c);
      }
    }
    p.out_end = static_cast<int32_t>(out_ids.size());
  }
  // Plain greedy rows only (a decode batch of greedy requests): argmax and logprob over many
  // blocks per row, no uploads.
  const bool plain_greedy =
      n <= 65535 && std::all_of(params_.begin(), params_.end(), GreedyFastPathServes);
  if (plain_greedy) {
    SPARK_CUDA_RETURN_IF_ERROR(
        SampleGreedyRows(logits, static_cast<int64_t>(n), vocab_, d_greedy_, d_results_, stream_));
    return Collect(rows);
  }
  // One upload: rep ids, output ids, output counts.
  tokens_.clear();
  tokens_.insert(tokens_.end(), rep.begin(), rep.end());
  tokens_.insert(tokens_.end(), out_ids.begin(), out_ids.end());
  tokens_.insert(tokens_.end(), out_counts.begin(), out_counts.end());
  SPARK_RETURN_IF_ERROR(Reserve(std::max<size_t>(tokens_.size(), 1)));
  if (!tokens_.empty()) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_tokens_, tokens_.data(),
                                               tokens_.size() * sizeof(int32_t),
                                               cudaMemcpyHostToDevice, stream_));
  }
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(d_params_, params_.data(), n * sizeof(SampleRowParams),
                                             cudaMemcpyHostToDevice, stream_));
  const int32_t* d_rep = d_tokens_;
  const int32_t* d_out = d_tokens_ + rep.size();
  const int32_t* d_cnt = d_out + out_ids.size();
  SPARK_CUDA_RETURN_IF_ERROR(SampleRows(logits, static_cast<int64_t>(n), vocab_, d_params_, d_rep,
                                        d_out, d_cnt, d_results_, stream_));
  return Collect(rows);
}

Result<std::vector<engine::SampleResult>> GpuSampler::Collect(
    std::span<const GpuSampleRequest> rows) {
  const size_t n = rows.size();
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(h_results_, d_results_, n * sizeof(SampleRowResult),
                                             cudaMemcpyDeviceToHost, stream_));
  SPARK_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));

  std::vector<engine::SampleResult> results(n);
  for (size_t r = 0; r < n; ++r) {
    const SampleRowResult& h = h_results_[r];
    results[r].token = h.token;
    results[r].logprob = h.logprob;
    const int k = std::min<int>(rows[r].params->top_logprobs, kMaxSampleTopLogprobs);
    for (int i = 0; i < std::min<int64_t>(k, vocab_); ++i) {
      results[r].top_logprobs.push_back({h.top_tokens[i], h.top_logprobs[i]});
    }
  }
  return results;
}

}  // namespace spark::cuda
