// FakeSpecBackend: a deterministic toy Backend with a draft (MTP) model, for speculative-decoding
// tests of the scheduler.
//
// Target: the logits after a token prefix depend only on the prefix, through a rolling hash
// state; the "hidden state" of a position is that state, encoded exactly in four floats
// (16 bits each). Draft: a pair (token, hidden) continues the hidden's state with the token
// (exactly what the target's state after that token is) and gives the target's logits there
// plus a deterministic perturbation of size `draft_noise` (0 = a draft that always agrees with
// the target). The MTP hidden output is the continued state, so a chain of draft steps is exact
// in the state and only the logits are perturbed.
//
// Both caches store per entry the hash state and the cache index of its parent entry; tree
// chunks, KeepCacheEntries (which must keep an ancestor path) and positions follow the Backend
// contract, and ForwardMtp rejects a pair whose hidden is not the output of its parent entry
// (the last cached entry or its tree parent), so a scheduler that feeds the wrong hidden or token
// fails loudly. Each cache holds capacity_tokens entries in all (as the CPU backend sizes both
// alike); FreeKvTokens is the smaller free count; a batch that does not fit returns
// ResourceExhausted without changing anything.
//
// Thread safety: single owner thread, like any Backend.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "engine/runtime/backend.h"
#include "tests/engine/runtime/fake_backend.h"

namespace spark::engine::testing {

class FakeSpecBackend final : public Backend {
 public:
  static constexpr int64_t kHidden = 4;
  static constexpr uint64_t kSeedState = 1469598103934665603ull;

  FakeSpecBackend(int64_t vocab, int64_t capacity_tokens, float draft_noise,
                  float logit_range = 4.0f)
      : capacity_(capacity_tokens), draft_noise_(draft_noise), logit_range_(logit_range) {
    config_.vocab_size = vocab;
    config_.hidden_size = kHidden;
    config_.architecture_name = "FakeForCausalLM";
  }

  const ModelConfig& config() const override { return config_; }
  ModelConfig& mutable_config() { return config_; }
  bool SupportsSpeculation() const override { return supports_speculation; }

  static uint64_t Roll(uint64_t state, int32_t token) {
    return (state ^ static_cast<uint64_t>(token + 1)) * 1099511628211ull;
  }
  static uint64_t StateOf(const std::vector<int32_t>& prefix) {
    uint64_t h = kSeedState;
    for (int32_t t : prefix) h = Roll(h, t);
    return h;
  }
  static uint64_t Mix(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  }
  // Target logits of the next token at `state`, in [0, logit_range).
  static void TargetLogits(uint64_t state, int64_t vocab, float range, float* out) {
    for (int64_t v = 0; v < vocab; ++v) {
      const uint64_t x = Mix(state + static_cast<uint64_t>(v) * 0x9E3779B97F4A7C15ull);
      out[v] = static_cast<float>(x % 100000) / 100000.0f * range;
    }
  }
  void TargetLogits(uint64_t state, float* out) const {
    TargetLogits(state, config_.vocab_size, logit_range_, out);
  }
  void DraftLogits(uint64_t state, float* out) const {
    TargetLogits(state, out);
    for (int64_t v = 0; v < config_.vocab_size; ++v) {
      const uint64_t x = Mix(state * 31 + static_cast<uint64_t>(v) + 0x5555);
      out[v] += draft_noise_ * (static_cast<float>(x % 100000) / 100000.0f * 2.0f - 1.0f);
    }
  }
  static void Encode(uint64_t state, float* out) {
    for (int i = 0; i < 4; ++i) out[i] = static_cast<float>((state >> (16 * i)) & 0xFFFF);
  }
  static uint64_t Decode(const float* h) {
    uint64_t s = 0;
    for (int i = 0; i < 4; ++i) s |= static_cast<uint64_t>(h[i]) << (16 * i);
    return s;
  }

