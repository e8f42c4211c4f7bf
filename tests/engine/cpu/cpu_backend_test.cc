#include "engine/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <vector>

#include "engine/model/loader.h"
#include "engine/model/tiny_model.h"
#include "tests/engine/cpu/test_model.h"
#include "tests/engine/cpu/thread_communicator.h"

namespace spark::engine {
namespace {

using testing::MakeTestWeights;
using testing::ReferenceLogits;
using testing::RunRanks;
using testing::ThreadCommunicatorGroup;
using testing::WeightFormat;

constexpr uint64_t kSeed = 42;

CpuBackendOptions Options(int threads = 2, int64_t kv_bytes = int64_t{8} << 20) {
  CpuBackendOptions o;
  o.threads = threads;
  o.kv_cache_bytes = kv_bytes;
  o.kv_block_tokens = 4;
  return o;
}

std::unique_ptr<CpuBackend> MakeBackend(const ModelConfig& config, const WeightFormat& format,
                                        const CpuBackendOptions& options = Options()) {
  auto backend = CpuBackend::Create(MakeTestWeights(config, format, kSeed, 0, 1), nullptr, options);
  EXPECT_TRUE(backend.ok()) << backend.status().ToString();
  return std::move(backend).value();
}

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint64_t salt) {
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) {
    ids[i] = static_cast<int32_t>((i * 37 + salt * 101 + 11) % vocab);
  }
  return ids;
}

SequenceChunk Chunk(uint64_t seq, int64_t start, std::vector<int32_t> tokens, bool all = false) {
  SequenceChunk c;
  c.seq_id = seq;
  c.start_pos = start;
  c.tokens = std::move(tokens);
  c.all_logits = all;
  return c;
}

ForwardOutput Step(CpuBackend* backend, std::vector<SequenceChunk> chunks) {
  ForwardBatch batch;
  batch.chunks = std::move(chunks);
  auto out = backend->Forward(batch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return std::move(out).value();
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0.0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// max |a - b| / max |b| over the rows.
double RelDiff(const float* a, const float* b, int64_t n) {
  double diff = 0.0, mag = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[i]) - b[i]));
    mag = std::max(mag, std::fabs(static_cast<double>(b[i])));
  }
  return diff / mag;
}

// ---- Against the naive double-precision reference ---------------------------------------

struct ModelCase {
  const char* name;
  ModelConfig (*config)();
  WeightFormat format;
};

const ModelCase kModels[] = {
    {"glm_bf16", testing::TinyGlmConfig, {DType::kBF16, ScaleKind::kNone, 0}},
    {"glm_f32", testing::TinyGlmConfig, {DType::kF32, ScaleKind::kNone, 0}},
    {"glm_f16", testing::TinyGlmConfig, {DType::kF16, ScaleKind::kNone, 0}},
    {"glm_fp8_channel", testing::TinyGlmConfig, {DType::kF8E4M3, ScaleKind::kPerChannel, 0}},
    {"glm_fp8_block", testing::TinyGlmConfig, {DType::kF8E4M3, ScaleKind::kBlock, 32}},
    {"llama_bf16", testing::TinyLlamaConfig, {DType::kBF16, ScaleKind::kNone, 0}},
    {"qwen3moe_bf16", testing::TinyQwen3MoeConfig, {DType::kBF16, ScaleKind::kNone, 0}},
    {"qwen3_f16", testing::TinyQwen3Config, {DType::kF16, ScaleKind::kNone, 0}},
};

class CpuReferenceTest : public ::testing::TestWithParam<ModelCase> {};

TEST_P(CpuReferenceTest, PrefillLogitsMatchDoublePrecisionReference) {
  const ModelConfig config = GetParam().config();
  const ModelWeights full = MakeTestWeights(config, GetParam().format, kSeed, 0, 1);
  const std::vector<int32_t> tokens = Tokens(21, config.vocab_size, 1);
  const std::vector<double> ref = ReferenceLogits(full, tokens);
  auto backend = MakeBackend(config, GetParam().format);
  ForwardOutput out = Step(backend.get(), {Chunk(7, 0, tokens, true)});
  ASSERT_EQ(out.vocab_size, config.vocab_size);
  ASSERT_EQ(out.logits.size(), tokens.size() * config.vocab_size);
  ASSERT_EQ(out.row_begin, std::vector<int64_t>{0});
  double diff = 0.0, mag = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff = std::max(diff, std::fabs(out.logits[i] - ref[i]));
    mag = std::max(mag, std::fabs(ref[i]));
  }
  EXPECT_GT(mag, 0.1);
  EXPECT_LT(diff / mag, 1e-5) << "max diff " << diff << " max |logit| " << mag;
  EXPECT_EQ(backend->CachedTokens(7), 21);
}

