// Reference tests: spark's CPU backend against Hugging Face transformers.
//
// Every folder under tests/data/models/ (or $SPARK_REFERENCE_MODELS_DIR) is one variant written
// by tests/reference/make_models.py: a tiny bf16 checkpoint plus ref.json (prompt ids, greedy
// continuation) and ref_logits.f32 (transformers' fp32 logits of the 32-token prompt, float32
// little-endian [32, vocab]). glm_fp8 also has ref_fp8_{channel,block}.json / .f32: the same model
// with FP8-quantised decoder weights; the test quantises the committed checkpoint with spark's
// QuantizeCheckpoint (the same algorithm) into a temporary folder and compares against those.
//
// For every variant, tensor-parallel size (1, 2, 4 where the shapes divide; ranks are threads
// joined by GlooCommunicator over a LocalKeyValueStore) and weight scheme:
//   * logits of the prompt in one chunk: max|diff| <= 1e-2 * max|ref|, argmax equal at >= 98% of
//     positions (a position whose reference top-2 gap is within the measured error counts as
//     agreeing);
//   * greedy decoding through the KV cache (prefill of the 8-token greedy prompt, then one token
//     per step, argmax): the first 8 tokens equal the reference; how many of 16 match is printed.
// The folder must not be empty.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <atomic>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/quantize.h"
#include "engine/runtime/backend.h"
#include "tests/common/temp_dir.h"