  Result<ForwardOutput> Forward(const ForwardBatch& batch) override {
    std::set<uint64_t> seen;
    int64_t added = 0;
    for (const SequenceChunk& c : batch.chunks) {
      if (c.tokens.empty()) return InvalidArgument("empty chunk");
      if (!seen.insert(c.seq_id).second) return InvalidArgument("sequence twice in a batch");
      const int64_t cached = Cached(target_, c.seq_id);
      if (c.start_pos != cached) {
        return InvalidArgument("seq " + std::to_string(c.seq_id) + ": start_pos " +
                               std::to_string(c.start_pos) + " != cached " +
                               std::to_string(cached));
      }
      SPARK_RETURN_IF_ERROR(CheckParents(c.tree_parents, c.tokens.size()));
      if (!c.tree_parents.empty() && !supports_speculation) {
        return Unimplemented("tree chunks");
      }
      for (int32_t t : c.tokens) {
        if (t < 0 || t >= config_.vocab_size) return InvalidArgument("token out of range");
      }
      added += static_cast<int64_t>(c.tokens.size());
    }
    if (added > FreeKvTokens()) {
      ++exhausted_count;
      return ResourceExhausted("fake KV cache: batch needs " + std::to_string(added) + " tokens, " +
                               std::to_string(FreeKvTokens()) + " free");
    }
    ForwardOutput out;
    out.vocab_size = config_.vocab_size;
    const int64_t vocab = config_.vocab_size;
    bool any_hidden = false;
    for (const SequenceChunk& c : batch.chunks) any_hidden |= c.return_hidden;
    if (any_hidden) out.hidden_size = kHidden;
    for (const SequenceChunk& c : batch.chunks) {
      std::vector<Entry>& cache = target_[c.seq_id];
      const int64_t base = static_cast<int64_t>(cache.size());
      out.row_begin.push_back(static_cast<int64_t>(out.logits.size()) / vocab);
      if (any_hidden) {
        out.hidden_row_begin.push_back(static_cast<int64_t>(out.hidden.size()) / kHidden);
      }
      for (size_t i = 0; i < c.tokens.size(); ++i) {
        int64_t parent = base + static_cast<int64_t>(i) - 1;
        if (!c.tree_parents.empty()) {
          parent = c.tree_parents[i] >= 0 ? base + c.tree_parents[i] : base - 1;
        }
        const uint64_t prev = parent >= 0 ? cache[static_cast<size_t>(parent)].state : kSeedState;
        const uint64_t state = Roll(prev, c.tokens[i]);
        cache.push_back({state, parent});
        if (c.all_logits || i + 1 == c.tokens.size()) {
          const size_t at = out.logits.size();
          out.logits.resize(at + static_cast<size_t>(vocab));
          TargetLogits(state, out.logits.data() + at);
        }
        if (c.return_hidden) {
          const size_t at = out.hidden.size();
          out.hidden.resize(at + kHidden);
          Encode(state, out.hidden.data() + at);
        }
      }
    }
    ++forward_calls;
    batches.push_back(batch);
    return out;
  }

  Result<ForwardOutput> ForwardMtp(const MtpBatch& batch) override {
    if (!supports_speculation) return Unimplemented("this backend has no MTP draft layer");
    std::set<uint64_t> seen;
    int64_t added = 0;
    for (const MtpChunk& c : batch.chunks) {
      if (c.tokens.empty()) return InvalidArgument("empty MTP chunk");
      if (!seen.insert(c.seq_id).second) return InvalidArgument("sequence twice in an MTP batch");
      if (c.start_pos != Cached(mtp_, c.seq_id)) {
        return InvalidArgument("MTP seq " + std::to_string(c.seq_id) + ": start_pos " +
                               std::to_string(c.start_pos) + " != MTP cached " +
                               std::to_string(Cached(mtp_, c.seq_id)));
      }
      if (c.hidden.size() != c.tokens.size() * kHidden) {
        return InvalidArgument("MTP chunk hidden has the wrong size");
      }
      SPARK_RETURN_IF_ERROR(CheckParents(c.tree_parents, c.tokens.size()));
      // Each pair's hidden must be its parent entry's output.
      const auto it = mtp_.find(c.seq_id);
      const int64_t base = it == mtp_.end() ? 0 : static_cast<int64_t>(it->second.size());
      std::vector<uint64_t> outs;
      for (size_t j = 0; j < c.tokens.size(); ++j) {
        const uint64_t hidden_state = Decode(c.hidden.data() + j * kHidden);
        int64_t parent = static_cast<int64_t>(j) - 1;
        if (!c.tree_parents.empty()) parent = c.tree_parents[j];
        bool has_parent = true;
        uint64_t expected = 0;
        if (parent >= 0) {
          expected = outs[static_cast<size_t>(parent)];
        } else if (base > 0) {
          expected = it->second.back().state;
        } else {
          has_parent = false;  // the first pair of the sequence
        }
        if (has_parent && expected != hidden_state) {
          return InvalidArgument("fake MTP: seq " + std::to_string(c.seq_id) + " pair " +
                                 std::to_string(j) + " at " + std::to_string(c.start_pos) +
                                 ": the hidden is not its parent entry's output");
        }
        outs.push_back(Roll(hidden_state, c.tokens[j]));
      }
      added += static_cast<int64_t>(c.tokens.size());
    }
    if (added > Free(mtp_)) {
      ++exhausted_count;
      return ResourceExhausted("fake MTP cache: batch needs " + std::to_string(added) +
                               " tokens, " + std::to_string(Free(mtp_)) + " free");
    }
    ForwardOutput out;
    out.vocab_size = config_.vocab_size;
    const int64_t vocab = config_.vocab_size;
    bool any_hidden = false;
    for (const MtpChunk& c : batch.chunks) any_hidden |= c.return_hidden;
    if (any_hidden) out.hidden_size = kHidden;
    for (const MtpChunk& c : batch.chunks) {
      std::vector<Entry>& cache = mtp_[c.seq_id];
      const int64_t base = static_cast<int64_t>(cache.size());
      out.row_begin.push_back(static_cast<int64_t>(out.logits.size()) / vocab);
      if (any_hidden) {
        out.hidden_row_begin.push_back(static_cast<int64_t>(out.hidden.size()) / kHidden);
      }
      for (size_t j = 0; j < c.tokens.size(); ++j) {
        int64_t parent = base + static_cast<int64_t>(j) - 1;
        if (!c.tree_parents.empty()) {
          parent = c.tree_parents[j] >= 0 ? base + c.tree_parents[j] : base - 1;
        }
        const uint64_t state = Roll(Decode(c.hidden.data() + j * kHidden), c.tokens[j]);
        cache.push_back({state, parent});
        if (c.all_logits || j + 1 == c.tokens.size()) {
          const size_t at = out.logits.size();
          out.logits.resize(at + static_cast<size_t>(vocab));
          DraftLogits(state, out.logits.data() + at);
          if (c.return_hidden) {
            const size_t h = out.hidden.size();
            out.hidden.resize(h + kHidden);
            Encode(state, out.hidden.data() + h);
          }
        }
      }
    }
    ++mtp_calls;
    mtp_tokens += added;
    return out;
  }

