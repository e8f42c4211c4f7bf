// CPU backend throughput on the tiny GLM-4 MoE shape (hidden 128, 4 heads of 64, 2 kv heads,
// 1 dense + 2 MoE layers, 8 experts top-2, shared expert) with dummy weights: decode tokens/s at
// batch 1 and 8 (each sequence holds a 64-token context), and prefill tokens/s of one chunk.
// Weight formats: BF16 and FP8 per-channel. Threads: hardware concurrency.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "engine/cpu/cpu_backend.h"
#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/tiny_model.h"

namespace spark::engine {
namespace {

constexpr int64_t kContext = 64;

std::unique_ptr<CpuBackend> MakeTinyBackend(bool fp8) {
  auto config = ParseModelConfig(TinyModelConfigJson(TinyModelOptions{}));
  if (!config.ok()) {
    std::fprintf(stderr, "tiny config: %s\n", config.status().ToString().c_str());
    std::abort();
  }
  if (fp8) config->quant.method = QuantMethod::kFp8PerChannel;
  LoadOptions load;
  load.dummy = true;
  auto weights = MakeDummyWeights(*config, load);
  if (!weights.ok()) {
    std::fprintf(stderr, "dummy weights: %s\n", weights.status().ToString().c_str());
    std::abort();
  }
  CpuBackendOptions options;
  options.kv_cache_bytes = int64_t{64} << 20;
  auto backend = CpuBackend::Create(std::move(weights).value(), nullptr, options);
  if (!backend.ok()) {
    std::fprintf(stderr, "backend: %s\n", backend.status().ToString().c_str());
    std::abort();
  }
  return std::move(backend).value();
}

std::vector<int32_t> Prompt(int64_t n, uint64_t seq) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 31 + seq * 7 + 3) % 200);
  return ids;
}

void Check(const Result<ForwardOutput>& out, benchmark::State& state) {
  if (!out.ok()) state.SkipWithError(out.status().ToString().c_str());
}

// Decode: every iteration is one step of `batch` sequences at context kContext.
void BM_Decode(benchmark::State& state, bool fp8) {
  const int batch_size = static_cast<int>(state.range(0));
  auto backend = MakeTinyBackend(fp8);
  ForwardBatch prefill;
  for (int s = 0; s < batch_size; ++s) {
    prefill.chunks.push_back(SequenceChunk{static_cast<uint64_t>(s), 0, Prompt(kContext, s)});
  }
  Check(backend->Forward(prefill), state);
  ForwardBatch step;
  for (int s = 0; s < batch_size; ++s) {
    step.chunks.push_back(SequenceChunk{static_cast<uint64_t>(s), kContext, {5}});
  }
  for (auto _ : state) {
    Check(backend->Forward(step), state);
    // Roll the cache back so that every step decodes at the same context length.
    state.PauseTiming();
    for (int s = 0; s < batch_size; ++s) {
      backend->TruncateSequence(static_cast<uint64_t>(s), kContext).IgnoreError();
    }
    state.ResumeTiming();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(batch_size) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["threads"] = backend->threads();
}

// Prefill: every iteration is one chunk of state.range(0) tokens of a fresh sequence.
void BM_Prefill(benchmark::State& state, bool fp8) {
  const int64_t tokens = state.range(0);
  auto backend = MakeTinyBackend(fp8);
  ForwardBatch batch;
  batch.chunks.push_back(SequenceChunk{1, 0, Prompt(tokens, 1)});
  for (auto _ : state) {
    Check(backend->Forward(batch), state);
    state.PauseTiming();
    backend->Release(1);
    state.ResumeTiming();
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
}

BENCHMARK_CAPTURE(BM_Decode, bf16, false)
    ->Arg(1)
    ->Arg(8)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Decode, fp8_channel, true)
    ->Arg(1)
    ->Arg(8)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, bf16, false)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_CAPTURE(BM_Prefill, fp8_channel, true)
    ->Arg(128)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace spark::engine

BENCHMARK_MAIN();
