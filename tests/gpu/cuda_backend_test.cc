// CudaBackend end to end on the GPU:
//   * every tiny transformers checkpoint of tests/data/models (and glm_fp8 quantised per channel
//     and per 128x128 block) against its reference logits, and against CpuBackend on the same
//     weights; greedy decoding through the paged KV cache; Load (streamed layer by layer) equal
//     to Create;
//   * tensor parallelism tp=2 in one process (two ranks on one GPU, Gloo collectives staged
//     through host memory) against tp=1;
//   * a random GLM-4 MoE at GLM-4.5-Air widths (1 dense + 1 MoE layer, BF16 and FP8 per-channel)
//     against CpuBackend, with mixed prefill / decode batches; CreateDummy (weights generated on
//     the GPU) against Create(MakeDummyWeights) bit for bit;
//   * the FP8 E4M3 KV cache: twice the tokens in the same budget, close to the references;
//   * device logits (ForwardBatch::logits_on_device) equal to the host logits, sampled on the GPU;
//   * batch semantics: errors, ResourceExhausted, Release, FreeKvTokens, TruncateSequence,
//     chunked prefill against one-shot prefill, and a clear error when a model does not fit.
// Tolerances: logits vs the fp32 references within 3e-2 * max|ref| (FP8 weights: 1.5e-1 with the
// default per-token FP8 activations, 5e-2 with BF16 activations in the dense linears - the MoE
// quantises its activations either way) at >= 90% of the prompt positions - BF16 activations into
// every GEMM and into the router can flip a near-tie expert choice at a position - and nowhere
// beyond 0.5 * max|ref|; argmax agreeing at >= 90% of the positions; greedy tokens equal until the
// reference's top-2 gap falls below the measured error.
#include "engine/cuda/cuda_backend.h"

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/check.h"
#include "engine/comm/gloo_communicator.h"
#include "engine/cpu/cpu_backend.h"
#include "engine/cuda/gpu_sampler.h"
#include "engine/model/config.h"
#include "engine/model/loader.h"
#include "engine/model/quantize.h"
#include "tests/common/temp_dir.h"