  int64_t CachedTokens(uint64_t seq_id, CacheKind kind) const override {
    return Cached(kind == CacheKind::kTarget ? target_ : mtp_, seq_id);
  }

  Status KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep) override {
    if (!supports_speculation) return Unimplemented("no speculative decoding");
    auto& caches = kind == CacheKind::kTarget ? target_ : mtp_;
    std::vector<Entry>& cache = caches[seq_id];
    const int64_t len = static_cast<int64_t>(cache.size());
    if (prefix_len < 0 || prefix_len > len) return InvalidArgument("bad prefix_len");
    int64_t prev = prefix_len - 1;
    for (size_t i = 0; i < keep.size(); ++i) {
      const int64_t at = prefix_len + keep[i];
      if (keep[i] < 0 || at >= len || (i > 0 && keep[i] <= keep[i - 1])) {
        return InvalidArgument("bad keep index");
      }
      if (cache[static_cast<size_t>(at)].parent != prev) {
        return InvalidArgument("kept entries are not an ancestor path");
      }
      prev = at;
    }
    std::vector<Entry> out(cache.begin(), cache.begin() + prefix_len);
    for (int32_t k : keep) {
      Entry e = cache[static_cast<size_t>(prefix_len + k)];
      e.parent = static_cast<int64_t>(out.size()) - 1;
      out.push_back(e);
    }
    cache = std::move(out);
    ++keep_calls;
    return Status::Ok();
  }

  void Release(uint64_t seq_id) override {
    target_.erase(seq_id);
    mtp_.erase(seq_id);
    released.push_back(seq_id);
  }

  int64_t FreeKvTokens() const override { return std::min(Free(target_), Free(mtp_)); }

  size_t live_sequences() const { return target_.size(); }

  bool supports_speculation = true;
  std::vector<ForwardBatch> batches;
  std::vector<uint64_t> released;
  int exhausted_count = 0;
  int forward_calls = 0;
  int mtp_calls = 0;
  int64_t mtp_tokens = 0;
  int keep_calls = 0;

 private:
  struct Entry {
    uint64_t state;
    int64_t parent;  // cache index, -1 = none
  };
  using Caches = std::map<uint64_t, std::vector<Entry>>;

  static int64_t Cached(const Caches& caches, uint64_t seq_id) {
    auto it = caches.find(seq_id);
    return it == caches.end() ? 0 : static_cast<int64_t>(it->second.size());
  }
  int64_t Free(const Caches& caches) const {
    int64_t used = 0;
    for (const auto& [id, c] : caches) used += static_cast<int64_t>(c.size());
    return capacity_ - used;
  }
  static Status CheckParents(const std::vector<int32_t>& parents, size_t n) {
    if (parents.empty()) return Status::Ok();
    if (parents.size() != n) return InvalidArgument("tree_parents size != tokens size");
    for (size_t i = 0; i < n; ++i) {
      if (parents[i] < -1 || parents[i] >= static_cast<int32_t>(i)) {
        return InvalidArgument("tree parent out of range");
      }
    }
    return Status::Ok();
  }

  ModelConfig config_;
  int64_t capacity_;
  float draft_noise_;
  float logit_range_;
  Caches target_;
  Caches mtp_;
};

// Greedy continuation of `prompt` under the fake target (the reference).
inline std::vector<int32_t> FakeSpecGreedy(std::vector<int32_t> prompt, int64_t vocab, float range,
                                           int n) {
  return GreedyContinuation(std::move(prompt), vocab, n,
                            [vocab, range](const std::vector<int32_t>& prefix, float* logits) {
                              FakeSpecBackend::TargetLogits(FakeSpecBackend::StateOf(prefix), vocab,
                                                            range, logits);
                            });
}

}  // namespace spark::engine::testing
