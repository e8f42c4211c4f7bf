// GPU sampling against the CPU Sampler (engine/runtime/sampler.h): greedy decisions, penalties
// and logprobs exactly (within fp rounding); seeded sampling statistically, against the exact
// distribution of the filters and against the CPU sampler's empirical distribution.
#include "engine/cuda/gpu_sampler.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "engine/runtime/sampler.h"
#include "engine/runtime/scheduler.h"
#include "tests/engine/runtime/fake_backend.h"
#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

using engine::Sampler;
using engine::SampleResult;
using engine::SamplingParams;

std::vector<float> RandomLogits(int64_t rows, int64_t vocab, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> l(static_cast<size_t>(rows * vocab));
  for (float& v : l) v = dist(rng);
  return l;
}

struct Row {
  SamplingParams params;
  std::vector<int32_t> prompt;
  std::vector<int32_t> output;
};

// Runs the CPU sampler with the row's history replayed (Accept on every output token).
SampleResult CpuSample(const Row& row, std::span<const float> logits, uint64_t seed) {
  SamplingParams p = row.params;
  p.seed = seed;
  Sampler s(p, row.prompt);
  for (int32_t t : row.output) s.Accept(t);
  return s.Sample(logits);
}

std::vector<SampleResult> GpuSample(GpuSampler& sampler, const std::vector<Row>& rows,
                                    const std::vector<float>& logits, uint64_t seed,
                                    uint64_t draw) {
  std::vector<GpuSampleRequest> reqs;
  for (const Row& r : rows) reqs.push_back({&r.params, r.prompt, r.output, seed, draw});
  auto got = sampler.SampleHost(logits.data(), reqs);
  EXPECT_TRUE(got.ok()) << got.status().ToString();
  return got.ok() ? *got : std::vector<SampleResult>{};
}

TEST(GpuSamplingTest, GreedyPenaltiesAndLogprobsMatchTheCpuSampler) {
  for (int64_t vocab : {int64_t{7}, int64_t{1000}, int64_t{151552}}) {
    const int64_t n = 12;
    std::vector<float> logits = RandomLogits(n, vocab, 42 + vocab, 3.0f);
    // A tie for the maximum in row 1: the lower id wins.
    logits[static_cast<size_t>(vocab) + 3 % vocab] = 50.0f;
    logits[static_cast<size_t>(vocab) + 5 % vocab] = 50.0f;
    std::vector<Row> rows(static_cast<size_t>(n));
    std::mt19937 rng(7);
    for (int64_t r = 0; r < n; ++r) {
      Row& row = rows[static_cast<size_t>(r)];
      row.params.temperature = 0.0f;
      row.params.top_logprobs = static_cast<int>(r % 3 == 0 ? 20 : r % 5);
      for (int i = 0; i < 30; ++i) row.prompt.push_back(static_cast<int32_t>(rng() % vocab));
      for (int i = 0; i < 12; ++i) row.output.push_back(static_cast<int32_t>(rng() % vocab));
      if (r % 4 == 1) row.params.repetition_penalty = 1.3f;
      if (r % 4 == 2) row.params.frequency_penalty = 0.7f;
      if (r % 4 == 3) {
        row.params.presence_penalty = -0.5f;
        row.params.repetition_penalty = 0.8f;
        row.params.frequency_penalty = 1.5f;
      }
      // The penalties must matter: make a penalised token the maximum before penalties.
      if (r >= 2) logits[static_cast<size_t>(r * vocab + row.output[0])] = 40.0f;
    }
    auto sampler = GpuSampler::Create(vocab, n, nullptr);
    ASSERT_TRUE(sampler.ok()) << sampler.status().ToString();
    std::vector<SampleResult> got = GpuSample(**sampler, rows, logits, 0, 0);
    ASSERT_EQ(got.size(), rows.size());
    for (int64_t r = 0; r < n; ++r) {
      std::span<const float> row(logits.data() + r * vocab, static_cast<size_t>(vocab));
      SampleResult want = CpuSample(rows[static_cast<size_t>(r)], row, 0);
      const SampleResult& g = got[static_cast<size_t>(r)];
      EXPECT_EQ(g.token, want.token) << "vocab " << vocab << " row " << r;
      EXPECT_NEAR(g.logprob, want.logprob, 1e-4) << "vocab " << vocab << " row " << r;
      ASSERT_EQ(g.top_logprobs.size(), want.top_logprobs.size());
      for (size_t k = 0; k < want.top_logprobs.size(); ++k) {
        EXPECT_EQ(g.top_logprobs[k].token, want.top_logprobs[k].token) << "row " << r << " k " << k;
        EXPECT_NEAR(g.top_logprobs[k].logprob, want.top_logprobs[k].logprob, 1e-4);
      }
    }
  }
}