INSTANTIATE_TEST_SUITE_P(Models, CpuReferenceTest, ::testing::ValuesIn(kModels),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(CpuReferenceTest, ExercisesRouterGroupsAndSeveralSharedExperts) {
  ModelConfig config = testing::TinyGlmConfig();
  config.n_group = 4;
  config.topk_group = 2;
  config.num_experts_per_tok = 3;
  config.norm_topk_prob = false;
  config.n_shared_experts = 2;
  config.first_k_dense_replace = 0;
  config.num_hidden_layers = 2;
  const WeightFormat bf16{DType::kBF16, ScaleKind::kNone, 0};
  const ModelWeights full = MakeTestWeights(config, bf16, kSeed, 0, 1);
  const std::vector<int32_t> tokens = Tokens(9, config.vocab_size, 2);
  const std::vector<double> ref = ReferenceLogits(full, tokens);
  auto backend = MakeBackend(config, bf16);
  ForwardOutput out = Step(backend.get(), {Chunk(1, 0, tokens, true)});
  std::vector<float> ref_f(ref.begin(), ref.end());
  EXPECT_LT(RelDiff(out.logits.data(), ref_f.data(), ref_f.size()), 1e-5);
}

// ---- KV cache path consistency ---------------------------------------------------------------

TEST(CpuBackendTest, PrefillEqualsTokenByTokenDecode) {
  const ModelConfig config = testing::TinyGlmConfig();
  const WeightFormat bf16{DType::kBF16, ScaleKind::kNone, 0};
  const std::vector<int32_t> tokens = Tokens(23, config.vocab_size, 3);
  auto prefill = MakeBackend(config, bf16);
  ForwardOutput all = Step(prefill.get(), {Chunk(5, 0, tokens, true)});
  auto decode = MakeBackend(config, bf16);
  const int64_t V = config.vocab_size;
  for (size_t i = 0; i < tokens.size(); ++i) {
    ForwardOutput step = Step(decode.get(), {Chunk(5, i, {tokens[i]})});
    ASSERT_EQ(step.logits.size(), static_cast<size_t>(V));
    EXPECT_LT(RelDiff(step.logits.data(), all.logits.data() + i * V, V), 1e-5) << "pos " << i;
  }
  // Chunked prefill (5 + 7 + 11 tokens) gives the same last-token logits.
  auto chunked = MakeBackend(config, bf16);
  Step(chunked.get(), {Chunk(9, 0, {tokens.begin(), tokens.begin() + 5})});
  Step(chunked.get(), {Chunk(9, 5, {tokens.begin() + 5, tokens.begin() + 12})});
  ForwardOutput last = Step(chunked.get(), {Chunk(9, 12, {tokens.begin() + 12, tokens.end()})});
  EXPECT_LT(RelDiff(last.logits.data(), all.logits.data() + 22 * V, V), 1e-5);
}

TEST(CpuBackendTest, MixedBatchEqualsEachSequenceAlone) {
  const ModelConfig config = testing::TinyGlmConfig();
  const WeightFormat fp8{DType::kF8E4M3, ScaleKind::kPerChannel, 0};
  const int64_t V = config.vocab_size;
  std::map<uint64_t, std::vector<int32_t>> prompts;
  for (uint64_t s = 1; s <= 4; ++s) prompts[s] = Tokens(3 + 4 * s, V, s);

  // Alone: each sequence in its own backend, prompt then two decode steps.
  std::map<uint64_t, std::vector<std::vector<float>>> alone;
  for (auto& [seq, prompt] : prompts) {
    auto b = MakeBackend(config, fp8);
    int64_t pos = 0;
    alone[seq].push_back(Step(b.get(), {Chunk(seq, 0, prompt)}).logits);
    pos = static_cast<int64_t>(prompt.size());
    for (int step = 0; step < 2; ++step) {
      alone[seq].push_back(
          Step(b.get(), {Chunk(seq, pos++, {static_cast<int32_t>(seq + step)})}).logits);
    }
  }

  // Batched: sequences 1 and 2 prefill first; then 1 and 2 decode while 3 and 4 prefill; then
  // everyone decodes (3 and 4 lag one step).
  auto b = MakeBackend(config, fp8);
  ForwardOutput r1 = Step(b.get(), {Chunk(2, 0, prompts[2]), Chunk(1, 0, prompts[1])});
  ASSERT_EQ(r1.row_begin, (std::vector<int64_t>{0, 1}));
  EXPECT_LT(RelDiff(r1.logits.data(), alone[2][0].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r1.logits.data() + V, alone[1][0].data(), V), 1e-5);
  const int64_t p1 = prompts[1].size(), p2 = prompts[2].size();
  ForwardOutput r2 = Step(b.get(), {Chunk(1, p1, {1}), Chunk(3, 0, prompts[3]), Chunk(2, p2, {2}),
                                    Chunk(4, 0, prompts[4], true)});
  ASSERT_EQ(r2.row_begin, (std::vector<int64_t>{0, 1, 2, 3}));
  ASSERT_EQ(r2.logits.size(), (3 + prompts[4].size()) * V);
  EXPECT_LT(RelDiff(r2.logits.data(), alone[1][1].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r2.logits.data() + V, alone[3][0].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r2.logits.data() + 2 * V, alone[2][1].data(), V), 1e-5);
  const int64_t last4 = 3 + prompts[4].size() - 1;
  EXPECT_LT(RelDiff(r2.logits.data() + last4 * V, alone[4][0].data(), V), 1e-5);
  const int64_t p3 = prompts[3].size(), p4 = prompts[4].size();
  ForwardOutput r3 = Step(b.get(), {Chunk(4, p4, {4}), Chunk(3, p3, {3}), Chunk(2, p2 + 1, {3}),
                                    Chunk(1, p1 + 1, {2})});
  EXPECT_LT(RelDiff(r3.logits.data(), alone[4][1].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r3.logits.data() + V, alone[3][1].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r3.logits.data() + 2 * V, alone[2][2].data(), V), 1e-5);
  EXPECT_LT(RelDiff(r3.logits.data() + 3 * V, alone[1][2].data(), V), 1e-5);
}

TEST(CpuBackendTest, TruncateRollsBackLikeSpeculativeRejection) {
  const ModelConfig config = testing::TinyGlmConfig();
  const WeightFormat bf16{DType::kBF16, ScaleKind::kNone, 0};
  auto b = MakeBackend(config, bf16);
  const std::vector<int32_t> prompt = Tokens(10, config.vocab_size, 4);
  Step(b.get(), {Chunk(1, 0, prompt)});
  ForwardOutput first = Step(b.get(), {Chunk(1, 10, {17})});
  Step(b.get(), {Chunk(1, 11, {18, 19, 20})});
  EXPECT_EQ(b->CachedTokens(1), 14);
  ASSERT_TRUE(b->TruncateSequence(1, 10).ok());
  EXPECT_EQ(b->CachedTokens(1), 10);
  ForwardOutput again = Step(b.get(), {Chunk(1, 10, {17})});
  EXPECT_EQ(again.logits, first.logits);
  EXPECT_EQ(b->TruncateSequence(1, 12).code(), StatusCode::kInvalidArgument);
}

TEST(CpuBackendTest, ThreadCountDoesNotChangeResults) {
  const ModelConfig config = testing::TinyGlmConfig();
  const WeightFormat bf16{DType::kBF16, ScaleKind::kNone, 0};
  const std::vector<int32_t> tokens = Tokens(13, config.vocab_size, 5);
  auto one = MakeBackend(config, bf16, Options(1));
  auto three = MakeBackend(config, bf16, Options(3));
  EXPECT_EQ(one->threads(), 1);
  EXPECT_EQ(three->threads(), 3);
  EXPECT_EQ(Step(one.get(), {Chunk(1, 0, tokens, true)}).logits,
            Step(three.get(), {Chunk(1, 0, tokens, true)}).logits);
}

// ---- Errors and cache accounting -----------------------------------------------------------

TEST(CpuBackendTest, RejectsBadBatchesWithoutSideEffects) {
  const ModelConfig config = testing::TinyGlmConfig();
  auto b = MakeBackend(config, {DType::kBF16, ScaleKind::kNone, 0});
  Step(b.get(), {Chunk(1, 0, {1, 2, 3})});
  const int64_t free_tokens = b->FreeKvTokens();
  auto expect_invalid = [&](std::vector<SequenceChunk> chunks, const std::string& needle) {
    ForwardBatch batch;
    batch.chunks = std::move(chunks);
    auto out = b->Forward(batch);
    ASSERT_FALSE(out.ok());
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(out.status().message().find(needle), std::string::npos) << out.status().message();
    EXPECT_EQ(b->CachedTokens(1), 3);
    EXPECT_EQ(b->CachedTokens(2), 0);
    EXPECT_EQ(b->FreeKvTokens(), free_tokens);
  };
  expect_invalid({Chunk(2, 0, {4}), Chunk(1, 2, {4})}, "start_pos must equal the cached length");
  expect_invalid({Chunk(2, 1, {4})}, "start_pos");
  expect_invalid({Chunk(2, 0, {4, 256})}, "token id 256");
  expect_invalid({Chunk(2, 0, {-1})}, "token id -1");
  expect_invalid({Chunk(2, 0, {})}, "no tokens");
  expect_invalid({Chunk(2, 0, {1}), Chunk(2, 1, {1})}, "twice");
  ForwardOutput empty = Step(b.get(), {});
  EXPECT_TRUE(empty.logits.empty());
}

TEST(CpuBackendTest, KvExhaustionIsAtomicAndReleaseFreesSpace) {
  const ModelConfig config = testing::TinyGlmConfig();
  // One block of 4 tokens: 3 layers * 2 (K,V) * 4 tokens * 2 heads * 64 dims * 4 bytes = 12 KiB.
  auto b = MakeBackend(config, {DType::kBF16, ScaleKind::kNone, 0}, Options(2, 12288 * 5));
  EXPECT_EQ(b->KvCapacityTokens(), 20);
  EXPECT_EQ(b->FreeKvTokens(), 20);
  Step(b.get(), {Chunk(1, 0, Tokens(9, 256, 1))});
  EXPECT_EQ(b->FreeKvTokens(), 8);
  ForwardBatch batch;
  // Sequence 1 still fits its third block; sequence 2 needs 3 blocks, 2 are free.
  batch.chunks = {Chunk(1, 9, {5}), Chunk(2, 0, Tokens(9, 256, 2))};
  auto out = b->Forward(batch);
  ASSERT_FALSE(out.ok());
  EXPECT_EQ(out.status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(b->CachedTokens(1), 9);
  EXPECT_EQ(b->CachedTokens(2), 0);
  EXPECT_EQ(b->FreeKvTokens(), 8);
  b->Release(1);
  EXPECT_EQ(b->FreeKvTokens(), 20);
  EXPECT_EQ(b->CachedTokens(1), 0);
  // Sequence 1 was released: it restarts at position 0.
  EXPECT_EQ(b->Forward(batch).status().code(), StatusCode::kInvalidArgument);
  batch.chunks[0].start_pos = 0;
  EXPECT_TRUE(b->Forward(batch).ok());
  EXPECT_EQ(b->FreeKvTokens(), 4);
}

TEST(CpuBackendTest, CreateValidatesWeightsAndCommunicator) {
  const ModelConfig config = testing::TinyGlmConfig();
  const WeightFormat bf16{DType::kBF16, ScaleKind::kNone, 0};
  {
    ModelWeights w = MakeTestWeights(config, bf16, kSeed, 0, 1);
    w.layers[1].experts[3].down.in = 64;
    auto b = CpuBackend::Create(std::move(w), nullptr, Options());
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("model.layers.1.mlp.experts.3.down_proj"),
              std::string::npos)
        << b.status().message();
  }
  {
    ModelWeights w = MakeTestWeights(config, bf16, kSeed, 0, 1);
    w.layers[0].input_norm.pop_back();
    auto b = CpuBackend::Create(std::move(w), nullptr, Options());
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("input_layernorm"), std::string::npos);
  }
  {
    auto b = CpuBackend::Create(MakeTestWeights(config, bf16, kSeed, 1, 2), nullptr, Options());
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("communicator"), std::string::npos);
  }
  {
    ThreadCommunicatorGroup group(2);
    auto b =
        CpuBackend::Create(MakeTestWeights(config, bf16, kSeed, 1, 2), group.comm(0), Options());
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("rank 0 of 2"), std::string::npos) << b.status().message();
  }
  {
    auto b =
        CpuBackend::Create(MakeTestWeights(config, bf16, kSeed, 0, 1), nullptr, Options(1, 100));
    ASSERT_FALSE(b.ok());
    EXPECT_NE(b.status().message().find("kv_cache_bytes"), std::string::npos);
  }
}

