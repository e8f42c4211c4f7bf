// FakeBackend: a deterministic toy Backend for scheduler and driver tests.
//
// The "model" gives every position logits that depend only on the whole token prefix up to that
// position (a rolling hash), so results are independent of batching, chunking and recompute, and
// a wrong position or token in the cache changes them. The KV cache is paged (block_tokens per
// block, capacity_tokens in all) and enforces the Backend contract: start_pos must equal the
// cached length, a sequence may appear once per batch, and a batch that does not fit returns
// ResourceExhausted without modifying anything. Every successful batch is recorded.
//
// Thread safety: single owner thread, like any Backend.
#pragma once

#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/runtime/backend.h"

namespace spark::engine::testing {

class FakeBackend final : public Backend {
 public:
  FakeBackend(int64_t vocab, int64_t capacity_tokens, int64_t block_tokens = 4)
      : capacity_blocks_(capacity_tokens / block_tokens), block_tokens_(block_tokens) {
    config_.vocab_size = vocab;
    config_.architecture_name = "FakeForCausalLM";
  }

  ModelConfig& mutable_config() { return config_; }
  const ModelConfig& config() const override { return config_; }

  // Logits of the next token after `prefix`.
  static void LogitsAfter(const std::vector<int32_t>& prefix, int64_t vocab, float* out) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t t : prefix) h = (h ^ static_cast<uint64_t>(t + 1)) * 1099511628211ull;
    for (int64_t v = 0; v < vocab; ++v) {
      uint64_t x = (h + static_cast<uint64_t>(v) * 0x9E3779B97F4A7C15ull) * 0xBF58476D1CE4E5B9ull;
      x ^= x >> 29;
      out[v] = static_cast<float>(x % 100000) / 10000.0f;  // [0, 10)
    }
  }

  Result<ForwardOutput> Forward(const ForwardBatch& batch) override {
    std::set<uint64_t> seen;
    int64_t new_blocks = 0;
    for (const SequenceChunk& c : batch.chunks) {
      if (c.tokens.empty()) return InvalidArgument("empty chunk");
      if (!seen.insert(c.seq_id).second) return InvalidArgument("sequence twice in a batch");
      const int64_t cached = Cached(c.seq_id);
      if (c.start_pos != cached) {
        return InvalidArgument("seq " + std::to_string(c.seq_id) + ": start_pos " +
                               std::to_string(c.start_pos) + " != cached " +
                               std::to_string(cached));
      }
      for (int32_t t : c.tokens) {
        if (t < 0 || t >= config_.vocab_size) return InvalidArgument("token out of range");
      }
      const int64_t len = cached + static_cast<int64_t>(c.tokens.size());
      new_blocks += Blocks(len) - Blocks(cached);
    }
    if (new_blocks > capacity_blocks_ - UsedBlocks()) {
      ++exhausted_count;
      return ResourceExhausted("fake KV cache: batch needs " + std::to_string(new_blocks) +
                               " blocks, " + std::to_string(capacity_blocks_ - UsedBlocks()) +
                               " free");
    }
    ForwardOutput out;
    out.vocab_size = config_.vocab_size;
    for (const SequenceChunk& c : batch.chunks) {
      std::vector<int32_t>& seq = kv_[c.seq_id];
      out.row_begin.push_back(static_cast<int64_t>(out.logits.size()) / config_.vocab_size);
      for (size_t i = 0; i < c.tokens.size(); ++i) {
        seq.push_back(c.tokens[i]);
        if (c.all_logits || i + 1 == c.tokens.size()) {
          size_t at = out.logits.size();
          out.logits.resize(at + static_cast<size_t>(config_.vocab_size));
          LogitsAfter(seq, config_.vocab_size, out.logits.data() + at);
        }
      }
    }
    batches.push_back(batch);
    return out;
  }

  void Release(uint64_t seq_id) override {
    kv_.erase(seq_id);
    released.push_back(seq_id);
  }

  int64_t FreeKvTokens() const override {
    return (capacity_blocks_ - UsedBlocks()) * block_tokens_;
  }

  int64_t Cached(uint64_t seq_id) const {
    auto it = kv_.find(seq_id);
    return it == kv_.end() ? 0 : static_cast<int64_t>(it->second.size());
  }
  size_t live_sequences() const { return kv_.size(); }

  std::vector<ForwardBatch> batches;
  std::vector<uint64_t> released;
  int exhausted_count = 0;

 private:
  int64_t Blocks(int64_t tokens) const { return (tokens + block_tokens_ - 1) / block_tokens_; }
  int64_t UsedBlocks() const {
    int64_t used = 0;
    for (const auto& [id, toks] : kv_) used += Blocks(static_cast<int64_t>(toks.size()));
    return used;
  }

  ModelConfig config_;
  int64_t capacity_blocks_;
  int64_t block_tokens_;
  std::map<uint64_t, std::vector<int32_t>> kv_;
};

// Greedy continuation of `prompt` by `n` tokens, `logits_after(prefix, logits)` writing the
// `vocab` logits after a prefix (ties go to the lowest token id).
template <typename LogitsAfter>
std::vector<int32_t> GreedyContinuation(std::vector<int32_t> prompt, int64_t vocab, int n,
                                        const LogitsAfter& logits_after) {
  std::vector<int32_t> out;
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (int i = 0; i < n; ++i) {
    logits_after(prompt, logits.data());
    int32_t best = 0;
    for (int64_t v = 1; v < vocab; ++v) {
      if (logits[v] > logits[best]) best = static_cast<int32_t>(v);
    }
    out.push_back(best);
    prompt.push_back(best);
  }
  return out;
}

// Greedy continuation of `prompt` computed directly from the fake model (the reference).
inline std::vector<int32_t> FakeGreedy(std::vector<int32_t> prompt, int64_t vocab, int n) {
  return GreedyContinuation(std::move(prompt), vocab, n,
                            [vocab](const std::vector<int32_t>& prefix, float* logits) {
                              FakeBackend::LogitsAfter(prefix, vocab, logits);
                            });
}

}  // namespace spark::engine::testing