// Batches of plain greedy rows (no penalties, no top logprobs) take the many-block path
// (SampleGreedyRows): the same tokens, lowest id on ties, and logprobs as the CPU sampler, for
// vocabularies smaller than its block count, odd sizes and GLM's; and a timing of one row.
TEST(GpuSamplingTest, PlainGreedyBatchesMatchTheCpuSampler) {
  for (int64_t vocab : {int64_t{7}, int64_t{1000}, int64_t{151552}, int64_t{151553}}) {
    const int64_t n = 5;
    std::vector<float> logits = RandomLogits(n, vocab, 9 + vocab, 3.0f);
    logits[static_cast<size_t>(vocab) + 3 % vocab] = 50.0f;  // a tie in row 1: the lower id wins
    logits[static_cast<size_t>(vocab) + 5 % vocab] = 50.0f;
    logits[static_cast<size_t>(3 * vocab + vocab - 1)] = 60.0f;  // row 3: the last id
    std::vector<Row> rows(static_cast<size_t>(n));
    for (Row& row : rows) {
      row.params.temperature = 0.0f;
      row.params.top_k = 40;  // ignored by greedy decoding
      row.prompt = {1, 2, 3};
    }
    auto sampler = GpuSampler::Create(vocab, n, nullptr);
    ASSERT_TRUE(sampler.ok()) << sampler.status().ToString();
    std::vector<SampleResult> got = GpuSample(**sampler, rows, logits, 0, 0);
    ASSERT_EQ(got.size(), rows.size());
    for (int64_t r = 0; r < n; ++r) {
      std::span<const float> row(logits.data() + r * vocab, static_cast<size_t>(vocab));
      SampleResult want = CpuSample(rows[static_cast<size_t>(r)], row, 0);
      EXPECT_EQ(got[static_cast<size_t>(r)].token, want.token) << "vocab " << vocab << " row " << r;
      EXPECT_NEAR(got[static_cast<size_t>(r)].logprob, want.logprob, 1e-4)
          << "vocab " << vocab << " row " << r;
    }
    if (vocab == 151552) {
      EXPECT_EQ(got[1].token, 3);
      EXPECT_EQ(got[3].token, vocab - 1);
      DeviceBuffer<float> d(std::vector<float>(logits.begin(), logits.begin() + vocab));
      std::vector<GpuSampleRequest> one = {{&rows[0].params, rows[0].prompt, {}, 0, 0}};
      for (int i = 0; i < 3; ++i) ASSERT_TRUE((*sampler)->Sample(d.get(), one).ok());
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < 20; ++i) ASSERT_TRUE((*sampler)->Sample(d.get(), one).ok());
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
          20;
      std::printf("[sampling] plain greedy, one row of %lld: %.1f us per call (host included)\n",
                  static_cast<long long>(vocab), us);
    }
  }
}

// The exact distribution of the CPU sampler's filters (sorted candidates, as its contract says).
std::vector<double> ExactDistribution(std::vector<float> l, const SamplingParams& p) {
  const int64_t vocab = static_cast<int64_t>(l.size());
  for (float& v : l) v /= p.temperature;
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return l[a] != l[b] ? l[a] > l[b] : a < b; });
  const double max_logit = l[order[0]];
  auto w = [&](int32_t t) { return std::exp(static_cast<double>(l[t]) - max_logit); };
  size_t keep = p.top_k > 0 ? std::min<size_t>(p.top_k, order.size()) : order.size();
  if (p.top_p < 1.0f) {
    double total = 0;
    for (size_t i = 0; i < keep; ++i) total += w(order[i]);
    double c = 0;
    size_t k = 0;
    while (k < keep && (k == 0 || c < p.top_p * total)) c += w(order[k++]);
    keep = k;
  }
  std::vector<double> dist(static_cast<size_t>(vocab), 0.0);
  double total = 0;
  for (size_t i = 0; i < keep; ++i) {
    if (i > 0 && w(order[i]) < p.min_p) continue;
    dist[order[i]] = w(order[i]);
    total += w(order[i]);
  }
  for (double& d : dist) d /= total;
  return dist;
}

