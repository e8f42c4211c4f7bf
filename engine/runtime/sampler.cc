#include "engine/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

namespace spark::engine {
namespace {

std::string Num(double v) {
  std::string s = std::to_string(v);
  while (s.size() > 1 && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

// Higher logit first, then the lower token id.
struct ByLogitDesc {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    if (logits[a] != logits[b]) return logits[a] > logits[b];
    return a < b;
  }
};

}  // namespace

Status SamplingParams::Validate(int64_t vocab_size) const {
  if (!std::isfinite(temperature) || temperature < 0.0f) {
    return InvalidArgument("temperature must be >= 0 (0 = greedy), got " + Num(temperature));
  }
  if (top_k < -1) {
    return InvalidArgument("top_k must be >= 0 (0 or -1 = off), got " + std::to_string(top_k));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return InvalidArgument("top_p must be in (0, 1] (1 = off), got " + Num(top_p));
  }
  if (!(min_p >= 0.0f && min_p <= 1.0f)) {
    return InvalidArgument("min_p must be in [0, 1] (0 = off), got " + Num(min_p));
  }
  if (!(repetition_penalty > 0.0f) || !std::isfinite(repetition_penalty)) {
    return InvalidArgument("repetition_penalty must be > 0 (1 = off), got " +
                           Num(repetition_penalty));
  }
  if (!std::isfinite(presence_penalty) || !std::isfinite(frequency_penalty)) {
    return InvalidArgument("presence_penalty and frequency_penalty must be finite numbers");
  }
  if (max_tokens < 1) {
    return InvalidArgument("max_tokens must be >= 1, got " + std::to_string(max_tokens));
  }
  if (top_logprobs < 0 || top_logprobs > kMaxTopLogprobs) {
    return InvalidArgument("top_logprobs must be in [0, " + std::to_string(kMaxTopLogprobs) +
                           "], got " + std::to_string(top_logprobs));
  }
  if (vocab_size > 0) {
    for (int32_t t : stop_token_ids) {
      if (t < 0 || t >= vocab_size) {
        return InvalidArgument("stop_token_ids: " + std::to_string(t) +
                               " is outside the vocabulary [0, " + std::to_string(vocab_size) +
                               ")");
      }
    }
  }
  return Status::Ok();
}

Sampler::Sampler(const SamplingParams& params, std::span<const int32_t> prompt) : params_(params) {
  if (params_.seed.has_value()) {
    seed_ = *params_.seed;
  } else {
    std::random_device rd;
    seed_ = (uint64_t{rd()} << 32) ^ rd();
  }
  rng_.seed(seed_);
  if (params_.repetition_penalty != 1.0f) seen_.insert(prompt.begin(), prompt.end());
}

void Sampler::Accept(int32_t token) {
  if (params_.repetition_penalty != 1.0f) seen_.insert(token);
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    ++output_counts_[token];
  }
}

double Sampler::NextUniform() { return static_cast<double>(rng_() >> 11) * 0x1.0p-53; }

Sampler::Processed Sampler::Process(std::span<const float> logits,
                                    std::span<const int32_t> pending) {
  const int64_t vocab = static_cast<int64_t>(logits.size());
  scratch_.assign(logits.begin(), logits.end());
  float* l = scratch_.data();

  // 1. Penalties (pending tokens count as output tokens).
  if (params_.repetition_penalty != 1.0f) {
    const float rp = params_.repetition_penalty;
    auto penalise = [&](int32_t t) {
      if (t < 0 || t >= vocab) return;
      l[t] = l[t] > 0.0f ? l[t] / rp : l[t] * rp;
    };
    for (int32_t t : seen_) penalise(t);
    for (size_t i = 0; i < pending.size(); ++i) {
      const int32_t t = pending[i];
      if (seen_.count(t) > 0 ||
          std::find(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(i), t) !=
              pending.begin() + static_cast<std::ptrdiff_t>(i)) {
        continue;  // penalised once
      }
      penalise(t);
    }
  }
  if (params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f) {
    auto apply = [&](const std::unordered_map<int32_t, int>& counts) {
      for (const auto& [t, count] : counts) {
        if (t < 0 || t >= vocab) continue;
        l[t] -= params_.frequency_penalty * static_cast<float>(count) + params_.presence_penalty;
      }
    };
    if (pending.empty()) {
      apply(output_counts_);
    } else {
      std::unordered_map<int32_t, int> counts = output_counts_;
      for (int32_t t : pending) ++counts[t];
      apply(counts);
    }
  }

  // 2. Temperature.
  if (!params_.greedy() && params_.temperature != 1.0f) {
    const float inv_t = 1.0f / params_.temperature;
    for (int64_t i = 0; i < vocab; ++i) l[i] *= inv_t;
  }

  // Log-sum-exp of the processed logits (for logprobs and probabilities).
  Processed p;
  for (int64_t i = 1; i < vocab; ++i) {
    if (l[i] > l[p.argmax]) p.argmax = static_cast<int32_t>(i);
  }
  p.max_logit = vocab > 0 ? l[p.argmax] : 0.0f;
  p.lse = p.max_logit;
  if (std::isfinite(p.max_logit)) {
    double sum = 0.0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(l[i]) - p.max_logit);
    p.lse = p.max_logit + std::log(sum);
  }
  return p;
}