namespace spark::cuda {
namespace {

namespace fs = std::filesystem;
using engine::ForwardBatch;
using engine::ForwardOutput;
using engine::ModelConfig;
using engine::ModelWeights;

// The reference checkpoints; $SPARK_REFERENCE_MODELS_DIR overrides (binaries run elsewhere).
fs::path ModelsDir() {
  if (const char* env = std::getenv("SPARK_REFERENCE_MODELS_DIR"); env != nullptr && *env) {
    return env;
  }
  return fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models";
}

using ::spark::testing::TempDir;

struct Reference {
  std::vector<int32_t> ids, greedy_prompt, greedy;
  std::vector<double> greedy_gaps;
  std::vector<float> logits;
};

Reference LoadReference(const fs::path& dir, const std::string& suffix, int64_t vocab) {
  Reference ref;
  std::ifstream in(dir / ("ref" + suffix + ".json"));
  nlohmann::json j = nlohmann::json::parse(in);
  ref.ids = j.at("ids").get<std::vector<int32_t>>();
  ref.greedy_prompt = j.at("greedy_prompt").get<std::vector<int32_t>>();
  ref.greedy = j.at("greedy").get<std::vector<int32_t>>();
  if (j.contains("greedy_top2_gaps")) {
    ref.greedy_gaps = j.at("greedy_top2_gaps").get<std::vector<double>>();
  }
  std::ifstream raw(dir / ("ref_logits" + suffix + ".f32"), std::ios::binary);
  ref.logits.resize(ref.ids.size() * static_cast<size_t>(vocab));
  raw.read(reinterpret_cast<char*>(ref.logits.data()),
           static_cast<std::streamsize>(ref.logits.size() * sizeof(float)));
  return ref;
}

int32_t Argmax(const float* row, int64_t n) {
  return static_cast<int32_t>(std::max_element(row, row + n) - row);
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

CudaBackendOptions SmallOptions() {
  CudaBackendOptions o;
  o.kv_cache_bytes = int64_t{64} << 20;
  o.max_batch_tokens = 512;
  return o;
}

struct RunResult {
  std::vector<float> prompt_logits;
  std::vector<int32_t> greedy;
};

// Prompt logits (all positions) and greedy decoding, as the CPU reference test does.
Result<RunResult> RunModel(engine::Backend& backend, const Reference& ref) {
  const int64_t vocab = backend.config().vocab_size;
  RunResult out;
  ForwardBatch prompt;
  prompt.chunks.push_back({.seq_id = 1, .start_pos = 0, .tokens = ref.ids, .all_logits = true});
  SPARK_ASSIGN_OR_RETURN(ForwardOutput logits, backend.Forward(prompt));
  out.prompt_logits = std::move(logits.logits);
  backend.Release(1);
  ForwardBatch step;
  step.chunks.push_back({.seq_id = 2, .start_pos = 0, .tokens = ref.greedy_prompt});
  for (size_t i = 0; i < ref.greedy.size(); ++i) {
    SPARK_ASSIGN_OR_RETURN(ForwardOutput next, backend.Forward(step));
    const int32_t token = Argmax(next.logits.data(), vocab);
    out.greedy.push_back(token);
    step.chunks[0].start_pos += static_cast<int64_t>(step.chunks[0].tokens.size());
    step.chunks[0].tokens = {token};
  }
  backend.Release(2);
  return out;
}

struct ModelCase {
  std::string variant;
  std::string scheme;  // bf16, fp8_channel, fp8_block
};

std::vector<ModelCase> Cases() {
  std::vector<ModelCase> cases;
  std::error_code ec;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(ModelsDir(), ec)) {
    if (e.is_directory() && fs::exists(e.path() / "ref.json")) {
      names.push_back(e.path().filename().string());
    }
  }
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) {
    for (const char* scheme : {"bf16", "fp8_channel", "fp8_block"}) {
      const std::string suffix = std::string(scheme) == "bf16" ? "" : std::string("_") + scheme;
      if (fs::exists(ModelsDir() / n / ("ref" + suffix + ".json"))) cases.push_back({n, scheme});
    }
  }
  return cases;
}

TEST(CudaBackendTest, TinyCheckpointsMatchReferenceLogitsAndCpuBackend) {
  const std::vector<ModelCase> cases = Cases();
  ASSERT_FALSE(cases.empty()) << "no reference models under " << ModelsDir();
  for (const ModelCase& c : cases) {
    SCOPED_TRACE(c.variant + " " + c.scheme);
    const fs::path variant_dir = ModelsDir() / c.variant;
    TempDir quantized;
    fs::path dir = variant_dir;
    if (c.scheme != "bf16") {
      engine::QuantizeOptions q;
      q.scheme =
          c.scheme == "fp8_block" ? engine::Fp8Scheme::kBlock : engine::Fp8Scheme::kPerChannel;
      ASSERT_TRUE(engine::QuantizeCheckpoint(variant_dir, quantized.path(), q).ok());
      dir = quantized.path();
    }
    Result<ModelConfig> config = engine::LoadModelConfig(dir);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    const std::string suffix = c.scheme == "bf16" ? "" : "_" + c.scheme;
    const Reference ref = LoadReference(variant_dir, suffix, config->vocab_size);

    Result<ModelWeights> w = engine::LoadModelWeights(dir, {});
    ASSERT_TRUE(w.ok()) << w.status().ToString();
    Result<std::unique_ptr<CudaBackend>> gpu =
        CudaBackend::Create(std::move(*w), nullptr, SmallOptions());
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    Result<RunResult> got = RunModel(**gpu, ref);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    gpu->reset();
    // Streaming load (one layer on the host at a time) gives the same model.
    Result<std::unique_ptr<CudaBackend>> streamed =
        CudaBackend::Load(dir, {}, nullptr, SmallOptions());
    ASSERT_TRUE(streamed.ok()) << streamed.status().ToString();
    Result<RunResult> got_streamed = RunModel(**streamed, ref);
    ASSERT_TRUE(got_streamed.ok()) << got_streamed.status().ToString();
    EXPECT_EQ(got_streamed->prompt_logits, got->prompt_logits);
    EXPECT_EQ(got_streamed->greedy, got->greedy);

    Result<ModelWeights> w_cpu = engine::LoadModelWeights(dir, {});
    ASSERT_TRUE(w_cpu.ok());
    engine::CpuBackendOptions cpu_opts;
    cpu_opts.kv_cache_bytes = int64_t{16} << 20;
    Result<std::unique_ptr<engine::CpuBackend>> cpu =
        engine::CpuBackend::Create(std::move(*w_cpu), nullptr, cpu_opts);
    ASSERT_TRUE(cpu.ok());
    Result<RunResult> cpu_run = RunModel(**cpu, ref);
    ASSERT_TRUE(cpu_run.ok());

    const double max_ref = MaxAbs(ref.logits);
    const double diff = MaxDiff(got->prompt_logits, ref.logits);
    const double diff_cpu = MaxDiff(got->prompt_logits, cpu_run->prompt_logits);
    const int64_t vocab = config->vocab_size;
    size_t argmax_agree = 0;
    for (size_t p = 0; p < ref.ids.size(); ++p) {
      const float* want = ref.logits.data() + p * vocab;
      const int32_t a = Argmax(want, vocab);
      const int32_t b = Argmax(got->prompt_logits.data() + p * vocab, vocab);
      if (a == b || static_cast<double>(want[a]) - want[b] <= 2.0 * diff) ++argmax_agree;
    }
    size_t greedy_match = 0;
    while (greedy_match < ref.greedy.size() &&
           got->greedy[greedy_match] == ref.greedy[greedy_match]) {
      ++greedy_match;
    }
    // Steps before the first whose reference top-2 gap is within twice the measured error.
    size_t must_match = ref.greedy.size();
    for (size_t i = 0; i < ref.greedy_gaps.size() && i < ref.greedy.size(); ++i) {
      if (ref.greedy_gaps[i] <= 2.0 * diff) {
        must_match = i;
        break;
      }
    }
    // Per position: a routing decision on a near tie (BF16 router input vs fp32) changes one
    // token's expert mix; such positions are counted, not averaged away.
    // FP8 checkpoints run W8A8 by default (per-token FP8 activations, as the official FP8
    // checkpoints prescribe), while the reference dequantises the weights only.
    const double tol = c.scheme == "bf16" ? 3e-2 : 1.5e-1;
    std::vector<std::pair<double, size_t>> per_pos;
    for (size_t p = 0; p < ref.ids.size(); ++p) {
      double m = 0;
      for (int64_t v = 0; v < vocab; ++v) {
        m = std::max(m, std::fabs(static_cast<double>(got->prompt_logits[p * vocab + v]) -
                                  ref.logits[p * vocab + v]));
      }
      per_pos.emplace_back(m / max_ref, p);
    }
    std::sort(per_pos.rbegin(), per_pos.rend());
    size_t within = 0;
    for (const auto& e : per_pos) within += e.first <= tol ? 1 : 0;
    std::printf(
        "[cuda-reference] %-11s %-11s max|gpu-ref|/max|ref| = %.3e (worst positions %zu: %.2e, "
        "%zu: %.2e, %zu: %.2e; %zu/%zu within %.0e), max|gpu-cpu|/max|ref| = %.3e, argmax "
        "%zu/%zu agree, greedy %zu/%zu match (%zu required)\n",
        c.variant.c_str(), c.scheme.c_str(), diff / max_ref, per_pos[0].second, per_pos[0].first,
        per_pos[1].second, per_pos[1].first, per_pos[2].second, per_pos[2].first, within,
        per_pos.size(), tol, diff_cpu / max_ref, argmax_agree, ref.ids.size(), greedy_match,
        ref.greedy.size(), must_match);
    EXPECT_GE(within, per_pos.size() * 9 / 10);
    EXPECT_LE(diff / max_ref, 0.5);
    EXPECT_GE(argmax_agree, ref.ids.size() * 9 / 10);
    if (c.scheme != "bf16") {
      // Dense linears with BF16 activations (weights dequantised): closer to the reference.
      CudaBackendOptions exact = SmallOptions();
      exact.fp8_activations = false;
      Result<std::unique_ptr<CudaBackend>> b = CudaBackend::Load(dir, {}, nullptr, exact);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      Result<RunResult> r = RunModel(**b, ref);
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      const double d = MaxDiff(r->prompt_logits, ref.logits) / max_ref;
      std::printf(
          "[cuda-reference] %-11s %-11s without FP8 activations in the dense linears: "
          "max|gpu-ref|/max|ref| = %.3e\n",
          c.variant.c_str(), c.scheme.c_str(), d);
      EXPECT_LE(d, 5e-2);
    }
    EXPECT_GE(greedy_match, std::min<size_t>(must_match, 8));
  }
}

TEST(CudaBackendTest, TensorParallelTwoRanksMatchOneRank) {
  const fs::path dir = ModelsDir() / "glm_base";
  Result<ModelConfig> config = engine::LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  const Reference ref = LoadReference(dir, "", config->vocab_size);
  Result<ModelWeights> w = engine::LoadModelWeights(dir, {});
  ASSERT_TRUE(w.ok());
  Result<std::unique_ptr<CudaBackend>> one =
      CudaBackend::Create(std::move(*w), nullptr, SmallOptions());
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  Result<RunResult> want = RunModel(**one, ref);
  ASSERT_TRUE(want.ok());

  engine::LocalKeyValueStore store;
  engine::GlooOptions gloo;
  gloo.prefix = "cuda_tp_" + std::to_string(::getpid());
  std::vector<Result<RunResult>> results(2, Result<RunResult>(Internal("rank did not run")));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      Result<std::unique_ptr<engine::GlooCommunicator>> comm =
          engine::GlooCommunicator::Create(rank, 2, &store, gloo);
      if (!comm.ok()) {
        results[rank] = comm.status();
        return;
      }
      engine::LoadOptions load;
      load.tp_rank = rank;
      load.tp_size = 2;
      Result<ModelWeights> rw = engine::LoadModelWeights(dir, load);
      if (!rw.ok()) {
        results[rank] = rw.status();
        return;
      }
      CudaBackendOptions opts = SmallOptions();
      opts.collectives = CollectiveMode::kHost;
      Result<std::unique_ptr<CudaBackend>> b =
          CudaBackend::Create(std::move(*rw), comm->get(), opts);
      if (!b.ok()) {
        results[rank] = b.status();
        return;
      }
      results[rank] = RunModel(**b, ref);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < 2; ++rank)
    ASSERT_TRUE(results[rank].ok()) << results[rank].status().ToString();
  const double max_ref = MaxAbs(want->prompt_logits);
  const double diff = MaxDiff(results[0]->prompt_logits, want->prompt_logits);
  std::printf("[cuda-tp] glm_base tp=2 vs tp=1: max|diff|/max|ref| = %.3e, greedy %s\n",
              diff / max_ref, results[0]->greedy == want->greedy ? "equal" : "differs");
  EXPECT_LE(diff / max_ref, 2e-2);
  EXPECT_EQ(results[0]->prompt_logits, results[1]->prompt_logits);
  EXPECT_EQ(results[0]->greedy, results[1]->greedy);
}

