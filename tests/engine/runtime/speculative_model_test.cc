// Speculative decoding end to end on the CPU backend with real tiny GLM checkpoints: greedy output
// with speculation equals greedy output without it, token for token, for tp 1 and 2, chains and
// trees, with max_tokens and stop tokens inside accepted runs. Two checkpoints: the tiny model
// with its random MTP layer (drafts are almost always rejected) and the self-draft model
// (engine/bench/self_draft_model.h) whose MTP layer agrees with the model (long accepted runs,
// so cache compaction of accepted paths is exercised).
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <vector>

#include "engine/bench/self_draft_model.h"
#include "engine/model/tiny_model.h"
#include "engine/runtime/offline.h"
#include "engine/runtime/scheduler.h"
#include "engine/runtime/speculative.h"

namespace spark::engine {
namespace {

namespace fs = std::filesystem;

struct Output {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason finish = FinishReason::kNone;
};

// Refuses MTP forwards of more than `limit` tokens, as the CUDA backend does beyond its
// max_batch_tokens (its workspace); counts them and their largest size. Everything else is the
// inner backend's.
class TokenLimitBackend final : public Backend {
 public:
  TokenLimitBackend(Backend* inner, int64_t limit) : inner_(inner), limit_(limit) {}
  const ModelConfig& config() const override { return inner_->config(); }
  Result<ForwardOutput> Forward(const ForwardBatch& batch) override {
    return inner_->Forward(batch);
  }
  void Release(uint64_t seq_id) override { inner_->Release(seq_id); }
  int64_t FreeKvTokens() const override { return inner_->FreeKvTokens(); }
  bool SupportsSpeculation() const override { return inner_->SupportsSpeculation(); }
  Result<ForwardOutput> ForwardMtp(const MtpBatch& batch) override {
    int64_t tokens = 0;
    for (const MtpChunk& c : batch.chunks) tokens += static_cast<int64_t>(c.tokens.size());
    ++mtp_forwards_;
    max_mtp_tokens_ = std::max(max_mtp_tokens_, tokens);
    if (tokens > limit_) {
      return InvalidArgument("MTP forward of " + std::to_string(tokens) + " tokens");
    }
    return inner_->ForwardMtp(batch);
  }
  int64_t CachedTokens(uint64_t seq_id, CacheKind kind) const override {
    return inner_->CachedTokens(seq_id, kind);
  }
  Status KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep) override {
    return inner_->KeepCacheEntries(seq_id, kind, prefix_len, keep);
  }
  int64_t mtp_forwards() const { return mtp_forwards_; }
  int64_t max_mtp_tokens() const { return max_mtp_tokens_; }

