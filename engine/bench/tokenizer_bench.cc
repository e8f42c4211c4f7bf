// Tokenizer benchmarks with the real Qwen3 tokenizer.json (scripts/fetch-test-data) on the
// tokenizer test corpus (tests/data/tokenizer/corpus.txt):
//   BM_LoadQwen3        Tokenizer::FromFile
//   BM_EncodeEntries    Encode every corpus entry, one call each (tokens/s, bytes/s)
//   BM_EncodeWhole      Encode the corpus file repeated 8 times as one text
//   BM_Decode           Decode the ids of the whole text
//   BM_Detokenize       stream the same ids through a Detokenizer, one Feed per id
// The Python baseline on the same workloads is tests/reference/tokenizer_bench.py.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/text/detokenizer.h"
#include "engine/text/tokenizer.h"

namespace spark::engine {
namespace {

const std::filesystem::path kSource = SPARK_SOURCE_DIR;
const std::filesystem::path kTokenizerPath = kSource / ".cache/testdata/qwen3/tokenizer.json";
const std::filesystem::path kCorpusPath = kSource / "tests/data/tokenizer/corpus.txt";
constexpr char kMissing[] =
    ".cache/testdata/qwen3/tokenizer.json is missing: run scripts/fetch-test-data";

struct Corpus {
  std::string raw;
  std::vector<std::string> entries;  // split as tests/reference/tokenizer_golden.py does
  std::string whole;                 // raw repeated 8 times
  size_t entry_bytes = 0;
};

const Corpus& GetCorpus() {
  static const Corpus corpus = [] {
    Corpus c;
    std::ifstream in(kCorpusPath, std::ios::binary);
    std::ostringstream buf;
    buf << in.rdbuf();
    c.raw = buf.str();
    std::string body = c.raw;
    if (!body.empty() && body.back() == '\n') body.pop_back();
    const std::string sep = "\n%%%%\n";
    size_t pos = 0;
    while (true) {
      const size_t next = body.find(sep, pos);
      c.entries.push_back(body.substr(pos, next - pos));
      if (next == std::string::npos) break;
      pos = next + sep.size();
    }
    for (const std::string& e : c.entries) c.entry_bytes += e.size();
    for (int i = 0; i < 8; ++i) c.whole += c.raw;
    return c;
  }();
  return corpus;
}

const Tokenizer* GetTokenizer() {
  static const std::unique_ptr<Tokenizer> tokenizer = []() -> std::unique_ptr<Tokenizer> {
    auto tok = Tokenizer::FromFile(kTokenizerPath);
    return tok.ok() ? std::move(tok).value() : nullptr;
  }();
  return tokenizer.get();
}

void BM_LoadQwen3(benchmark::State& state) {
  if (!std::filesystem::exists(kTokenizerPath)) return state.SkipWithError(kMissing);
  for (auto _ : state) {
    auto tok = Tokenizer::FromFile(kTokenizerPath);
    if (!tok.ok()) return state.SkipWithError(tok.status().ToString().c_str());
    benchmark::DoNotOptimize(tok);
  }
}
BENCHMARK(BM_LoadQwen3)->Unit(benchmark::kMillisecond)->Iterations(3);

void BM_EncodeEntries(benchmark::State& state) {
  const Tokenizer* tok = GetTokenizer();
  if (tok == nullptr) return state.SkipWithError(kMissing);
  const Corpus& corpus = GetCorpus();
  int64_t tokens = 0;
  for (auto _ : state) {
    for (const std::string& entry : corpus.entries) {
      const std::vector<int32_t> ids = tok->Encode(entry);
      tokens += static_cast<int64_t>(ids.size());
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(corpus.entry_bytes));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EncodeEntries)->Unit(benchmark::kMillisecond)->Threads(1)->Threads(2)->UseRealTime();

void BM_EncodeWhole(benchmark::State& state) {
  const Tokenizer* tok = GetTokenizer();
  if (tok == nullptr) return state.SkipWithError(kMissing);
  const Corpus& corpus = GetCorpus();
  int64_t tokens = 0;
  for (auto _ : state) {
    const std::vector<int32_t> ids = tok->Encode(corpus.whole);
    tokens += static_cast<int64_t>(ids.size());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(corpus.whole.size()));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_EncodeWhole)->Unit(benchmark::kMillisecond);

void BM_Decode(benchmark::State& state) {
  const Tokenizer* tok = GetTokenizer();
  if (tok == nullptr) return state.SkipWithError(kMissing);
  const std::vector<int32_t> ids = tok->Encode(GetCorpus().whole);
  for (auto _ : state) {
    auto text = tok->Decode(ids);
    benchmark::DoNotOptimize(text);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * static_cast<int64_t>(ids.size())),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);

void BM_Detokenize(benchmark::State& state) {
  const Tokenizer* tok = GetTokenizer();
  if (tok == nullptr) return state.SkipWithError(kMissing);
  const std::vector<int32_t> ids = tok->Encode(GetCorpus().whole);
  for (auto _ : state) {
    Detokenizer detok(tok);
    size_t bytes = 0;
    for (const int32_t id : ids) bytes += detok.Feed(id)->size();
    bytes += detok.Flush().size();
    benchmark::DoNotOptimize(bytes);
  }
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(state.iterations() * static_cast<int64_t>(ids.size())),
                         benchmark::Counter::kIsRate);
}
BENCHMARK(BM_Detokenize)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace spark::engine

BENCHMARK_MAIN();