ModelConfig AirTwoLayers(bool fp8) {
  Result<ModelConfig> c = engine::BuiltinConfig("glm-4.5-air");
  SPARK_CHECK(c.ok());
  ModelConfig cfg = *c;
  cfg.num_hidden_layers = 2;  // layer 0 dense, layer 1 MoE
  if (!fp8) cfg.quant = engine::QuantConfig{};
  return cfg;
}

// Batches: two prefill chunks, then their decode steps together with a third prefill chunk.
std::vector<ForwardBatch> MixedBatches(int64_t vocab) {
  auto tokens = [&](int n, int salt) {
    std::vector<int32_t> t;
    for (int i = 0; i < n; ++i)
      t.push_back(static_cast<int32_t>((i * 7919 + salt * 104729) % vocab));
    return t;
  };
  std::vector<ForwardBatch> b(3);
  b[0].chunks.push_back({.seq_id = 1, .start_pos = 0, .tokens = tokens(12, 1)});
  b[0].chunks.push_back({.seq_id = 2, .start_pos = 0, .tokens = tokens(5, 2), .all_logits = true});
  b[1].chunks.push_back({.seq_id = 1, .start_pos = 12, .tokens = tokens(1, 3)});
  b[1].chunks.push_back({.seq_id = 3, .start_pos = 0, .tokens = tokens(9, 4)});
  b[1].chunks.push_back({.seq_id = 2, .start_pos = 5, .tokens = tokens(1, 5)});
  b[2].chunks.push_back({.seq_id = 2, .start_pos = 6, .tokens = tokens(1, 6)});
  b[2].chunks.push_back({.seq_id = 3, .start_pos = 9, .tokens = tokens(1, 7)});
  b[2].chunks.push_back({.seq_id = 1, .start_pos = 13, .tokens = tokens(1, 8)});
  return b;
}

// The default options (shared expert inside the MoE kernels, CudaBackendOptions::
// fuse_shared_experts) packed from a checkpoint (Create) and generated on the device
// (CreateDummy), and the separate shared-expert MLP, against the CPU backend.
TEST(CudaBackendTest, RandomMoeAtAirWidthsMatchesCpuBackend) {
  for (bool fp8 : {false, true}) {
    SCOPED_TRACE(fp8 ? "fp8_channel" : "bf16");
    const ModelConfig cfg = AirTwoLayers(fp8);
    ASSERT_EQ(cfg.n_shared_experts, 1);
    engine::LoadOptions load;
    load.seed = 11;
    Result<ModelWeights> wg = engine::MakeDummyWeights(cfg, load);
    ASSERT_TRUE(wg.ok()) << wg.status().ToString();
    CudaBackendOptions opts = SmallOptions();
    opts.kv_cache_bytes = int64_t{256} << 20;
    Result<std::unique_ptr<CudaBackend>> gpu = CudaBackend::Create(std::move(*wg), nullptr, opts);
    ASSERT_TRUE(gpu.ok()) << gpu.status().ToString();
    DummyWeightsSpec spec;
    spec.seed = 11;
    Result<std::unique_ptr<CudaBackend>> gen = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
    ASSERT_TRUE(gen.ok()) << gen.status().ToString();
    // FP8: the default W8A8 dense linears (per-token FP8 activations) and, closer to the fp32
    // reference, BF16 activations with dequantised weights.
    CudaBackendOptions exact_opts = opts;
    exact_opts.fp8_activations = false;
    Result<std::unique_ptr<CudaBackend>> exact =
        CudaBackend::CreateDummy(cfg, spec, nullptr, exact_opts);
    ASSERT_TRUE(exact.ok()) << exact.status().ToString();
    CudaBackendOptions separate_opts = opts;
    separate_opts.fuse_shared_experts = false;
    Result<std::unique_ptr<CudaBackend>> separate =
        CudaBackend::CreateDummy(cfg, spec, nullptr, separate_opts);
    ASSERT_TRUE(separate.ok()) << separate.status().ToString();
    // Attention on CUDA cores (fp32 P V) instead of tensor cores (P rounded to BF16).
    CudaBackendOptions cuda_core_opts = opts;
    cuda_core_opts.attention_tensor_cores = false;
    Result<std::unique_ptr<CudaBackend>> cuda_core =
        CudaBackend::CreateDummy(cfg, spec, nullptr, cuda_core_opts);
    ASSERT_TRUE(cuda_core.ok()) << cuda_core.status().ToString();

    Result<ModelWeights> wc = engine::MakeDummyWeights(cfg, load);
    ASSERT_TRUE(wc.ok());
    engine::CpuBackendOptions cpu_opts;
    cpu_opts.kv_cache_bytes = int64_t{64} << 20;
    Result<std::unique_ptr<engine::CpuBackend>> cpu =
        engine::CpuBackend::Create(std::move(*wc), nullptr, cpu_opts);
    ASSERT_TRUE(cpu.ok());
    int step = 0;
    for (const ForwardBatch& batch : MixedBatches(cfg.vocab_size)) {
      Result<ForwardOutput> a = (*gpu)->Forward(batch);
      Result<ForwardOutput> g = (*gen)->Forward(batch);
      Result<ForwardOutput> b = (*cpu)->Forward(batch);
      Result<ForwardOutput> e = (*exact)->Forward(batch);
      Result<ForwardOutput> s = (*separate)->Forward(batch);
      Result<ForwardOutput> cc = (*cuda_core)->Forward(batch);
      ASSERT_TRUE(cc.ok()) << cc.status().ToString();
      ASSERT_TRUE(e.ok()) << e.status().ToString();
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      ASSERT_TRUE(g.ok()) << g.status().ToString();
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      ASSERT_EQ(a->row_begin, b->row_begin);
      const double max_ref = MaxAbs(b->logits);
      const double diff = MaxDiff(a->logits, b->logits);
      const int64_t rows = static_cast<int64_t>(b->logits.size()) / cfg.vocab_size;
      int agree = 0;
      for (int64_t r = 0; r < rows; ++r) {
        const float* want = b->logits.data() + r * cfg.vocab_size;
        const int32_t x = Argmax(want, cfg.vocab_size);
        const int32_t y = Argmax(a->logits.data() + r * cfg.vocab_size, cfg.vocab_size);
        if (x == y || want[x] - want[y] <= 2.0 * diff) ++agree;
      }
      const double separate_diff = MaxDiff(s->logits, b->logits) / max_ref;
      std::printf(
          "[cuda-air] %-11s step %d: max|gpu-cpu|/max|cpu| = %.3e (separate shared-expert MLP "
          "%.3e), argmax %d/%lld agree, device-generated weights %s\n",
          fp8 ? "fp8_channel" : "bf16", step, diff / max_ref, separate_diff, agree,
          static_cast<long long>(rows), a->logits == g->logits ? "bit-identical" : "DIFFER");
      const double exact_diff = MaxDiff(e->logits, b->logits) / max_ref;
      const double cuda_core_diff = MaxDiff(cc->logits, b->logits) / max_ref;
      // Rows of the default (tensor-core attention) within the bound.
      const double row_tol = fp8 ? 1.5e-1 : 2e-2;
      int rows_within = 0;
      for (int64_t r = 0; r < rows; ++r) {
        double d = 0;
        for (int64_t v = 0; v < cfg.vocab_size; ++v) {
          const size_t i = static_cast<size_t>(r * cfg.vocab_size + v);
          d = std::max(d, static_cast<double>(std::fabs(a->logits[i] - b->logits[i])));
        }
        rows_within += d / max_ref <= row_tol;
      }
      std::printf(
          "[cuda-air] %-11s step %d: without FP8 activations in the dense linears "
          "max|gpu-cpu|/max|cpu| = %.3e; attention on CUDA cores %.3e; rows within %.0e %d/%lld\n",
          fp8 ? "fp8_channel" : "bf16", step, exact_diff, cuda_core_diff, row_tol, rows_within,
          static_cast<long long>(rows));
      // BF16: 6.3e-3..6.8e-3 measured on an H200; FP8 W8A8: ~0.11; FP8 with BF16 activations
      // in the dense linears (the MoE still quantises its activations): ~1.2e-2.
      // The shared expert in the MoE kernels: the same error as the separate MLP (H100).
      // Tensor-core attention (BF16 P) moves the MoE input by ~2e-3, enough to flip a near-tie
      // of this random router (H100, 2026-12-07: bf16 step 1 at 7.3e-2 with the tensor-core
      // default, argmax agreeing): the default is held to the bound in all rows but one and to
      // the W8A8 bound overall, attention on CUDA cores to the bound everywhere.
      EXPECT_LE(cuda_core_diff, row_tol);
      EXPECT_GE(rows_within, rows - 1);
      EXPECT_LE(diff / max_ref, 1.5e-1);
      EXPECT_LE(separate_diff, 1.5e-1);
      EXPECT_LE(exact_diff, fp8 ? 5e-2 : 1.5e-1);
      EXPECT_EQ(agree, rows);
      EXPECT_EQ(a->logits, g->logits) << "CreateDummy must equal Create(MakeDummyWeights)";
      ++step;
    }
    // A chunk above 256 tokens runs the shared expert's dense copy: the separate path exactly.
    std::vector<int32_t> long_prompt;
    for (int i = 0; i < 300; ++i)
      long_prompt.push_back(static_cast<int32_t>(i * 37 % cfg.vocab_size));
    ForwardBatch big;
    big.chunks.push_back({.seq_id = 9, .start_pos = 0, .tokens = long_prompt, .all_logits = true});
    Result<ForwardOutput> a = (*gpu)->Forward(big);
    Result<ForwardOutput> s = (*separate)->Forward(big);
    ASSERT_TRUE(a.ok() && s.ok());
    EXPECT_TRUE(a->logits == s->logits)
        << "300 tokens: max|diff| " << MaxDiff(a->logits, s->logits);
  }
}