namespace spark::engine {
namespace {

namespace fs = std::filesystem;

static_assert(std::endian::native == std::endian::little, "ref_logits*.f32 are little-endian");

constexpr double kMaxRelDiff = 1e-2;
constexpr double kMinArgmaxAgreement = 0.98;
constexpr size_t kGreedyMustMatch = 8;
constexpr int kTpSizes[] = {1, 2, 4};

fs::path ModelsDir() {
  if (const char* env = std::getenv("SPARK_REFERENCE_MODELS_DIR"); env != nullptr && *env) {
    return env;
  }
  return fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models";
}

// One test case: a variant folder, a weight scheme and a tensor-parallel size.
struct Case {
  std::string variant;
  std::string scheme;  // "bf16", "fp8_channel" or "fp8_block"
  int tp = 1;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.variant << " tp=" << c.tp << " " << c.scheme;
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name =
      info.param.variant + "_tp" + std::to_string(info.param.tp) + "_" + info.param.scheme;
  for (char& c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
  }
  return name;
}

std::vector<std::string> DiscoverVariants() {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(ModelsDir(), ec)) {
    if (entry.is_directory() && fs::exists(entry.path() / "ref.json")) {
      names.push_back(entry.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<Case> DiscoverCases() {
  std::vector<Case> cases;
  for (const std::string& variant : DiscoverVariants()) {
    for (const char* scheme : {"bf16", "fp8_channel", "fp8_block"}) {
      std::string suffix = std::string(scheme) == "bf16" ? "" : std::string("_") + scheme;
      if (!fs::exists(ModelsDir() / variant / ("ref" + suffix + ".json"))) continue;
      for (int tp : kTpSizes) cases.push_back({variant, scheme, tp});
    }
  }
  return cases;
}

// What make_models.py recorded for one (variant, scheme).
struct Reference {
  std::vector<int32_t> ids;            // the 32-token prompt
  std::vector<int32_t> greedy_prompt;  // its first 8 tokens
  std::vector<int32_t> greedy;         // 16 greedy tokens after greedy_prompt
  std::vector<double> greedy_gaps;     // top-2 logit gap at each greedy step
  std::vector<float> logits;           // [ids.size(), vocab]
  int64_t vocab = 0;
};

Result<std::string> ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot open " + path.string() + "; regenerate the reference data");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result<Reference> LoadReference(const fs::path& dir, const std::string& scheme, int64_t vocab) {
  std::string suffix = scheme == "bf16" ? "" : "_" + scheme;
  SPARK_ASSIGN_OR_RETURN(std::string json_text, ReadFile(dir / ("ref" + suffix + ".json")));
  Reference ref;
  ref.vocab = vocab;
  try {
    nlohmann::json j = nlohmann::json::parse(json_text);
    ref.ids = j.at("ids").get<std::vector<int32_t>>();
    ref.greedy_prompt = j.at("greedy_prompt").get<std::vector<int32_t>>();
    ref.greedy = j.at("greedy").get<std::vector<int32_t>>();
    if (j.contains("greedy_top2_gaps")) {
      ref.greedy_gaps = j.at("greedy_top2_gaps").get<std::vector<double>>();
    }
  } catch (const nlohmann::json::exception& e) {
    return InvalidArgument("ref" + suffix + ".json in " + dir.string() + " is malformed (" +
                           e.what() + "); regenerate it with tests/reference/make_models.py");
  }
  if (ref.ids.empty() || ref.greedy_prompt.empty() || ref.greedy.size() < kGreedyMustMatch) {
    return InvalidArgument("ref" + suffix + ".json in " + dir.string() +
                           " lacks ids/greedy_prompt/greedy; regenerate it");
  }
  SPARK_ASSIGN_OR_RETURN(std::string raw, ReadFile(dir / ("ref_logits" + suffix + ".f32")));
  const size_t want = ref.ids.size() * static_cast<size_t>(vocab) * sizeof(float);
  if (raw.size() != want) {
    return InvalidArgument("ref_logits" + suffix + ".f32 in " + dir.string() + " has " +
                           std::to_string(raw.size()) + " bytes, expected " + std::to_string(want) +
                           " ([" + std::to_string(ref.ids.size()) + ", " + std::to_string(vocab) +
                           "] float32); regenerate it");
  }
  ref.logits.resize(raw.size() / sizeof(float));
  std::memcpy(ref.logits.data(), raw.data(), raw.size());
  return ref;
}

using ::spark::testing::TempDir;

int32_t Argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

// What one rank computed.
struct RankOutput {
  std::vector<float> prompt_logits;  // [ids.size(), vocab]
  std::vector<int32_t> greedy;
};

Result<RankOutput> RunRank(const fs::path& model_dir, int rank, int tp, Communicator* comm,
                           const Reference& ref) {
  LoadOptions load;
  load.tp_rank = rank;
  load.tp_size = tp;
  SPARK_ASSIGN_OR_RETURN(ModelWeights weights, LoadModelWeights(model_dir, load));
  CpuBackendOptions options;
  options.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / tp);
  options.kv_cache_bytes = int64_t{16} << 20;
  SPARK_ASSIGN_OR_RETURN(std::unique_ptr<CpuBackend> backend,
                         CpuBackend::Create(std::move(weights), comm, options));
  const int64_t vocab = backend->config().vocab_size;
  if (vocab != ref.vocab) {
    return Internal("backend vocab " + std::to_string(vocab) + " != config vocab");
  }

  RankOutput out;
  ForwardBatch prompt;
  prompt.chunks.push_back({.seq_id = 1, .start_pos = 0, .tokens = ref.ids, .all_logits = true});
  SPARK_ASSIGN_OR_RETURN(ForwardOutput logits, backend->Forward(prompt));
  if (logits.logits.size() != ref.ids.size() * static_cast<size_t>(vocab)) {
    return Internal("prompt forward returned " + std::to_string(logits.logits.size()) +
                    " logits, expected " + std::to_string(ref.ids.size() * vocab));
  }
  out.prompt_logits = std::move(logits.logits);
  backend->Release(1);

  ForwardBatch step;
  step.chunks.push_back({.seq_id = 2, .start_pos = 0, .tokens = ref.greedy_prompt});
  for (size_t i = 0; i < ref.greedy.size(); ++i) {
    SPARK_ASSIGN_OR_RETURN(ForwardOutput next, backend->Forward(step));
    if (next.logits.size() != static_cast<size_t>(vocab)) {
      return Internal("decode step returned " + std::to_string(next.logits.size()) + " logits");
    }
    const int32_t token = Argmax(next.logits.data(), vocab);
    out.greedy.push_back(token);
    SequenceChunk& chunk = step.chunks[0];
    chunk.start_pos += static_cast<int64_t>(chunk.tokens.size());
    chunk.tokens = {token};
  }
  backend->Release(2);
  return out;
}

// Runs all ranks (threads; Gloo over a LocalKeyValueStore when tp > 1). Returns rank 0's output
// and checks every rank produced the same.
Result<RankOutput> RunAllRanks(const fs::path& model_dir, int tp, const Reference& ref) {
  if (tp == 1) return RunRank(model_dir, 0, 1, nullptr, ref);
  static std::atomic<int> generation{0};
  LocalKeyValueStore store;
  GlooOptions gloo;
  gloo.prefix = "reference_" + std::to_string(::getpid()) + "_" + std::to_string(generation++);
  gloo.connect_timeout_ms = 30000;
  gloo.op_timeout_ms = 30000;
  std::vector<Result<RankOutput>> results(tp, Result<RankOutput>(Internal("rank did not run")));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < tp; ++rank) {
    threads.emplace_back([&, rank] {
      Result<std::unique_ptr<GlooCommunicator>> comm =
          GlooCommunicator::Create(rank, tp, &store, gloo);
      if (!comm.ok()) {
        results[rank] = comm.status();
        return;
      }
      results[rank] = RunRank(model_dir, rank, tp, comm->get(), ref);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < tp; ++rank) {
    if (!results[rank].ok()) {
      return Status(results[rank].status().code(),
                    "rank " + std::to_string(rank) + ": " + results[rank].status().message());
    }
  }
  for (int rank = 1; rank < tp; ++rank) {
    if (results[rank]->greedy != results[0]->greedy ||
        results[rank]->prompt_logits != results[0]->prompt_logits) {
      return Internal("rank " + std::to_string(rank) +
                      " computed different logits or tokens than rank 0; every rank must return "
                      "the same gathered logits");
    }
  }
  return std::move(results[0]).value();
}

class ReferenceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ReferenceTest, LogitsAndGreedyMatchTransformers) {
  const Case& c = GetParam();
  const fs::path variant_dir = ModelsDir() / c.variant;
  Result<ModelConfig> config = LoadModelConfig(variant_dir);
  ASSERT_TRUE(config.ok()) << config.status().ToString();
  Result<Reference> ref = LoadReference(variant_dir, c.scheme, config->vocab_size);
  ASSERT_TRUE(ref.ok()) << ref.status().ToString();

  TempDir quantized;
  fs::path model_dir = variant_dir;
  if (c.scheme != "bf16") {
    QuantizeOptions q;
    q.scheme = c.scheme == "fp8_block" ? Fp8Scheme::kBlock : Fp8Scheme::kPerChannel;
    Status st = QuantizeCheckpoint(variant_dir, quantized.path(), q);
    ASSERT_TRUE(st.ok()) << st.ToString();
    model_dir = quantized.path();
  }
  Result<ModelConfig> run_config = LoadModelConfig(model_dir);
  ASSERT_TRUE(run_config.ok()) << run_config.status().ToString();
  if (Status st = ValidateTensorParallel(*run_config, c.tp); !st.ok()) {
    GTEST_SKIP() << "shapes do not divide over tp=" << c.tp << ": " << st.message();
  }

  Result<RankOutput> out = RunAllRanks(model_dir, c.tp, *ref);
  ASSERT_TRUE(out.ok()) << out.status().ToString();

  // Logits of the prompt.
  const int64_t vocab = ref->vocab;
  const size_t positions = ref->ids.size();
  double max_ref = 0.0;
  double max_diff = 0.0;
  for (size_t i = 0; i < ref->logits.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(static_cast<double>(ref->logits[i])));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(out->prompt_logits[i]) -
                                            static_cast<double>(ref->logits[i])));
  }
  const double ratio = max_ref > 0.0 ? max_diff / max_ref : max_diff;
  size_t argmax_equal = 0;
  size_t argmax_agree = 0;
  for (size_t p = 0; p < positions; ++p) {
    const float* want = ref->logits.data() + p * vocab;
    const float* got = out->prompt_logits.data() + p * vocab;
    const int32_t a = Argmax(want, vocab);
    const int32_t b = Argmax(got, vocab);
    if (a == b) {
      ++argmax_equal;
      ++argmax_agree;
    } else if (static_cast<double>(want[a]) - want[b] <= 2.0 * max_diff) {
      ++argmax_agree;  // a tie within the measured error
    }
  }