// ---- Tensor parallelism --------------------------------------------------------------------

// Per forward step, the logits of every rank (which must agree).
using StepLogits = std::vector<std::vector<float>>;

// Two sequences: prefill (all logits) then three decode steps in one batch.
std::vector<std::vector<float>> RunScript(CpuBackend* b, int64_t vocab) {
  std::vector<std::vector<float>> steps;
  const std::vector<int32_t> p1 = Tokens(11, vocab, 6), p2 = Tokens(6, vocab, 7);
  ForwardBatch batch;
  batch.chunks = {Chunk(1, 0, p1, true), Chunk(2, 0, p2)};
  auto out = b->Forward(batch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  if (!out.ok()) return steps;
  steps.push_back(out->logits);
  for (int s = 0; s < 3; ++s) {
    batch.chunks = {Chunk(2, 6 + s, {static_cast<int32_t>(9 + s)}),
                    Chunk(1, 11 + s, {static_cast<int32_t>(3 + s)})};
    out = b->Forward(batch);
    EXPECT_TRUE(out.ok()) << out.status().ToString();
    if (!out.ok()) return steps;
    steps.push_back(out->logits);
  }
  return steps;
}

struct TpCase {
  const char* name;
  ModelConfig (*config)();
  WeightFormat format;
  int tp;
};

const TpCase kTpCases[] = {
    {"glm_bf16_tp2", testing::TinyGlmConfig, {DType::kBF16, ScaleKind::kNone, 0}, 2},
    {"glm_bf16_tp4", testing::TinyGlmConfig, {DType::kBF16, ScaleKind::kNone, 0}, 4},
    {"glm_fp8_channel_tp2", testing::TinyGlmConfig, {DType::kF8E4M3, ScaleKind::kPerChannel, 0}, 2},
    {"glm_fp8_block_tp4", testing::TinyGlmConfig, {DType::kF8E4M3, ScaleKind::kBlock, 32}, 4},
    {"llama_tp2", testing::TinyLlamaConfig, {DType::kBF16, ScaleKind::kNone, 0}, 2},
    {"qwen3moe_tp4", testing::TinyQwen3MoeConfig, {DType::kBF16, ScaleKind::kNone, 0}, 4},
    {"qwen3_fp8_channel_tp4",
     testing::TinyQwen3Config,
     {DType::kF8E4M3, ScaleKind::kPerChannel, 0},
     4},
};

class CpuTensorParallelTest : public ::testing::TestWithParam<TpCase> {};

TEST_P(CpuTensorParallelTest, EqualsSingleRank) {
  const TpCase& tc = GetParam();
  const ModelConfig config = tc.config();
  auto single = MakeBackend(config, tc.format);
  const std::vector<std::vector<float>> want = RunScript(single.get(), config.vocab_size);
  ASSERT_EQ(want.size(), 4u);

  ThreadCommunicatorGroup group(tc.tp);
  std::vector<std::vector<std::vector<float>>> got(tc.tp);
  RunRanks(&group, [&](int rank, Communicator* comm) {
    auto b = CpuBackend::Create(MakeTestWeights(config, tc.format, kSeed, rank, tc.tp), comm,
                                Options(1));
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    got[rank] = RunScript(b->get(), config.vocab_size);
  });
  // Two all-reduces per layer per forward (after o_proj, after the MLP/MoE).
  EXPECT_EQ(group.all_reduces(), 4 * 2 * config.num_hidden_layers);
  for (int rank = 0; rank < tc.tp; ++rank) {
    ASSERT_EQ(got[rank].size(), want.size());
    for (size_t s = 0; s < want.size(); ++s) {
      ASSERT_EQ(got[rank][s].size(), want[s].size());
      EXPECT_EQ(got[rank][s], got[0][s]) << "ranks disagree at step " << s;
      EXPECT_LT(RelDiff(got[rank][s].data(), want[s].data(), want[s].size()), 1e-4)
          << "rank " << rank << " step " << s;
    }
  }
  EXPECT_GT(MaxAbs(want[0]), 0.1);
}

INSTANTIATE_TEST_SUITE_P(Plans, CpuTensorParallelTest, ::testing::ValuesIn(kTpCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---- Weights from the loader (engine/model/loader.h) -------------------------------------------

// Runs RunScript on `tp` ranks with weights from `load(rank, tp)`; returns rank 0's steps and
// checks that all ranks agree.
template <typename LoadFn>
std::vector<std::vector<float>> RunLoaded(int tp, LoadFn load, int64_t vocab) {
  ThreadCommunicatorGroup group(tp);
  std::vector<std::vector<std::vector<float>>> got(tp);
  RunRanks(&group, [&](int rank, Communicator* comm) {
    Result<ModelWeights> weights = load(rank, tp);
    ASSERT_TRUE(weights.ok()) << weights.status().ToString();
    auto b = CpuBackend::Create(std::move(weights).value(), tp > 1 ? comm : nullptr, Options(1));
    ASSERT_TRUE(b.ok()) << b.status().ToString();
    got[rank] = RunScript(b->get(), vocab);
  });
  for (int rank = 1; rank < tp; ++rank) EXPECT_EQ(got[rank], got[0]) << "rank " << rank;
  return got[0];
}

void ExpectSameSteps(const std::vector<std::vector<float>>& got,
                     const std::vector<std::vector<float>>& want, double tolerance) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t s = 0; s < want.size(); ++s) {
    ASSERT_EQ(got[s].size(), want[s].size());
    EXPECT_LT(RelDiff(got[s].data(), want[s].data(), want[s].size()), tolerance) << "step " << s;
  }
}

TEST(CpuLoadedWeightsTest, DummyWeightsAgreeAcrossTpSizes) {
  for (QuantMethod quant : {QuantMethod::kNone, QuantMethod::kFp8PerChannel}) {
    auto config = ParseModelConfig(TinyModelConfigJson(TinyModelOptions{}));
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    config->quant.method = quant;
    auto load = [&](int rank, int tp) {
      LoadOptions o;
      o.dummy = true;
      o.seed = 3;
      o.tp_rank = rank;
      o.tp_size = tp;
      return MakeDummyWeights(*config, o);
    };
    const auto want = RunLoaded(1, load, config->vocab_size);
    ASSERT_EQ(want.size(), 4u);
    EXPECT_GT(MaxAbs(want[0]), 0.01);
    ExpectSameSteps(RunLoaded(2, load, config->vocab_size), want, 1e-4);
    ExpectSameSteps(RunLoaded(4, load, config->vocab_size), want, 1e-4);
  }
}

TEST(CpuLoadedWeightsTest, TinyCheckpointMatchesReferenceAtEveryTpSize) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "spark_cpu_backend_tiny";
  std::filesystem::remove_all(dir);
  TinyModelOptions tiny;
  tiny.seed = 11;
  ASSERT_TRUE(WriteTinyModel(dir, tiny).ok());
  auto load = [&](int rank, int tp) {
    LoadOptions o;
    o.tp_rank = rank;
    o.tp_size = tp;
    return LoadModelWeights(dir, o);
  };
  auto full = load(0, 1);
  ASSERT_TRUE(full.ok()) << full.status().ToString();
  const int64_t vocab = full->config.vocab_size;

  // One prompt through the independent double-precision reference.
  const std::vector<int32_t> tokens = Tokens(11, vocab, 6);
  const std::vector<double> ref = ReferenceLogits(*full, tokens);
  const auto steps = RunLoaded(1, load, vocab);
  ASSERT_EQ(steps.size(), 4u);
  std::vector<float> ref_f(ref.begin(), ref.end());
  // RunScript's first step returns all 11 logits rows of sequence 1, then sequence 2's last row.
  EXPECT_LT(RelDiff(steps[0].data(), ref_f.data(), ref_f.size()), 1e-5);

  ExpectSameSteps(RunLoaded(2, load, vocab), steps, 1e-4);
  ExpectSameSteps(RunLoaded(4, load, vocab), steps, 1e-4);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace spark::engine