TEST(CudaBackendTest, AirWidthsUnderGb10SharedMemoryCap) {
  // GB10's 101,376 bytes of shared memory per block emulated: every kernel (attention, MoE)
  // must pick a configuration that fits and give the uncapped results.
  for (bool fp8 : {false, true}) {
    SCOPED_TRACE(fp8 ? "fp8_channel" : "bf16");
    const ModelConfig cfg = AirTwoLayers(fp8);
    CudaBackendOptions opts = SmallOptions();
    opts.kv_cache_bytes = int64_t{256} << 20;
    DummyWeightsSpec spec;
    spec.seed = 11;
    Result<std::unique_ptr<CudaBackend>> full = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
    ASSERT_TRUE(full.ok()) << full.status().ToString();
    opts.smem_cap_bytes = 101376;
    Result<std::unique_ptr<CudaBackend>> capped =
        CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
    ASSERT_TRUE(capped.ok()) << capped.status().ToString();
    int step = 0;
    for (const ForwardBatch& batch : MixedBatches(cfg.vocab_size)) {
      Result<ForwardOutput> a = (*full)->Forward(batch);
      Result<ForwardOutput> k = (*capped)->Forward(batch);
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      ASSERT_TRUE(k.ok()) << k.status().ToString();
      const double d = MaxDiff(k->logits, a->logits) / MaxAbs(a->logits);
      std::printf("[cuda-air-gb10] %-11s step %d: capped vs uncapped max|diff|/max = %.3e\n",
                  fp8 ? "fp8_channel" : "bf16", step++, d);
      EXPECT_LE(d, 2e-2);
    }
  }
}

TEST(CudaBackendTest, AirWidthsForwardTimings) {
  ModelConfig cfg = AirTwoLayers(true);
  cfg.num_hidden_layers = 4;
  CudaBackendOptions opts;
  opts.kv_cache_bytes = int64_t{2} << 30;
  opts.max_batch_tokens = 2048;
  Result<std::unique_ptr<CudaBackend>> b = CudaBackend::CreateDummy(cfg, {}, nullptr, opts);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  auto time_ms = [&](const ForwardBatch& batch) {
    cudaDeviceSynchronize();
    const auto t0 = std::chrono::steady_clock::now();
    Result<ForwardOutput> out = (*b)->Forward(batch);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  std::vector<int32_t> prompt(2048);
  for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i * 31 % 151552);
  ForwardBatch pre;
  for (int s = 0; s < 32; ++s) {
    pre.chunks.clear();
    pre.chunks.push_back({.seq_id = static_cast<uint64_t>(s),
                          .start_pos = 0,
                          .tokens = std::vector<int32_t>(prompt.begin(), prompt.begin() + 1024)});
    const double ms = time_ms(pre);
    if (s == 0 || s == 31)
      std::printf("[cuda-air-timing] 4 layers FP8, prefill 1024 tokens: %.1f ms\n", ms);
  }
  for (int batch : {1, 8, 32}) {
    ForwardBatch dec;
    for (int s = 0; s < batch; ++s) {
      dec.chunks.push_back({.seq_id = static_cast<uint64_t>(s),
                            .start_pos = (*b)->CachedTokens(static_cast<uint64_t>(s)),
                            .tokens = {7}});
    }
    time_ms(dec);
    for (auto& ch : dec.chunks) ch.start_pos += 1;
    double total = 0;
    const int steps = 5;
    for (int i = 0; i < steps; ++i) {
      total += time_ms(dec);
      for (auto& ch : dec.chunks) ch.start_pos += 1;
    }
    std::printf(
        "[cuda-air-timing] 4 layers FP8 (+embed, lm_head), decode batch %d at ~1030 context: %.2f "
        "ms per step\n",
        batch, total / steps);
  }
}