void Sampler::Filter(const Processed& p) {
  const float* l = scratch_.data();
  const int64_t vocab = static_cast<int64_t>(scratch_.size());
  // 3-5. Truncation filters over a candidate list, most likely first when an ordering is needed.
  const bool use_top_k = params_.top_k > 0 && params_.top_k < vocab;
  const bool use_top_p = params_.top_p < 1.0f;
  candidates_.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) candidates_[i] = static_cast<int32_t>(i);
  ByLogitDesc order{l};
  if (use_top_k) {
    auto kth = candidates_.begin() + params_.top_k;
    std::nth_element(candidates_.begin(), kth - 1, candidates_.end(), order);
    candidates_.resize(static_cast<size_t>(params_.top_k));
  }
  if (use_top_k || use_top_p) std::sort(candidates_.begin(), candidates_.end(), order);

  // Unnormalised probabilities relative to the best candidate (== the global argmax).
  auto weight = [&](int32_t t) { return std::exp(static_cast<double>(l[t]) - p.max_logit); };
  if (use_top_p) {
    double total = 0.0;
    for (int32_t t : candidates_) total += weight(t);
    const double target = static_cast<double>(params_.top_p) * total;
    double cumulative = 0.0;
    size_t keep = 0;
    while (keep < candidates_.size() && (keep == 0 || cumulative < target)) {
      cumulative += weight(candidates_[keep]);
      ++keep;
    }
    candidates_.resize(keep);
  }
  if (params_.min_p > 0.0f) {
    // p_t >= min_p * p_max  <=>  weight(t) >= min_p (the best candidate has weight 1).
    const double threshold = params_.min_p;
    std::erase_if(candidates_, [&](int32_t t) { return t != p.argmax && weight(t) < threshold; });
  }
}

SampleResult Sampler::Sample(std::span<const float> logits) {
  const Processed p = Process(logits, {});
  const float* l = scratch_.data();
  int32_t token = p.argmax;
  if (!params_.greedy() && std::isfinite(p.max_logit)) {
    Filter(p);
    // 6. Sample.
    auto weight = [&](int32_t t) { return std::exp(static_cast<double>(l[t]) - p.max_logit); };
    double total = 0.0;
    for (int32_t t : candidates_) total += weight(t);
    const double u = NextUniform() * total;
    double cumulative = 0.0;
    token = candidates_.back();
    for (int32_t t : candidates_) {
      cumulative += weight(t);
      if (u < cumulative) {
        token = t;
        break;
      }
    }
  }
  TokenDistribution view;
  view.lse = p.lse;
  view.logits.swap(scratch_);
  SampleResult result = Describe(view, token);
  scratch_.swap(view.logits);
  return result;
}

void Sampler::Distribution(std::span<const float> logits, std::span<const int32_t> pending,
                           bool keep_logits, TokenDistribution* out) {
  const Processed p = Process(logits, pending);
  out->argmax = p.argmax;
  out->lse = p.lse;
  out->probs.clear();
  if (!params_.greedy()) {
    const int64_t vocab = static_cast<int64_t>(logits.size());
    out->probs.assign(static_cast<size_t>(vocab), 0.0f);
    if (!std::isfinite(p.max_logit)) {
      if (vocab > 0) out->probs[static_cast<size_t>(p.argmax)] = 1.0f;
    } else {
      Filter(p);
      const float* l = scratch_.data();
      double total = 0.0;
      for (int32_t t : candidates_) total += std::exp(static_cast<double>(l[t]) - p.max_logit);
      for (int32_t t : candidates_) {
        out->probs[static_cast<size_t>(t)] =
            static_cast<float>(std::exp(static_cast<double>(l[t]) - p.max_logit) / total);
      }
    }
  }
  if (keep_logits) {
    out->logits.assign(scratch_.begin(), scratch_.end());
  } else {
    out->logits.clear();
  }
}

SampleResult Sampler::Describe(const TokenDistribution& dist, int32_t token) const {
  SampleResult result;
  result.token = token;
  const float* l = dist.logits.data();
  const int64_t vocab = static_cast<int64_t>(dist.logits.size());
  if (token >= 0 && token < vocab) {
    result.logprob = static_cast<float>(static_cast<double>(l[token]) - dist.lse);
  }
  if (params_.top_logprobs > 0 && vocab > 0) {
    const int64_t n = std::min<int64_t>(params_.top_logprobs, vocab);
    std::vector<int32_t> order(static_cast<size_t>(vocab));
    for (int64_t i = 0; i < vocab; ++i) order[i] = static_cast<int32_t>(i);
    ByLogitDesc by{l};
    std::partial_sort(order.begin(), order.begin() + n, order.end(), by);
    result.top_logprobs.reserve(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      int32_t t = order[i];
      result.top_logprobs.push_back({t, static_cast<float>(static_cast<double>(l[t]) - dist.lse)});
    }
  }
  return result;
}

}  // namespace spark::engine