double TotalVariation(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::fabs(a[i] - b[i]);
  return s / 2;
}

TEST(GpuSamplingTest, SeededDistributionsMatchTheCpuSampler) {
  const int64_t vocab = 64;
  const int64_t batch = 2000;
  const int draws = 20;  // 40000 samples per case
  std::vector<float> one = RandomLogits(1, vocab, 99, 1.5f);
  struct Case {
    const char* name;
    float temperature;
    int top_k;
    float top_p;
    float min_p;
  };
  const Case cases[] = {{"temperature", 0.7f, 0, 1.0f, 0.0f},
                        {"top_k", 1.0f, 8, 1.0f, 0.0f},
                        {"top_p", 1.2f, 0, 0.8f, 0.0f},
                        {"min_p", 1.0f, 0, 1.0f, 0.1f},
                        {"all", 0.9f, 20, 0.9f, 0.02f}};
  auto sampler = GpuSampler::Create(vocab, batch, nullptr);
  ASSERT_TRUE(sampler.ok()) << sampler.status().ToString();
  std::vector<float> logits;
  for (int64_t r = 0; r < batch; ++r) logits.insert(logits.end(), one.begin(), one.end());
  for (const Case& c : cases) {
    Row row;
    row.params.temperature = c.temperature;
    row.params.top_k = c.top_k;
    row.params.top_p = c.top_p;
    row.params.min_p = c.min_p;
    const std::vector<double> exact = ExactDistribution(one, row.params);
    std::vector<Row> rows(static_cast<size_t>(batch), row);
    std::vector<double> gpu(static_cast<size_t>(vocab), 0.0);
    std::vector<double> cpu(static_cast<size_t>(vocab), 0.0);
    const double samples = static_cast<double>(batch) * draws;
    for (int d = 0; d < draws; ++d) {
      // Rows share the draw index and differ by seed; later draws move the Philox counter.
      std::vector<GpuSampleRequest> reqs;
      for (int64_t r = 0; r < batch; ++r) {
        reqs.push_back({&rows[static_cast<size_t>(r)].params,
                        {},
                        {},
                        static_cast<uint64_t>(r * 7919 + 1),
                        static_cast<uint64_t>(d)});
      }
      auto got = (*sampler)->SampleHost(logits.data(), reqs);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      for (const SampleResult& s : *got) {
        ASSERT_GT(exact[s.token], 0.0) << c.name << ": token " << s.token << " was filtered out";
        gpu[s.token] += 1.0 / samples;
      }
    }
    for (int64_t i = 0; i < batch * draws; ++i) {
      cpu[CpuSample(row, one, static_cast<uint64_t>(i) + 12345).token] += 1.0 / samples;
    }
    const double tv_gpu = TotalVariation(gpu, exact);
    const double tv_cpu = TotalVariation(cpu, exact);
    std::printf("[sampling] %-11s TV(gpu, exact) = %.4f  TV(cpu, exact) = %.4f\n", c.name, tv_gpu,
                tv_cpu);
    EXPECT_LT(tv_gpu, 0.03) << c.name;
    EXPECT_LT(tv_cpu, 0.03) << c.name;
  }
}

TEST(GpuSamplingTest, SeededRowsAreReproducibleAndDrawsDiffer) {
  const int64_t vocab = 151552;
  std::vector<float> logits = RandomLogits(4, vocab, 5, 2.0f);
  Row row;
  row.params.temperature = 1.0f;
  row.params.top_p = 0.95f;
  std::vector<Row> rows(4, row);
  auto sampler = GpuSampler::Create(vocab, 4, nullptr);
  ASSERT_TRUE(sampler.ok());
  std::vector<SampleResult> a = GpuSample(**sampler, rows, logits, 77, 3);
  std::vector<SampleResult> b = GpuSample(**sampler, rows, logits, 77, 3);
  ASSERT_EQ(a.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i].token, b[i].token);
  std::map<int32_t, int> seen;
  for (uint64_t draw = 0; draw < 32; ++draw) {
    std::vector<SampleResult> c = GpuSample(**sampler, rows, logits, 77, draw);
    ++seen[c[0].token];
  }
  EXPECT_GT(seen.size(), 8u) << "different draws should give different tokens";
}