// Decode steps replayed from CUDA graphs against the same steps run eagerly on a second backend
// with the same weights: batches of 1 to 6 sequences (buckets 1, 2, 4, 8: padding rows), contexts
// from 4 to past 4,096 tokens (the graph tables grow beyond their first 256 blocks: recapture),
// and a prefill chunk between decode steps (eager on both).
TEST(CudaBackendTest, DecodeGraphsMatchEagerSteps) {
  for (bool fp8 : {true, false}) {
    SCOPED_TRACE(fp8 ? "fp8_channel" : "bf16");
    const ModelConfig cfg = AirTwoLayers(fp8);
    DummyWeightsSpec spec;
    spec.seed = 5;
    CudaBackendOptions opts = SmallOptions();
    opts.kv_cache_bytes = int64_t{512} << 20;
    opts.cuda_graphs = true;
    CudaBackendOptions eager_opts = opts;
    eager_opts.cuda_graphs = false;
    Result<std::unique_ptr<CudaBackend>> g = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    Result<std::unique_ptr<CudaBackend>> e =
        CudaBackend::CreateDummy(cfg, spec, nullptr, eager_opts);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    CudaBackend& graphs = **g;
    CudaBackend& eager = **e;
    EXPECT_EQ(graphs.KvCapacityTokens(), eager.KvCapacityTokens());
    EXPECT_EQ(graphs.FreeKvTokens(), eager.FreeKvTokens());
    EXPECT_TRUE(graphs.graph_stats().disabled_reason.empty())
        << graphs.graph_stats().disabled_reason;
    EXPECT_FALSE(eager.graph_stats().disabled_reason.empty());
    const int64_t vocab = cfg.vocab_size;

    // Both backends run the same batch; returns the eager logits after comparing. Random router
    // weights put many experts within rounding of each other, so the summation-order differences
    // of split attention flip a few expert choices: most rows agree within 2e-2 of the largest
    // logit, every row within 0.25.
    int compared = 0;
    int argmax_equal = 0;
    int close = 0;
    auto both = [&](const ForwardBatch& batch) {
      Result<ForwardOutput> a = graphs.Forward(batch);
      Result<ForwardOutput> b = eager.Forward(batch);
      EXPECT_TRUE(a.ok()) << a.status().ToString();
      EXPECT_TRUE(b.ok()) << b.status().ToString();
      if (!a.ok() || !b.ok()) return std::vector<float>{};
      EXPECT_EQ(a->logits.size(), b->logits.size());
      EXPECT_EQ(a->row_begin, b->row_begin);
      for (size_t r = 0; r * vocab < b->logits.size(); ++r) {
        const std::vector<float> gr(a->logits.begin() + r * vocab,
                                    a->logits.begin() + (r + 1) * vocab);
        const std::vector<float> er(b->logits.begin() + r * vocab,
                                    b->logits.begin() + (r + 1) * vocab);
        const double rel = MaxDiff(gr, er) / MaxAbs(er);
        EXPECT_LE(rel, 0.25) << "row " << r;
        close += rel <= 2e-2;
        argmax_equal += Argmax(gr.data(), vocab) == Argmax(er.data(), vocab);
        ++compared;
      }
      return b->logits;
    };
    // Prefill six sequences; the last one in chunks of 512 up to 4,100 tokens.
    const std::vector<int> lengths = {4, 17, 40, 100, 500, 4100};
    std::vector<int64_t> pos(lengths.size(), 0);
    std::vector<int32_t> next(lengths.size(), 0);
    for (size_t s = 0; s < lengths.size(); ++s) {
      while (pos[s] < lengths[s]) {
        const int64_t n = std::min<int64_t>(512, lengths[s] - pos[s]);
        std::vector<int32_t> t;
        for (int64_t i = 0; i < n; ++i)
          t.push_back(static_cast<int32_t>((pos[s] + i) * 7919 % vocab));
        ForwardBatch pre;
        pre.chunks.push_back({.seq_id = s + 1, .start_pos = pos[s], .tokens = t});
        std::vector<float> logits = both(pre);
        ASSERT_FALSE(logits.empty());
        next[s] = Argmax(logits.data(), vocab);
        pos[s] += n;
      }
    }
    // Decode steps over rotating subsets of 1..6 sequences; one prefill chunk in between.
    int decode_steps = 0;
    for (int step = 0; step < 18; ++step) {
      const int batch = 1 + step % 6;
      ForwardBatch dec;
      for (int i = 0; i < batch; ++i) {
        const size_t s = static_cast<size_t>((step + i) % 6);
        dec.chunks.push_back({.seq_id = s + 1, .start_pos = pos[s], .tokens = {next[s]}});
      }
      std::vector<float> logits = both(dec);
      ASSERT_FALSE(logits.empty());
      ++decode_steps;
      for (int i = 0; i < batch; ++i) {
        const size_t s = static_cast<size_t>((step + i) % 6);
        next[s] = Argmax(logits.data() + int64_t{i} * vocab, vocab);
        pos[s] += 1;
      }
      if (step == 8) {
        ForwardBatch pre;
        pre.chunks.push_back({.seq_id = 1, .start_pos = pos[0], .tokens = {1, 2, 3}});
        std::vector<float> l = both(pre);
        ASSERT_FALSE(l.empty());
        next[0] = Argmax(l.data(), vocab);
        pos[0] += 3;
      }
    }
    EXPECT_GE(argmax_equal, compared * 9 / 10) << argmax_equal << " of " << compared;
    // BF16: every row within 2e-2 on an H100. FP8 with per-token FP8 activations (the default
    // W8A8 linears): an order-level difference moves an activation across an FP8 rounding step
    // now and then, so fewer rows stay that close (56 of 78 on an H100).
    EXPECT_GE(close, compared * (fp8 ? 6 : 9) / 10)
        << close << " of " << compared << " rows within 2e-2";
    const CudaGraphStats st = graphs.graph_stats();
    EXPECT_EQ(st.launches, decode_steps);
    EXPECT_GE(st.captures, 4) << "buckets 1, 2, 4 and 8";
    EXPECT_GT(st.table_blocks, 256) << "the 4,100-token sequence needs 257 blocks";
    EXPECT_EQ(eager.graph_stats().launches, 0);
    std::printf(
        "[cuda-graphs] %s: %d decode steps from graphs, %lld captures, table %lld blocks, "
        "argmax equal %d/%d, within 2e-2 %d/%d\n",
        fp8 ? "fp8" : "bf16", decode_steps, static_cast<long long>(st.captures),
        static_cast<long long>(st.table_blocks), argmax_equal, compared, close, compared);
    for (uint64_t s = 1; s <= 6; ++s) {
      graphs.Release(s);
      eager.Release(s);
    }
    EXPECT_EQ(graphs.FreeKvTokens(), graphs.KvCapacityTokens());
    // The padding block's sequence id is reserved.
    graphs.Release(~uint64_t{0});
    EXPECT_EQ(graphs.FreeKvTokens(), graphs.KvCapacityTokens());
    EXPECT_EQ(graphs.TruncateSequence(~uint64_t{0}, 0).code(), StatusCode::kInvalidArgument);
    ForwardBatch reserved;
    reserved.chunks.push_back({.seq_id = ~uint64_t{0}, .start_pos = 0, .tokens = {1}});
    EXPECT_EQ(graphs.Forward(reserved).status().code(), StatusCode::kInvalidArgument);
  }
}