  // Greedy continuation through the KV cache.
  size_t greedy_match = 0;
  while (greedy_match < ref->greedy.size() && greedy_match < out->greedy.size() &&
         out->greedy[greedy_match] == ref->greedy[greedy_match]) {
    ++greedy_match;
  }

  std::printf(
      "[reference] %-12s tp=%d %-11s max|diff|/max|ref| = %.3e (max|ref| %.3f), argmax "
      "%zu/%zu equal (%zu agree within error), greedy %zu/%zu match\n",
      c.variant.c_str(), c.tp, c.scheme.c_str(), ratio, max_ref, argmax_equal, positions,
      argmax_agree, greedy_match, ref->greedy.size());
  RecordProperty("max_rel_diff", std::to_string(ratio));
  RecordProperty("argmax_equal", std::to_string(argmax_equal) + "/" + std::to_string(positions));
  RecordProperty("greedy_match",
                 std::to_string(greedy_match) + "/" + std::to_string(ref->greedy.size()));

  EXPECT_LE(ratio, kMaxRelDiff) << "logits differ from transformers beyond 1e-2 * max|ref|";
  EXPECT_GE(static_cast<double>(argmax_agree), kMinArgmaxAgreement * positions)
      << "argmax differs at too many prompt positions";
  std::ostringstream got_tokens;
  for (int32_t t : out->greedy) got_tokens << t << ' ';
  std::ostringstream want_tokens;
  for (int32_t t : ref->greedy) want_tokens << t << ' ';
  const double gap = greedy_match < ref->greedy_gaps.size() ? ref->greedy_gaps[greedy_match] : -1;
  EXPECT_GE(greedy_match, kGreedyMustMatch)
      << "greedy tokens diverge at step " << greedy_match << " (reference top-2 gap there " << gap
      << ")\n  spark:        " << got_tokens.str() << "\n  transformers: " << want_tokens.str();
}

INSTANTIATE_TEST_SUITE_P(Models, ReferenceTest, ::testing::ValuesIn(DiscoverCases()), CaseName);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ReferenceTest);

TEST(ReferenceData, VariantsArePresentAndComplete) {
  const std::vector<std::string> variants = DiscoverVariants();
  ASSERT_FALSE(variants.empty())
      << "no reference variants (folders with ref.json) under " << ModelsDir()
      << "; generate them with tests/reference/make_models.py on the GPU machine and copy them "
         "into tests/data/models/";
  for (const std::string& v : variants) {
    for (const char* file : {"config.json", "model.safetensors", "ref.json", "ref_logits.f32"}) {
      EXPECT_TRUE(fs::exists(ModelsDir() / v / file)) << v << " lacks " << file;
    }
    Result<ModelConfig> config = LoadModelConfig(ModelsDir() / v);
    EXPECT_TRUE(config.ok()) << v << ": " << config.status().ToString();
  }
}

}  // namespace
}  // namespace spark::engine
