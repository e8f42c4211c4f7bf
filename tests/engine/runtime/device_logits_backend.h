// Test helpers for device-resident logits (ForwardBatch::logits_on_device):
//   * ReplayingBatchSampler: a BatchSampler with the CPU Sampler's decisions (each row replays its
//     request's history into a fresh Sampler); records what it is handed;
//   * DeviceLogitsBackend: wraps a Backend and, when asked for device logits, keeps the rows in
//     its own buffer (standing in for device memory) and returns them as device_logits;
//   * DeviceRowsSampler: a ReplayingBatchSampler that takes device rows and counts rows that did
//     not come from the backend's buffer.
//
// Thread safety: one thread, like any Backend. Ownership: borrows the wrapped backend.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "engine/runtime/backend.h"
#include "engine/runtime/batch_sampler.h"
#include "engine/runtime/sampler.h"

namespace spark::engine::testing {

// A BatchSampler with the CPU Sampler's decisions: each row replays its request's history into a
// fresh Sampler. It records what the scheduler hands it.
class ReplayingBatchSampler final : public BatchSampler {
 public:
  Result<std::vector<SampleResult>> SampleBatch(int64_t vocab,
                                                std::span<const BatchSampleRow> rows) override {
    ++calls;
    std::vector<SampleResult> out;
    for (const BatchSampleRow& r : rows) {
      seen.push_back({std::vector<int32_t>(r.prompt.begin(), r.prompt.end()),
                      std::vector<int32_t>(r.output.begin(), r.output.end()), r.draw});
      SamplingParams p = *r.params;
      p.seed = r.seed;
      Sampler s(p, r.prompt);
      for (int32_t t : r.output) s.Accept(t);
      out.push_back(s.Sample({r.logits, static_cast<size_t>(vocab)}));
    }
    return out;
  }
  struct Row {
    std::vector<int32_t> prompt;
    std::vector<int32_t> output;
    uint64_t draw;
  };
  std::vector<Row> seen;
  int calls = 0;
};

// A backend that keeps the logits "on its device" when asked (ForwardBatch::logits_on_device):
// rows in its own buffer, returned as device_logits with the host logits left empty.
class DeviceLogitsBackend final : public Backend {
 public:
  explicit DeviceLogitsBackend(Backend* inner) : inner_(inner) {}
  const ModelConfig& config() const override { return inner_->config(); }
  Result<ForwardOutput> Forward(const ForwardBatch& batch) override {
    asked.push_back(batch.logits_on_device);
    SPARK_ASSIGN_OR_RETURN(ForwardOutput out, inner_->Forward(batch));
    if (batch.logits_on_device || always) {
      device = std::move(out.logits);
      out.logits.clear();
      out.device_logits = device.data();
    }
    return out;
  }
  void Release(uint64_t seq_id) override { inner_->Release(seq_id); }
  int64_t FreeKvTokens() const override { return inner_->FreeKvTokens(); }

  std::vector<bool> asked;
  std::vector<float> device;
  bool always = false;  // return device logits even when not asked

 private:
  Backend* inner_;
};

// ReplayingBatchSampler's decisions for rows that must come from the backend's device buffer.
class DeviceRowsSampler final : public BatchSampler {
 public:
  explicit DeviceRowsSampler(const DeviceLogitsBackend* backend) : backend_(backend) {}
  Result<std::vector<SampleResult>> SampleBatch(int64_t vocab,
                                                std::span<const BatchSampleRow> rows) override {
    forwards_at_sample.push_back(static_cast<int>(backend_->asked.size()));
    if (hooks != nullptr) hooks_at_sample.push_back(*hooks);
    for (const BatchSampleRow& r : rows) {
      const float* begin = backend_->device.data();
      const float* end = begin + backend_->device.size();
      if (!r.on_device || r.logits < begin || r.logits + vocab > end) {
        ++host_rows;
      }
    }
    return replay.SampleBatch(vocab, rows);
  }
  bool SamplesDeviceRows() const override { return true; }

  ReplayingBatchSampler replay;
  int host_rows = 0;
  // Per call: the backend's forward passes so far, and *hooks (a counter the test keeps) then.
  const int* hooks = nullptr;
  std::vector<int> forwards_at_sample;
  std::vector<int> hooks_at_sample;

 private:
  const DeviceLogitsBackend* backend_;
};

}  // namespace spark::engine::testing