// ForwardBatch::logits_on_device: the rows stay in device memory, bit for bit the host logits of
// an identical backend (prefill steps eagerly, decode steps from CUDA graphs), and the GPU
// sampler on the backend's stream samples them in place (contiguous rows) or copies them
// (a subset) with the same tokens as from host rows.
TEST(CudaBackendTest, DeviceLogitsEqualHostLogitsAndFeedTheGpuSampler) {
  const ModelConfig cfg = AirTwoLayers(true);
  DummyWeightsSpec spec;
  spec.seed = 9;
  CudaBackendOptions opts = SmallOptions();
  opts.kv_cache_bytes = int64_t{256} << 20;
  opts.cuda_graphs = true;
  Result<std::unique_ptr<CudaBackend>> h = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  Result<std::unique_ptr<CudaBackend>> d = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  CudaBackend& host = **h;
  CudaBackend& dev = **d;
  const int64_t vocab = cfg.vocab_size;
  Result<std::unique_ptr<GpuSampler>> hs = GpuSampler::Create(vocab, 8, host.stream());
  Result<std::unique_ptr<GpuSampler>> ds = GpuSampler::Create(vocab, 8, dev.stream());
  ASSERT_TRUE(hs.ok() && ds.ok());
  engine::SamplingParams greedy;
  greedy.temperature = 0.0f;
  engine::SamplingParams sampled;
  sampled.temperature = 0.8f;
  sampled.top_k = 40;

  const std::vector<int> prompt = {5, 9, 13};
  std::vector<int64_t> pos(prompt.size(), 0);
  std::vector<int32_t> next(prompt.size(), 0);
  int device_steps = 0;
  for (int step = 0; step < 7; ++step) {
    ForwardBatch batch;
    for (size_t s = 0; s < prompt.size(); ++s) {
      std::vector<int32_t> t;
      if (step == 0) {
        for (int i = 0; i < prompt[s]; ++i) t.push_back(static_cast<int32_t>((s * 31 + i) % 997));
      } else {
        t = {next[s]};
      }
      batch.chunks.push_back({.seq_id = s + 1, .start_pos = pos[s], .tokens = t});
    }
    ForwardBatch on_device = batch;
    on_device.logits_on_device = true;
    Result<ForwardOutput> a = host.Forward(batch);
    Result<ForwardOutput> b = dev.Forward(on_device);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    ASSERT_EQ(a->device_logits, nullptr);
    ASSERT_NE(b->device_logits, nullptr) << "step " << step;
    EXPECT_TRUE(b->logits.empty());
    EXPECT_EQ(a->row_begin, b->row_begin);
    std::vector<float> copied(a->logits.size());
    ASSERT_EQ(cudaMemcpyAsync(copied.data(), b->device_logits, copied.size() * sizeof(float),
                              cudaMemcpyDeviceToHost, dev.stream()),
              cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(dev.stream()), cudaSuccess);
    EXPECT_EQ(std::memcmp(copied.data(), a->logits.data(), copied.size() * sizeof(float)), 0)
        << "step " << step;
    ++device_steps;

    // Step 0 samples rows 0 and 2 (copied), later steps every row (in place).
    std::vector<size_t> rows = step == 0 ? std::vector<size_t>{0, 2} : std::vector<size_t>{0, 1, 2};
    std::vector<engine::BatchSampleRow> host_rows;
    std::vector<engine::BatchSampleRow> dev_rows;
    for (size_t s : rows) {
      engine::BatchSampleRow r;
      r.params = s == 1 ? &sampled : &greedy;
      r.seed = 7 + s;
      r.draw = static_cast<uint64_t>(step);
      r.logits = a->logits.data() + a->row_begin[s] * vocab;
      host_rows.push_back(r);
      r.logits = b->device_logits + b->row_begin[s] * vocab;
      r.on_device = true;
      dev_rows.push_back(r);
    }
    Result<std::vector<engine::SampleResult>> ta = (*hs)->SampleBatch(vocab, host_rows);
    Result<std::vector<engine::SampleResult>> tb = (*ds)->SampleBatch(vocab, dev_rows);
    ASSERT_TRUE(ta.ok()) << ta.status().ToString();
    ASSERT_TRUE(tb.ok()) << tb.status().ToString();
    ASSERT_EQ(ta->size(), rows.size());
    ASSERT_EQ(tb->size(), rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ((*ta)[i].token, (*tb)[i].token) << "step " << step << " row " << rows[i];
      next[rows[i]] = (*ta)[i].token;
    }
    for (size_t s = 0; s < prompt.size(); ++s) {
      pos[s] += static_cast<int64_t>(batch.chunks[s].tokens.size());
    }
  }
  EXPECT_EQ(device_steps, 7);
  EXPECT_GT(dev.graph_stats().launches, 0) << "decode steps ran from CUDA graphs";
}

// CudaBackendOptions::programmatic_launch changes when kernels are scheduled, never what they
// compute: logits bit for bit equal to plain launches, for prefill and mixed batches (eager) and
// decode steps (eager and replayed from CUDA graphs), FP8 and BF16 weights.
// Two backends on the same weights, with options `base` and `changed` (applied to SmallOptions),
// give bit-identical logits over mixed batches, prefill chunks and decode steps (eager and from
// CUDA graphs), for FP8 and BF16 weights; `tag` names the change in the log line.
void ExpectBitIdenticalLogits(const char* tag, const std::function<void(CudaBackendOptions&)>& base,
                              const std::function<void(CudaBackendOptions&)>& changed) {
  for (bool fp8 : {true, false}) {
    for (bool graphs : {false, true}) {
      SCOPED_TRACE(std::string(fp8 ? "fp8_channel" : "bf16") + (graphs ? " graphs" : " eager"));
      const ModelConfig cfg = AirTwoLayers(fp8);
      DummyWeightsSpec spec;
      spec.seed = 7;
      CudaBackendOptions opts = SmallOptions();
      opts.kv_cache_bytes = int64_t{256} << 20;
      opts.cuda_graphs = graphs;
      base(opts);
      CudaBackendOptions changed_opts = opts;
      changed(changed_opts);
      Result<std::unique_ptr<CudaBackend>> a = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      Result<std::unique_ptr<CudaBackend>> b =
          CudaBackend::CreateDummy(cfg, spec, nullptr, changed_opts);
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      const int64_t vocab = cfg.vocab_size;
      std::vector<int32_t> next(4, 0);
      std::vector<int64_t> pos(4, 0);
      int64_t rows = 0;
      auto both = [&](const ForwardBatch& batch) -> std::vector<float> {
        Result<ForwardOutput> x = (*a)->Forward(batch);
        Result<ForwardOutput> y = (*b)->Forward(batch);
        EXPECT_TRUE(x.ok() && y.ok());
        if (!x.ok() || !y.ok()) return {};
        EXPECT_EQ(x->row_begin, y->row_begin);
        EXPECT_TRUE(x->logits == y->logits) << "max |diff| " << MaxDiff(x->logits, y->logits);
        rows += static_cast<int64_t>(x->logits.size()) / vocab;
        return x->logits;
      };
      for (const ForwardBatch& batch : MixedBatches(vocab)) ASSERT_FALSE(both(batch).empty());
      // Four fresh sequences of different lengths, then decode steps of all of them.
      const std::vector<int> lengths = {3, 30, 300, 700};
      for (size_t s = 0; s < lengths.size(); ++s) {
        while (pos[s] < lengths[s]) {
          const int64_t n = std::min<int64_t>(512, lengths[s] - pos[s]);
          std::vector<int32_t> t;
          for (int64_t i = 0; i < n; ++i)
            t.push_back(static_cast<int32_t>((pos[s] + i) * 131 % vocab));
          ForwardBatch pre;
          pre.chunks.push_back({.seq_id = 10 + s, .start_pos = pos[s], .tokens = t});
          const std::vector<float> logits = both(pre);
          ASSERT_FALSE(logits.empty());
          next[s] = Argmax(logits.data(), vocab);
          pos[s] += n;
        }
      }
      for (int step = 0; step < 6; ++step) {
        ForwardBatch dec;
        const size_t n = step % 2 == 0 ? lengths.size() : 3;  // buckets 4 and 3 (padded)
        for (size_t s = 0; s < n; ++s)
          dec.chunks.push_back({.seq_id = 10 + s, .start_pos = pos[s], .tokens = {next[s]}});
        const std::vector<float> logits = both(dec);
        ASSERT_FALSE(logits.empty());
        for (size_t s = 0; s < n; ++s) {
          next[s] = Argmax(logits.data() + s * vocab, vocab);
          ++pos[s];
        }
      }
      if (graphs) {
        EXPECT_GT((*a)->graph_stats().launches, 0);
        EXPECT_EQ((*a)->graph_stats().launches, (*b)->graph_stats().launches);
      }
      std::printf("[%s] %s %s: %lld rows bit-identical\n", tag, fp8 ? "fp8_channel" : "bf16",
                  graphs ? "graphs" : "eager", static_cast<long long>(rows));
    }
  }
}