 private:
  Backend* inner_;
  int64_t limit_;
  int64_t mtp_forwards_ = 0;
  int64_t max_mtp_tokens_ = 0;
};

class SpeculativeModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = new fs::path(fs::temp_directory_path() /
                         ("spark_spec_model_test_" + std::to_string(getpid())));
    TinyModelOptions tiny;
    tiny.seed = 11;
    tiny.mtp = true;
    ASSERT_TRUE(WriteTinyModel(*root_ / "random_mtp", tiny).ok());
    bench::SelfDraftModelOptions self;
    self.layers = 3;
    self.seed = 5;
    ASSERT_TRUE(bench::WriteSelfDraftModel(*root_ / "self_draft", self).ok());
  }
  static void TearDownTestSuite() {
    fs::remove_all(*root_);
    delete root_;
  }

  static std::unique_ptr<LocalTpGroup> Open(const std::string& model, int tp) {
    OfflineEngineOptions options;
    options.tp_size = tp;
    options.threads = 1;
    options.load_mtp = true;
    auto group = OpenOfflineEngine(*root_ / model, options);
    EXPECT_TRUE(group.ok()) << group.status().ToString();
    return group.ok() ? std::move(group).value() : nullptr;
  }

  // Runs every request to completion in one scheduler; returns the outputs by request index.
  static std::vector<Output> Generate(Backend* backend, const SpeculativeOptions& spec,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const std::vector<SamplingParams>& params,
                                      SpeculativeStats* stats = nullptr) {
    SchedulerOptions options;
    options.speculative = spec;
    options.max_batch_tokens = 64;  // prompts are read in chunks next to verification
    auto scheduler = Scheduler::Create(backend, options);
    EXPECT_TRUE(scheduler.ok()) << scheduler.status().ToString();
    if (!scheduler.ok()) return {};
    std::vector<Output> out(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      Request r;
      r.id = i + 1;
      r.prompt = prompts[i];
      r.params = params[i];
      r.on_output = [&out, i](const TokenOutput& o) {
        if (o.token >= 0) {
          out[i].tokens.push_back(o.token);
          out[i].logprobs.push_back(o.logprob);
        }
        if (o.finish != FinishReason::kNone) out[i].finish = o.finish;
        EXPECT_NE(o.finish, FinishReason::kError) << o.error.ToString();
      };
      EXPECT_TRUE((*scheduler)->AddRequest(std::move(r)).ok());
    }
    for (int step = 0; step < 5000 && (*scheduler)->HasWork(); ++step) {
      auto s = (*scheduler)->Step();
      EXPECT_TRUE(s.ok()) << s.status().ToString();
      if (!s.ok()) break;
    }
    EXPECT_FALSE((*scheduler)->HasWork());
    if (stats != nullptr) *stats = (*scheduler)->speculative_stats();
    return out;
  }

  static std::vector<std::vector<int32_t>> Prompts() {
    return {{5, 17, 3, 99, 1, 250, 42},
            {7, 7, 300, 12},
            {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
             21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
             41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60,
             61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 80}};
  }

  static SamplingParams Greedy(int max_tokens) {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = max_tokens;
    p.ignore_eos = true;
    p.logprobs = true;
    return p;
  }

  // Greedy equality for the configs below on `model`; returns the smallest acceptance length.
  static double CheckGreedyEquality(const std::string& model) {
    const std::vector<SpeculativeOptions> configs = {{3, 1, 0}, {1, 1, 0}, {3, 2, 6}, {2, 3, 8}};
    const std::vector<std::vector<int32_t>> prompts = Prompts();
    const std::vector<SamplingParams> params = {Greedy(29), Greedy(7), Greedy(18)};
    double min_acceptance = 1e9;
    for (int tp : {1, 2}) {
      auto group = Open(model, tp);
      if (group == nullptr) return 0;
      EXPECT_TRUE(group->backend()->SupportsSpeculation());
      const std::vector<Output> plain = Generate(group->backend(), {}, prompts, params);
      for (const SpeculativeOptions& spec : configs) {
        SCOPED_TRACE(model + " tp " + std::to_string(tp) + " steps " + std::to_string(spec.steps) +
                     " topk " + std::to_string(spec.topk));
        SpeculativeStats stats;
        const std::vector<Output> got = Generate(group->backend(), spec, prompts, params, &stats);
        EXPECT_GT(stats.verify_steps, 0);
        min_acceptance = std::min(min_acceptance, stats.AcceptanceLength());
        for (size_t i = 0; i < prompts.size(); ++i) {
          EXPECT_EQ(got[i].tokens, plain[i].tokens) << "request " << i;
          EXPECT_EQ(got[i].finish, FinishReason::kLength);
          EXPECT_EQ(got[i].logprobs.size(), plain[i].logprobs.size());
          if (got[i].logprobs.size() != plain[i].logprobs.size()) continue;
          for (size_t k = 0; k < got[i].logprobs.size(); ++k) {
            // Logits of a tree row and of a plain decode step differ by float rounding only.
            EXPECT_NEAR(got[i].logprobs[k], plain[i].logprobs[k], 1e-3f);
          }
        }
      }
      EXPECT_TRUE(group->Shutdown().ok());
    }
    return min_acceptance;
  }

  static fs::path* root_;
};

fs::path* SpeculativeModelTest::root_ = nullptr;

TEST_F(SpeculativeModelTest, GreedyEqualsPlainDecodingWithARandomMtpLayer) {
  // A random MTP layer proposes tokens the model rarely takes; the bonus token carries on.
  const double acceptance = CheckGreedyEquality("random_mtp");
  EXPECT_GE(acceptance, 1.0);
}

TEST_F(SpeculativeModelTest, GreedyEqualsPlainDecodingWithAnAgreeingDraft) {
  const double acceptance = CheckGreedyEquality("self_draft");
  // Most drafts are accepted: chains of 1 step give up to 2, trees and 3-step chains more.
  EXPECT_GT(acceptance, 1.5);
}