TEST(GpuSamplingTest, LargeVocabularyTimings) {
  const int64_t vocab = 151552;
  for (int64_t rows_n : {int64_t{1}, int64_t{64}}) {
    std::vector<float> logits = RandomLogits(rows_n, vocab, 11, 3.0f);
    DeviceBuffer<float> dev(logits);
    auto sampler = GpuSampler::Create(vocab, rows_n, nullptr);
    ASSERT_TRUE(sampler.ok());
    for (const char* mode : {"greedy", "top_p"}) {
      Row row;
      row.params.temperature = std::string(mode) == "greedy" ? 0.0f : 0.8f;
      row.params.top_p = 0.9f;
      row.params.top_k = std::string(mode) == "greedy" ? 0 : 50;
      std::vector<Row> rows(static_cast<size_t>(rows_n), row);
      std::vector<GpuSampleRequest> reqs;
      for (const Row& r : rows) reqs.push_back({&r.params, {}, {}, 1, 0});
      ASSERT_TRUE((*sampler)->Sample(dev.get(), reqs).ok());
      const int iters = 20;
      const auto start = std::chrono::steady_clock::now();
      for (int i = 0; i < iters; ++i) ASSERT_TRUE((*sampler)->Sample(dev.get(), reqs).ok());
      const double us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start)
              .count() /
          iters;
      std::printf("[sampling] vocab %lld rows %lld %-6s (top_k 50, top_p 0.9): %.1f us/call\n",
                  static_cast<long long>(vocab), static_cast<long long>(rows_n), mode, us);
    }
  }
}

TEST(GpuSamplingTest, SchedulerWithTheGpuSamplerMatchesTheCpuSampler) {
  // Greedy requests with penalties and logprobs through the Scheduler: GPU rows equal CPU rows.
  const int64_t vocab = 4096;
  std::map<uint64_t, std::vector<engine::TokenOutput>> got[2];
  for (int gpu = 0; gpu < 2; ++gpu) {
    engine::testing::FakeBackend backend(vocab, 4096);
    auto sampler = GpuSampler::Create(vocab, 2, nullptr);  // 3 requests: chunks of 2 rows
    ASSERT_TRUE(sampler.ok());
    engine::SchedulerOptions options;
    if (gpu == 1) options.batch_sampler = sampler->get();
    auto s = engine::Scheduler::Create(&backend, options);
    ASSERT_TRUE(s.ok());
    for (uint64_t id = 1; id <= 3; ++id) {
      engine::Request r;
      r.id = id;
      for (int i = 0; i < 20; ++i) r.prompt.push_back(static_cast<int32_t>((i * 37 + id) % vocab));
      r.params.temperature = 0;
      r.params.max_tokens = 10;
      r.params.repetition_penalty = 1.2f;
      r.params.presence_penalty = 0.4f;
      r.params.top_logprobs = 3;
      r.on_output = [&got, gpu, id](const engine::TokenOutput& out) {
        got[gpu][id].push_back(out);
      };
      ASSERT_TRUE((*s)->AddRequest(std::move(r)).ok());
    }
    for (int i = 0; i < 1000 && (*s)->HasWork(); ++i) ASSERT_TRUE((*s)->Step().ok());
  }
  for (uint64_t id = 1; id <= 3; ++id) {
    ASSERT_EQ(got[1][id].size(), got[0][id].size());
    for (size_t k = 0; k < got[0][id].size(); ++k) {
      EXPECT_EQ(got[1][id][k].token, got[0][id][k].token) << "request " << id << " token " << k;
      EXPECT_NEAR(got[1][id][k].logprob, got[0][id][k].logprob, 1e-4);
    }
  }
}

}  // namespace
}  // namespace spark::cuda