TEST(CudaBackendTest, ProgrammaticLaunchGivesBitIdenticalLogits) {
  ExpectBitIdenticalLogits(
      "pdl", [](CudaBackendOptions& o) { o.programmatic_launch = false; },
      [](CudaBackendOptions& o) { o.programmatic_launch = true; });
}

// The L2 prefetches run on a side stream forked from and joined to the backend's stream (and
// captured into the decode graphs with it); they read weights only.
TEST(CudaBackendTest, L2PrefetchGivesBitIdenticalLogits) {
  ExpectBitIdenticalLogits(
      "l2_prefetch", [](CudaBackendOptions& o) { o.l2_prefetch_percent = 0; },
      [](CudaBackendOptions& o) { o.l2_prefetch_percent = 50; });
}

// AttentionShape::tensor_cores through the whole backend: prefill chunks and decode steps (with
// and without key splits) against a backend on the CUDA-core attention kernel, same weights.
TEST(CudaBackendTest, TensorCoreAttentionTracksTheCudaCoreKernel) {
  // Dense layers with BF16 weights: a random router would turn the kernels' rounding differences
  // into different expert choices, and per-token FP8 activations into FP8 rounding steps (FP8
  // weights: 0.084 on an H100).
  ModelConfig cfg = AirTwoLayers(false);
  cfg.first_k_dense_replace = cfg.num_hidden_layers;
  DummyWeightsSpec spec;
  spec.seed = 11;
  CudaBackendOptions opts = SmallOptions();
  opts.kv_cache_bytes = int64_t{256} << 20;
  CudaBackendOptions tc_opts = opts;
  tc_opts.attention_tensor_cores = true;
  Result<std::unique_ptr<CudaBackend>> a = CudaBackend::CreateDummy(cfg, spec, nullptr, tc_opts);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  Result<std::unique_ptr<CudaBackend>> b = CudaBackend::CreateDummy(cfg, spec, nullptr, opts);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  const int64_t vocab = cfg.vocab_size;
  int compared = 0;
  int argmax_equal = 0;
  double worst = 0;
  auto both = [&](const ForwardBatch& batch) {
    Result<ForwardOutput> x = (*a)->Forward(batch);
    Result<ForwardOutput> y = (*b)->Forward(batch);
    EXPECT_TRUE(x.ok() && y.ok());
    if (!x.ok() || !y.ok()) return std::vector<float>{};
    for (size_t r = 0; r * vocab < y->logits.size(); ++r) {
      const std::vector<float> xr(x->logits.begin() + r * vocab,
                                  x->logits.begin() + (r + 1) * vocab);
      const std::vector<float> yr(y->logits.begin() + r * vocab,
                                  y->logits.begin() + (r + 1) * vocab);
      const double rel = MaxDiff(xr, yr) / MaxAbs(yr);
      worst = std::max(worst, rel);
      EXPECT_LE(rel, 2e-2) << "row " << r;
      argmax_equal += Argmax(xr.data(), vocab) == Argmax(yr.data(), vocab);
      ++compared;
    }
    return y->logits;
  };
  const std::vector<int> lengths = {40, 700, 1500};
  std::vector<int64_t> pos(lengths.size(), 0);
  std::vector<int32_t> next(lengths.size(), 0);
  for (size_t s = 0; s < lengths.size(); ++s) {
    while (pos[s] < lengths[s]) {
      const int64_t n = std::min<int64_t>(512, lengths[s] - pos[s]);
      std::vector<int32_t> t;
      for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<int32_t>((pos[s] + i) * 31 % vocab));
      ForwardBatch pre;
      pre.chunks.push_back({.seq_id = s + 1, .start_pos = pos[s], .tokens = t});
      const std::vector<float> logits = both(pre);
      ASSERT_FALSE(logits.empty());
      next[s] = Argmax(logits.data(), vocab);
      pos[s] += n;
    }
  }
  for (int step = 0; step < 8; ++step) {
    ForwardBatch dec;
    const size_t n = step % 2 == 0 ? 1 : lengths.size();  // one long sequence: key splits
    for (size_t s = 0; s < n; ++s) {
      const size_t seq = step % 2 == 0 ? 2 : s;
      dec.chunks.push_back({.seq_id = seq + 1, .start_pos = pos[seq], .tokens = {next[seq]}});
    }
    const std::vector<float> logits = both(dec);
    ASSERT_FALSE(logits.empty());
    for (size_t i = 0; i < n; ++i) {
      const size_t seq = step % 2 == 0 ? 2 : i;
      next[seq] = Argmax(logits.data() + static_cast<int64_t>(i) * vocab, vocab);
      pos[seq] += 1;
    }
  }
  EXPECT_GE(argmax_equal, compared * 9 / 10) << argmax_equal << " of " << compared;
  std::printf("[tc-attention] max rel logit diff %.3g, argmax equal %d/%d\n", worst, argmax_equal,
              compared);
}