TEST_F(SpeculativeModelTest, BoundedMtpForwardsEqualOneForward) {
  // A long causal chunk (read in pieces), a short one, an all_logits one and a tree, with a
  // forward limit of 16 tokens, against one unbounded ForwardMtp on other sequences.
  auto group = Open("self_draft", 1);
  ASSERT_NE(group, nullptr);
  Backend* backend = group->backend();
  const int64_t hidden = backend->config().hidden_size;
  auto chunk = [&](uint64_t seq, int n, bool all_logits, std::vector<int32_t> parents) {
    MtpChunk c;
    c.seq_id = seq;
    c.start_pos = 0;
    for (int j = 0; j < n; ++j)
      c.tokens.push_back((j * 37 + static_cast<int>(seq % 10) * 11) % 200 + 1);
    for (int64_t k = 0; k < n * hidden; ++k) {
      c.hidden.push_back(static_cast<float>(std::sin(0.37 * static_cast<double>(k + seq % 10))));
    }
    c.all_logits = all_logits;
    c.tree_parents = std::move(parents);
    c.return_hidden = true;
    return c;
  };
  auto batch = [&](uint64_t base) {
    MtpBatch b;
    b.chunks.push_back(chunk(base + 1, 40, false, {}));
    b.chunks.push_back(chunk(base + 2, 5, false, {}));
    b.chunks.push_back(chunk(base + 3, 20, true, {}));
    b.chunks.push_back(chunk(base + 4, 4, true, {-1, 0, 0, 1}));
    return b;
  };
  Result<ForwardOutput> whole = backend->ForwardMtp(batch(0));
  ASSERT_TRUE(whole.ok()) << whole.status().ToString();
  TokenLimitBackend limited(backend, 16);
  Result<ForwardOutput> bounded = ForwardMtpBounded(&limited, batch(10), 16);
  ASSERT_TRUE(bounded.ok()) << bounded.status().ToString();
  EXPECT_LE(limited.max_mtp_tokens(), 16);
  EXPECT_GE(limited.mtp_forwards(), 5) << "69 tokens in forwards of at most 16";
  EXPECT_EQ(bounded->row_begin, whole->row_begin);
  EXPECT_EQ(bounded->hidden_row_begin, whole->hidden_row_begin);
  ASSERT_EQ(bounded->logits.size(), whole->logits.size());
  ASSERT_EQ(bounded->hidden.size(), whole->hidden.size());
  float max_logit = 0;
  for (float v : whole->logits) max_logit = std::max(max_logit, std::abs(v));
  for (size_t k = 0; k < whole->logits.size(); ++k) {
    ASSERT_NEAR(bounded->logits[k], whole->logits[k], 1e-4f * max_logit) << "logit " << k;
  }
  for (size_t k = 0; k < whole->hidden.size(); ++k) {
    ASSERT_NEAR(bounded->hidden[k], whole->hidden[k], 1e-3f) << "hidden " << k;
  }
  for (uint64_t s : {1, 2, 3, 4}) {
    EXPECT_EQ(backend->CachedTokens(s, CacheKind::kMtp),
              backend->CachedTokens(s + 10, CacheKind::kMtp));
  }
  // A tree chunk larger than the limit cannot be split.
  MtpBatch tree;
  tree.chunks.push_back(chunk(30, 4, true, {-1, 0, 0, 1}));
  Result<ForwardOutput> refused = ForwardMtpBounded(&limited, tree, 3);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(group->Shutdown().ok());
}

TEST_F(SpeculativeModelTest, StopTokensInsideAcceptedRunsEndThere) {
  const std::vector<std::vector<int32_t>> prompts = Prompts();
  auto group = Open("self_draft", 1);
  ASSERT_NE(group, nullptr);
  const std::vector<Output> plain = Generate(group->backend(), {}, {prompts[0]}, {Greedy(40)});
  ASSERT_EQ(plain[0].tokens.size(), 40u);
  for (int stop_at : {2, 5, 11, 23}) {
    size_t first = 0;
    while (plain[0].tokens[first] != plain[0].tokens[stop_at]) ++first;
    SamplingParams p = Greedy(40);
    p.stop_token_ids = {plain[0].tokens[stop_at]};
    for (const SpeculativeOptions& spec : {SpeculativeOptions{4, 1, 0}, {3, 2, 7}}) {
      const std::vector<Output> got = Generate(group->backend(), spec, {prompts[0]}, {p});
      EXPECT_EQ(got[0].tokens,
                std::vector<int32_t>(plain[0].tokens.begin(), plain[0].tokens.begin() + first + 1));
      EXPECT_EQ(got[0].finish, FinishReason::kStop);
    }
  }
  // The cache is empty again: a long request still fits after all of these.
  const std::vector<Output> again =
      Generate(group->backend(), {3, 1, 0}, {prompts[0]}, {Greedy(40)});
  EXPECT_EQ(again[0].tokens, plain[0].tokens);
  EXPECT_TRUE(group->Shutdown().ok());
}

TEST_F(SpeculativeModelTest, SeededSampledDecodingIsReproducible) {
  auto group = Open("self_draft", 1);
  ASSERT_NE(group, nullptr);
  SamplingParams p;
  p.temperature = 0.8f;
  p.top_p = 0.95f;
  p.max_tokens = 30;
  p.ignore_eos = true;
  p.seed = 1234;
  SpeculativeStats stats;
  const auto a = Generate(group->backend(), {3, 1, 0}, {Prompts()[0]}, {p}, &stats);
  const auto b = Generate(group->backend(), {3, 1, 0}, {Prompts()[0], Prompts()[1]}, {p, p});
  EXPECT_EQ(a[0].tokens, b[0].tokens);
  EXPECT_EQ(a[0].tokens.size(), 30u);
  EXPECT_GT(stats.accepted_tokens, 0);
  EXPECT_TRUE(group->Shutdown().ok());
}

}  // namespace
}  // namespace spark::engine