TEST(CudaBackendTest, BatchSemanticsAndKvAccounting) {
  const fs::path dir = ModelsDir() / "glm_base";
  Result<ModelWeights> w = engine::LoadModelWeights(dir, {});
  ASSERT_TRUE(w.ok());
  CudaBackendOptions opts = SmallOptions();
  opts.max_batch_tokens = 64;
  Result<ModelConfig> cfg = engine::LoadModelConfig(dir);
  ASSERT_TRUE(cfg.ok());
  // KV for exactly 4 blocks of 16 tokens: layers * 2 (K, V) * kv heads * 16 * head_dim * 2 bytes.
  opts.kv_block_tokens = 16;
  opts.kv_cache_bytes =
      int64_t{4} * 2 * cfg->num_hidden_layers * cfg->num_key_value_heads * 16 * cfg->head_dim * 2;
  Result<std::unique_ptr<CudaBackend>> b = CudaBackend::Create(std::move(*w), nullptr, opts);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  CudaBackend& be = **b;
  EXPECT_EQ(be.KvCapacityTokens(), 64);
  EXPECT_EQ(be.FreeKvTokens(), 64);
  auto batch = [](uint64_t seq, int64_t start, std::vector<int32_t> t, bool all = false) {
    ForwardBatch f;
    f.chunks.push_back(
        {.seq_id = seq, .start_pos = start, .tokens = std::move(t), .all_logits = all});
    return f;
  };
  EXPECT_EQ(be.Forward(batch(1, 0, {})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(be.Forward(batch(1, 0, {3, 256})).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(be.Forward(batch(1, 2, {3})).status().code(), StatusCode::kInvalidArgument);
  ForwardBatch twice = batch(1, 0, {3});
  twice.chunks.push_back(twice.chunks[0]);
  EXPECT_EQ(be.Forward(twice).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(be.Forward(batch(1, 0, std::vector<int32_t>(65, 1))).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(be.FreeKvTokens(), 64) << "failed batches must not take KV blocks";

  std::vector<int32_t> prompt = {5, 9, 200, 17,  33, 2,  8,  100, 101,
                                 7, 1, 0,   255, 42, 43, 44, 45,  46};
  Result<ForwardOutput> full = be.Forward(batch(1, 0, prompt, true));
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  EXPECT_EQ(be.CachedTokens(1), 18);
  EXPECT_EQ(be.FreeKvTokens(), 32);
  // Chunked prefill of the same prompt in another sequence: last-token logits agree.
  Result<ForwardOutput> c1 =
      be.Forward(batch(2, 0, std::vector<int32_t>(prompt.begin(), prompt.begin() + 7)));
  ASSERT_TRUE(c1.ok());
  Result<ForwardOutput> c2 =
      be.Forward(batch(2, 7, std::vector<int32_t>(prompt.begin() + 7, prompt.end())));
  ASSERT_TRUE(c2.ok());
  const int64_t vocab = cfg->vocab_size;
  std::vector<float> last(full->logits.end() - vocab, full->logits.end());
  const double max_ref = MaxAbs(last);
  EXPECT_LE(MaxDiff(c2->logits, last), 1e-2 * max_ref);
  EXPECT_EQ(be.FreeKvTokens(), 0);
  // No room for a third sequence: ResourceExhausted, nothing changes.
  Result<ForwardOutput> full3 = be.Forward(batch(3, 0, {1, 2}));
  EXPECT_EQ(full3.status().code(), StatusCode::kResourceExhausted) << full3.status().ToString();
  EXPECT_EQ(be.CachedTokens(3), 0);
  // Truncate sequence 2 to 7 tokens and replay the second chunk: the same logits again.
  ASSERT_TRUE(be.TruncateSequence(2, 7).ok());
  EXPECT_EQ(be.FreeKvTokens(), 16);
  EXPECT_EQ(be.TruncateSequence(2, 8).code(), StatusCode::kInvalidArgument);
  Result<ForwardOutput> c2b =
      be.Forward(batch(2, 7, std::vector<int32_t>(prompt.begin() + 7, prompt.end())));
  ASSERT_TRUE(c2b.ok());
  EXPECT_EQ(c2b->logits, c2->logits);
  be.Release(1);
  be.Release(2);
  be.Release(99);
  EXPECT_EQ(be.FreeKvTokens(), 64);
}

// FP8 E4M3 KV cache: the same budget holds twice the tokens; every tiny reference checkpoint
// (BF16 weights) stays close to its transformers logits and to the BF16 cache, with the same
// greedy tokens until a near tie.
TEST(CudaBackendTest, Fp8KvCacheHoldsTwiceTheTokensAndTracksTheReference) {
  const std::vector<ModelCase> cases = Cases();
  ASSERT_FALSE(cases.empty()) << "no reference models under " << ModelsDir();
  for (const ModelCase& c : cases) {
    if (c.scheme != "bf16") continue;
    SCOPED_TRACE(c.variant);
    const fs::path dir = ModelsDir() / c.variant;
    Result<ModelConfig> config = engine::LoadModelConfig(dir);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    const Reference ref = LoadReference(dir, "", config->vocab_size);
    CudaBackendOptions bf16_opts = SmallOptions();
    CudaBackendOptions fp8_opts = SmallOptions();
    fp8_opts.kv_cache_dtype = KvCacheDtype::kFp8E4m3;
    Result<std::unique_ptr<CudaBackend>> bf16 = CudaBackend::Load(dir, {}, nullptr, bf16_opts);
    Result<std::unique_ptr<CudaBackend>> fp8 = CudaBackend::Load(dir, {}, nullptr, fp8_opts);
    ASSERT_TRUE(bf16.ok()) << bf16.status().ToString();
    ASSERT_TRUE(fp8.ok()) << fp8.status().ToString();
    const int64_t block = bf16_opts.kv_block_tokens;
    EXPECT_GE((*fp8)->KvCapacityTokens(), 2 * (*bf16)->KvCapacityTokens());
    EXPECT_LE((*fp8)->KvCapacityTokens(), 2 * (*bf16)->KvCapacityTokens() + 2 * block);
    Result<RunResult> a = RunModel(**bf16, ref);
    Result<RunResult> b = RunModel(**fp8, ref);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    const double max_ref = MaxAbs(ref.logits);
    const double vs_ref = MaxDiff(b->prompt_logits, ref.logits) / max_ref;
    const double vs_bf16 = MaxDiff(b->prompt_logits, a->prompt_logits) / max_ref;
    const int64_t vocab = config->vocab_size;
    size_t argmax_agree = 0;
    for (size_t p = 0; p < ref.ids.size(); ++p) {
      argmax_agree += Argmax(b->prompt_logits.data() + p * vocab, vocab) ==
                      Argmax(a->prompt_logits.data() + p * vocab, vocab);
    }
    size_t must_match = ref.greedy.size();
    for (size_t i = 0; i < ref.greedy_gaps.size() && i < ref.greedy.size(); ++i) {
      if (ref.greedy_gaps[i] <= 2.0 * vs_ref * max_ref) {
        must_match = i;
        break;
      }
    }
    size_t greedy_match = 0;
    while (greedy_match < ref.greedy.size() && b->greedy[greedy_match] == ref.greedy[greedy_match])
      ++greedy_match;
    std::printf(
        "[cuda-fp8-kv] %-11s capacity %lld tokens (BF16 %lld); max|fp8-ref|/max|ref| = %.3e, "
        "max|fp8-bf16|/max|ref| = %.3e, argmax %zu/%zu equal to the BF16 cache, greedy %zu/%zu "
        "match (%zu required)\n",
        c.variant.c_str(), static_cast<long long>((*fp8)->KvCapacityTokens()),
        static_cast<long long>((*bf16)->KvCapacityTokens()), vs_ref, vs_bf16, argmax_agree,
        ref.ids.size(), greedy_match, ref.greedy.size(), must_match);
    // The cache holds E4M3 with scale 1 (as SGLang's default without calibrated scales). The
    // tiny checkpoints' keys and values are small, many in E4M3's subnormal range, so their
    // logits move by up to ~0.5 of the largest (H100: 0.04 llama .. 0.48 glm_groups) while
    // the argmax stays; real checkpoints' K/V magnitudes sit in the normal range.
    EXPECT_LE(vs_ref, 0.6);
    EXPECT_GE(argmax_agree, ref.ids.size() * 85 / 100);
    EXPECT_GE(greedy_match, std::min<size_t>(must_match, 8));
  }
}

TEST(CudaBackendTest, ModelThatDoesNotFitNamesTheNumbers) {
  Result<ModelConfig> cfg = engine::BuiltinConfig("glm-4.7");
  ASSERT_TRUE(cfg.ok());
  Result<std::unique_ptr<CudaBackend>> b = CudaBackend::CreateDummy(*cfg, {}, nullptr, {});
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(b.status().message().find("GiB"), std::string::npos) << b.status().message();
  std::printf("[cuda-fit] %s\n", b.status().message().c_str());
  CudaBackendOptions opts;
  opts.kv_cache_bytes = int64_t{1} << 50;
  const fs::path dir = ModelsDir() / "glm_base";
  Result<ModelWeights> w = engine::LoadModelWeights(dir, {});
  ASSERT_TRUE(w.ok());
  Result<std::unique_ptr<CudaBackend>> k = CudaBackend::Create(std::move(*w), nullptr, opts);
  EXPECT_EQ(k.status().code(), StatusCode::kResourceExhausted) << k.status().ToString();
}

}  // namespace
}  // namespace spark::cuda
