#include "engine/runtime/speculative.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <vector>

#include "engine/runtime/scheduler.h"
#include "tests/engine/runtime/fake_spec_backend.h"
#include "tests/engine/runtime/scheduler_test_util.h"

namespace spark::engine {
namespace {

using testing::Collected;
using testing::FakeSpecBackend;
using testing::FakeSpecGreedy;
using testing::RunScheduler;

// ---------------------------------------------------------------------------------------------
// Statistics helpers.

// Chi-square statistic of observed counts against expected probabilities; cells whose expected
// count is below 5 are pooled into one cell. *df receives the degrees of freedom. A count in a
// cell of probability 0 makes the statistic infinite.
double ChiSquare(const std::vector<int64_t>& counts, const std::vector<double>& probs, int64_t n,
                 int* df) {
  double chi2 = 0;
  double pooled_expected = 0;
  double pooled_observed = 0;
  int cells = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    const double e = probs[i] * static_cast<double>(n);
    if (probs[i] <= 0) {
      if (counts[i] > 0) return INFINITY;
      continue;
    }
    if (e < 5) {
      pooled_expected += e;
      pooled_observed += static_cast<double>(counts[i]);
      continue;
    }
    chi2 += (static_cast<double>(counts[i]) - e) * (static_cast<double>(counts[i]) - e) / e;
    ++cells;
  }
  if (pooled_expected > 0) {
    chi2 +=
        (pooled_observed - pooled_expected) * (pooled_observed - pooled_expected) / pooled_expected;
    ++cells;
  }
  *df = std::max(1, cells - 1);
  return chi2;
}

// Chi-square critical value at p = 1e-4 (Wilson-Hilferty).
double Chi2Critical(int df) {
  const double z = 3.719;
  const double k = df;
  const double a = 1.0 - 2.0 / (9.0 * k) + z * std::sqrt(2.0 / (9.0 * k));
  return k * a * a * a;
}

double TotalVariation(const std::vector<int64_t>& counts, const std::vector<double>& probs,
                      int64_t n) {
  double tv = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    tv += std::abs(static_cast<double>(counts[i]) / static_cast<double>(n) - probs[i]);
  }
  return tv / 2;
}

std::vector<float> Normalised(std::vector<float> p) {
  double s = 0;
  for (float v : p) s += v;
  for (float& v : p) v = static_cast<float>(v / s);
  return p;
}

// ---------------------------------------------------------------------------------------------
// Options, selection and verification rules.

TEST(SpeculativeOptionsTest, ChainForcesDraftTokensAndTreesAreValidated) {
  auto chain = ResolveSpeculativeOptions({3, 1, 0});
  ASSERT_TRUE(chain.ok()) << chain.status().ToString();
  EXPECT_EQ(chain->draft_tokens, 4);
  chain = ResolveSpeculativeOptions({3, 1, 9});
  ASSERT_TRUE(chain.ok());
  EXPECT_EQ(chain->draft_tokens, 4);  // forced, as SGLang

  auto tree = ResolveSpeculativeOptions({3, 2, 8});
  ASSERT_TRUE(tree.ok()) << tree.status().ToString();
  EXPECT_EQ(tree->draft_tokens, 8);
  EXPECT_TRUE(ResolveSpeculativeOptions({3, 2, 11}).ok());  // root + 2 + 2*4 candidates

  auto too_many = ResolveSpeculativeOptions({3, 2, 12});
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_many.status().message().find("draft_tokens must be in [2, 11]"), std::string::npos)
      << too_many.status().message();
  EXPECT_FALSE(ResolveSpeculativeOptions({3, 2, 0}).ok());
  EXPECT_FALSE(ResolveSpeculativeOptions({-1, 1, 0}).ok());
  EXPECT_FALSE(ResolveSpeculativeOptions({2, 0, 0}).ok());
  auto off = ResolveSpeculativeOptions({0, 2, 0});
  ASSERT_FALSE(off.ok());
  EXPECT_NE(off.status().message().find("steps"), std::string::npos);
  EXPECT_TRUE(ResolveSpeculativeOptions({0, 1, 0}).ok());
}

TEST(SpeculativeStatsTest, AcceptanceLengthCountsTheBonusToken) {
  SpeculativeStats s;
  EXPECT_EQ(s.AcceptanceLength(), 0);
  s.verify_steps = 4;
  s.accepted_tokens = 6;
  EXPECT_DOUBLE_EQ(s.AcceptanceLength(), 2.5);
}

TEST(SpeculativeTreeTest, TopKSkipsZerosAndBreaksTiesByIndex) {
  const std::vector<float> scores = {0.1f, 0.3f, 0.0f, 0.3f, 0.2f};
  EXPECT_EQ(TopKIndices(scores, 3), (std::vector<int32_t>{1, 3, 4}));
  EXPECT_EQ(TopKIndices(scores, 9), (std::vector<int32_t>{1, 3, 4, 0}));
}

TEST(SpeculativeTreeTest, SelectionTakesTheBestScoresAndKeepsParents) {
  // SGLang's shape for topk 2, steps 3: 2 + 2*4 candidates.
  const std::vector<int32_t> parents = {-1, -1, 0, 0, 1, 1, 2, 2, 3, 3};
  const std::vector<double> scores = {0.6, 0.3, 0.5, 0.05, 0.2, 0.1, 0.45, 0.01, 0.02, 0.01};
  EXPECT_EQ(SelectTreeNodes(parents, scores, 7), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(SelectTreeNodes(parents, scores, 3), (std::vector<int32_t>{0, 2, 6}));
  // A child that outscores its parent (not produced by the builder) is skipped, not orphaned.
  const std::vector<double> broken = {0.1, 0.2, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int32_t c : SelectTreeNodes(parents, broken, 2)) EXPECT_NE(c, 2);
}

DraftTree Tree(std::vector<int32_t> tokens, std::vector<int32_t> parents) {
  DraftTree t;
  t.tokens = std::move(tokens);
  t.parents = std::move(parents);
  t.child_draft_probs.resize(t.tokens.size());
  return t;
}

TEST(SpeculativeVerifyTest, GreedyFollowsTheTargetArgmaxThroughTheTree) {
  // node:token  0:9 (root) -> {1:7, 2:8}; 1:7 -> {3:4, 4:5}; 2:8 -> {5:6}
  const DraftTree tree = Tree({9, 7, 8, 4, 5, 6}, {-1, 0, 0, 1, 1, 2});
  // Target argmax per node.
  std::vector<int32_t> argmax = {8, 1, 6, 0, 0, 3};
  VerifyResult r = VerifyGreedy(tree, [&](int32_t n) { return argmax[n]; });
  EXPECT_EQ(r.path, (std::vector<int32_t>{2, 5}));
  EXPECT_EQ(r.bonus, 3);
  EXPECT_EQ(r.Emitted(tree), (std::vector<int32_t>{8, 6, 3}));
  argmax[0] = 2;  // no child matches: only the bonus
  r = VerifyGreedy(tree, [&](int32_t n) { return argmax[n]; });
  EXPECT_TRUE(r.path.empty());
  EXPECT_EQ(r.Emitted(tree), (std::vector<int32_t>{2}));
}

// The first emitted token of a sampled round must follow the target distribution at the root
// whatever the draft proposes. `rule` verifies one round.
using Rule = std::function<int32_t(const DraftTree&, const std::vector<float>& p_root,
                                   const std::vector<float>& p_child, std::mt19937_64&)>;

int32_t RealRule(const DraftTree& tree, const std::vector<float>& p_root,
                 const std::vector<float>& p_child, std::mt19937_64& rng) {
  return VerifySampled(
             tree, [&](int32_t n) { return std::span<const float>(n == 0 ? p_root : p_child); },
             rng)
      .Emitted(tree)[0];
}

double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Wrong: accepts every draft token (the draft's distribution comes out).
int32_t BlindRule(const DraftTree& tree, const std::vector<float>&, const std::vector<float>&,
                  std::mt19937_64&) {
  return tree.tokens[1];
}

// Wrong: the right acceptance test, but a rejected token is redrawn from p instead of the
// residual max(p - q, 0).
int32_t NoResidualRule(const DraftTree& tree, const std::vector<float>& p_root,
                       const std::vector<float>&, std::mt19937_64& rng) {
  const std::vector<float>& q = tree.child_draft_probs[0];
  for (int32_t c : tree.Children(0)) {
    const int32_t t = tree.tokens[c];
    const double ratio =
        q.empty() ? p_root[t] : std::min(1.0, static_cast<double>(p_root[t]) / q[t]);
    if (Uniform(rng) < ratio) return t;
  }
  return DrawToken(p_root, rng);
}

struct RootSample {
  std::vector<int64_t> counts;
  int64_t n = 0;
};

// Chains: the draft token is sampled from q. Trees: the children are q's top-3 (point masses).
RootSample SampleRoot(const Rule& rule, bool tree, int n) {
  const std::vector<float> p = Normalised({0.05f, 0.4f, 0.1f, 0.25f, 0.2f, 0.0f});
  const std::vector<float> q = Normalised({0.3f, 0.1f, 0.3f, 0.05f, 0.15f, 0.1f});
  const std::vector<float> p_child = Normalised({0.2f, 0.2f, 0.2f, 0.2f, 0.1f, 0.1f});
  std::mt19937_64 rng(12345);
  RootSample s;
  s.counts.assign(p.size(), 0);
  s.n = n;
  for (int i = 0; i < n; ++i) {
    DraftTree t;
    if (tree) {
      t = Tree({0, 0, 2, 4, 1}, {-1, 0, 0, 0, 1});  // q's top-3 children of the root, one deeper
    } else {
      t = Tree({0, DrawToken(q, rng), 3}, {-1, 0, 1});
      t.child_draft_probs[0] = q;
    }
    ++s.counts[static_cast<size_t>(rule(t, p, p_child, rng))];
  }
  return s;
}

TEST(SpeculativeVerifyTest, SampledRoundsEmitTheTargetDistributionAndWrongRulesDoNot) {
  const std::vector<double> target = {0.05, 0.4, 0.1, 0.25, 0.2, 0.0};
  const int kSamples = 40000;
  for (bool tree : {false, true}) {
    SCOPED_TRACE(tree ? "tree (point-mass children)" : "chain (sampled draft)");
    int df = 0;
    RootSample good = SampleRoot(RealRule, tree, kSamples);
    const double chi2 = ChiSquare(good.counts, target, good.n, &df);
    EXPECT_LT(chi2, Chi2Critical(df)) << "df " << df;
    EXPECT_LT(TotalVariation(good.counts, target, good.n), 0.01);
    // The same test rejects the wrong rules.
    RootSample blind = SampleRoot(BlindRule, tree, kSamples);
    const double chi2_blind = ChiSquare(blind.counts, target, blind.n, &df);
    EXPECT_GT(chi2_blind, Chi2Critical(df));
    RootSample no_residual = SampleRoot(NoResidualRule, tree, kSamples);
    const double chi2_no_residual = ChiSquare(no_residual.counts, target, no_residual.n, &df);
    EXPECT_GT(chi2_no_residual, Chi2Critical(df));
  }
}

TEST(SpeculativeVerifyTest, AcceptedChainRunsFollowTheTargetJointDistribution) {
  // Two-token runs: the second emitted token (when the first draft was accepted it comes from
  // the child's distribution) must follow p_child; check the joint of the first two tokens of
  // chains whose second node is a sampled draft as well.
  const std::vector<float> p0 = Normalised({0.5f, 0.3f, 0.2f});
  const std::vector<float> p1 = Normalised({0.1f, 0.6f, 0.3f});  // after any first token
  const std::vector<float> q0 = Normalised({0.2f, 0.2f, 0.6f});
  const std::vector<float> q1 = Normalised({0.7f, 0.2f, 0.1f});
  std::mt19937_64 rng(7);
  std::vector<int64_t> counts(9, 0);
  int64_t n = 0;
  for (int i = 0; i < 60000; ++i) {
    DraftTree t = Tree({0, DrawToken(q0, rng), 0}, {-1, 0, 1});
    t.tokens[2] = DrawToken(q1, rng);
    t.child_draft_probs[0] = q0;
    t.child_draft_probs[1] = q1;
    VerifyResult r = VerifySampled(
        t, [&](int32_t node) { return std::span<const float>(node == 0 ? p0 : p1); }, rng);
    const std::vector<int32_t> out = r.Emitted(t);
    ASSERT_GE(out.size(), 1u);
    if (out.size() < 2) continue;  // a first-token rejection ends the round
    ++counts[static_cast<size_t>(out[0] * 3 + out[1])];
    ++n;
  }
  // Given that the round went on, the second token follows p1 and is independent of the first
  // one's value; the first follows p0 restricted to accepted draft tokens, which the sampled rule
  // makes proportional to min(p0, q0).
  std::vector<double> joint(9);
  double z = 0;
  for (int a = 0; a < 3; ++a) z += std::min(p0[a], q0[a]);
  for (int a = 0; a < 3; ++a) {
    for (int b = 0; b < 3; ++b) joint[a * 3 + b] = std::min(p0[a], q0[a]) / z * p1[b];
  }
  int df = 0;
  const double chi2 = ChiSquare(counts, joint, n, &df);
  EXPECT_LT(chi2, Chi2Critical(df)) << "df " << df;
}

// ---------------------------------------------------------------------------------------------
// The scheduler with a fake target and draft.

constexpr int64_t kVocab = 32;
constexpr float kRange = 4.0f;

class SpeculativeSchedulerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Scheduler> Make(Backend* backend, SpeculativeOptions spec,
                                  SchedulerOptions options = {}) {
    options.speculative = spec;
    auto s = Scheduler::Create(backend, options);
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(s).value() : nullptr;
  }

  static Request Req(uint64_t id, std::vector<int32_t> prompt, SamplingParams params,
                     std::map<uint64_t, Collected>* into) {
    Request r;
    r.id = id;
    r.prompt = std::move(prompt);
    r.params = params;
    r.on_output = [into, id](const TokenOutput& out) { (*into)[id].Add(id, out); };
    return r;
  }

  static SamplingParams Greedy(int max_tokens) {
    SamplingParams p;
    p.temperature = 0;
    p.max_tokens = max_tokens;
    return p;
  }

  static void Run(Scheduler& s, int max_steps = 100000) { RunScheduler(s, max_steps); }

  static std::vector<int32_t> Prompt(int n, int salt) {
    std::vector<int32_t> p;
    for (int i = 0; i < n; ++i) p.push_back((i * 7 + salt * 13 + 3) % kVocab);
    return p;
  }

  // Runs `requests` (id -> prompt, params) to completion with and without speculation on fresh
  // fakes and returns both results.
  void RunBoth(const std::vector<std::pair<std::vector<int32_t>, SamplingParams>>& requests,
               SpeculativeOptions spec, float noise, SchedulerOptions options, int64_t capacity,
               std::map<uint64_t, Collected>* with, std::map<uint64_t, Collected>* without,
               SpeculativeStats* stats = nullptr) {
    for (int pass = 0; pass < 2; ++pass) {
      FakeSpecBackend backend(kVocab, capacity, noise, kRange);
      auto s = Make(&backend, pass == 0 ? spec : SpeculativeOptions{}, options);
      ASSERT_NE(s, nullptr);
      std::map<uint64_t, Collected>* into = pass == 0 ? with : without;
      for (size_t i = 0; i < requests.size(); ++i) {
        ASSERT_TRUE(s->AddRequest(Req(i + 1, requests[i].first, requests[i].second, into)).ok());
      }
      Run(*s);
      EXPECT_EQ(backend.live_sequences(), 0u);
      EXPECT_EQ(backend.FreeKvTokens(), capacity) << "both caches are released";
      if (pass == 0 && stats != nullptr) *stats = s->speculative_stats();
      if (pass == 1) {
        EXPECT_EQ(s->speculative_stats().verify_steps, 0);
        EXPECT_EQ(backend.mtp_calls, 0);
      }
    }
  }
};

TEST_F(SpeculativeSchedulerTest, CreateRejectsABackendWithoutDraftAndATooSmallBudget) {
  FakeSpecBackend backend(kVocab, 1024, 0.0f);
  backend.supports_speculation = false;
  SchedulerOptions options;
  options.speculative = {3, 1, 0};
  auto s = Scheduler::Create(&backend, options);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("MTP"), std::string::npos) << s.status().message();

  backend.supports_speculation = true;
  options.max_batch_tokens = 3;
  s = Scheduler::Create(&backend, options);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("draft_tokens"), std::string::npos);
  options.max_batch_tokens = 4;
  EXPECT_TRUE(Scheduler::Create(&backend, options).ok());
  options.speculative = {2, 3, 99};
  s = Scheduler::Create(&backend, options);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("draft_tokens must be in"), std::string::npos);
}

TEST_F(SpeculativeSchedulerTest, GreedyEqualsDecodingWithoutSpeculationChainAndTree) {
  const std::vector<SpeculativeOptions> configs = {{1, 1, 0}, {3, 1, 0},  {5, 1, 0}, {2, 2, 4},
                                                   {3, 2, 8}, {3, 3, 12}, {4, 4, 20}};
  for (float noise : {0.0f, 0.7f, 3.0f}) {
    for (const SpeculativeOptions& spec : configs) {
      SCOPED_TRACE("noise " + std::to_string(noise) + " steps " + std::to_string(spec.steps) +
                   " topk " + std::to_string(spec.topk) + " draft " +
                   std::to_string(spec.draft_tokens));
      std::vector<std::pair<std::vector<int32_t>, SamplingParams>> requests;
      for (int i = 0; i < 6; ++i) requests.push_back({Prompt(3 + i * 5, i), Greedy(5 + 7 * i)});
      SchedulerOptions options;
      options.max_batch_tokens = 40;  // chunked prefill alongside verification
      std::map<uint64_t, Collected> with, without;
      SpeculativeStats stats;
      RunBoth(requests, spec, noise, options, 4096, &with, &without, &stats);
      for (size_t i = 0; i < requests.size(); ++i) {
        const Collected& c = with[i + 1];
        EXPECT_EQ(c.tokens, without[i + 1].tokens) << "request " << i + 1;
        EXPECT_EQ(c.tokens, FakeSpecGreedy(requests[i].first, kVocab, kRange,
                                           static_cast<int>(requests[i].second.max_tokens)));
        EXPECT_EQ(c.finish, FinishReason::kLength);
        EXPECT_EQ(c.finish_events, 1);
        for (size_t k = 0; k < c.events.size(); ++k) {
          EXPECT_EQ(c.events[k].output_tokens, static_cast<int64_t>(k + 1));
        }
      }
      EXPECT_GT(stats.verify_steps, 0);
      EXPECT_LE(stats.accepted_tokens, stats.drafted_tokens);
      if (noise == 0.0f) {
        // A draft that agrees with the target: every chain token is accepted, and a tree always
        // holds the target's argmax among the root's children.
        if (spec.topk == 1) {
          EXPECT_EQ(stats.accepted_tokens, stats.drafted_tokens);
        }
        EXPECT_GE(stats.AcceptanceLength(), 2.0);
      }
    }
  }
}

TEST_F(SpeculativeSchedulerTest, AnAgreeingChainDraftEmitsStepsPlusOneTokensPerRound) {
  FakeSpecBackend backend(kVocab, 4096, 0.0f, kRange);
  auto s = Make(&backend, {3, 1, 0});
  std::map<uint64_t, Collected> got;
  // max_tokens 1 + 4k: after the first token every round emits exactly 4.
  ASSERT_TRUE(s->AddRequest(Req(1, Prompt(6, 1), Greedy(1 + 4 * 5), &got)).ok());
  Run(*s);
  EXPECT_EQ(got[1].tokens, FakeSpecGreedy(Prompt(6, 1), kVocab, kRange, 21));
  const SpeculativeStats& st = s->speculative_stats();
  EXPECT_EQ(st.verify_steps, 5);
  EXPECT_EQ(st.drafted_tokens, 15);
  EXPECT_EQ(st.accepted_tokens, 15);
  EXPECT_EQ(st.emitted_tokens, 20);
  EXPECT_DOUBLE_EQ(st.AcceptanceLength(), 4.0);
  // One prefill forward, one per round; MTP: per round the extend plus steps - 1 chain steps.
  EXPECT_EQ(backend.forward_calls, 6);
  EXPECT_EQ(backend.mtp_calls, 5 * 3);
}

TEST_F(SpeculativeSchedulerTest, StopTokensAndLimitsInsideAnAcceptedRun) {
  const std::vector<int32_t> prompt = Prompt(5, 2);
  const std::vector<int32_t> ref = FakeSpecGreedy(prompt, kVocab, kRange, 30);
  for (const SpeculativeOptions& spec : {SpeculativeOptions{4, 1, 0}, {3, 2, 6}}) {
    for (int stop_at : {1, 2, 3, 5, 9}) {
      // The first occurrence of ref[stop_at] ends the run there.
      size_t first = 0;
      while (ref[first] != ref[stop_at]) ++first;
      SamplingParams params = Greedy(30);
      params.stop_token_ids = {ref[stop_at]};
      FakeSpecBackend backend(kVocab, 4096, 0.0f, kRange);  // agreeing draft: long accepted runs
      auto s = Make(&backend, spec);
      std::map<uint64_t, Collected> got;
      ASSERT_TRUE(s->AddRequest(Req(1, prompt, params, &got)).ok());
      Run(*s);
      EXPECT_EQ(got[1].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + first + 1));
      EXPECT_EQ(got[1].finish, FinishReason::kStop);
      EXPECT_EQ(got[1].finish_events, 1);
      EXPECT_EQ(backend.live_sequences(), 0u);
    }
    for (int max_tokens : {1, 2, 3, 4, 5, 6, 7, 11}) {
      FakeSpecBackend backend(kVocab, 4096, 0.0f, kRange);
      auto s = Make(&backend, spec);
      std::map<uint64_t, Collected> got;
      ASSERT_TRUE(s->AddRequest(Req(1, prompt, Greedy(max_tokens), &got)).ok());
      Run(*s);
      EXPECT_EQ(got[1].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + max_tokens));
      EXPECT_EQ(got[1].finish, FinishReason::kLength);
      // Positions never go past the limit: the deepest verified node stays below it.
      for (const ForwardBatch& b : backend.batches) {
        for (const SequenceChunk& c : b.chunks) {
          std::vector<int64_t> depth(c.tokens.size(), 0);
          int64_t deepest = static_cast<int64_t>(c.tokens.size()) - 1;
          if (!c.tree_parents.empty()) {
            deepest = 0;
            for (size_t i = 0; i < depth.size(); ++i) {
              depth[i] = c.tree_parents[i] < 0 ? 0 : depth[c.tree_parents[i]] + 1;
              deepest = std::max(deepest, depth[i]);
            }
          }
          EXPECT_LT(c.start_pos + deepest, static_cast<int64_t>(prompt.size()) + max_tokens);
        }
      }
    }
  }
  // max_model_len inside a run.
  SchedulerOptions options;
  options.max_model_len = static_cast<int64_t>(prompt.size()) + 6;
  FakeSpecBackend backend(kVocab, 4096, 0.0f, kRange);
  auto s = Make(&backend, {4, 1, 0}, options);
  std::map<uint64_t, Collected> got;
  ASSERT_TRUE(s->AddRequest(Req(1, prompt, Greedy(100), &got)).ok());
  Run(*s);
  EXPECT_EQ(got[1].tokens, std::vector<int32_t>(ref.begin(), ref.begin() + 6));
  EXPECT_EQ(got[1].finish, FinishReason::kLength);
}

TEST_F(SpeculativeSchedulerTest, PenaltiesAndLogprobsMatchDecodingWithoutSpeculation) {
  SamplingParams params = Greedy(24);
  params.repetition_penalty = 1.7f;
  params.frequency_penalty = 0.4f;
  params.presence_penalty = 0.3f;
  params.logprobs = true;
  params.top_logprobs = 3;
  std::vector<std::pair<std::vector<int32_t>, SamplingParams>> requests = {{Prompt(4, 1), params},
                                                                           {Prompt(9, 2), params}};
  std::map<uint64_t, Collected> with, without;
  for (const SpeculativeOptions& spec : {SpeculativeOptions{3, 1, 0}, {3, 2, 7}}) {
    with.clear();
    without.clear();
    RunBoth(requests, spec, 0.5f, {}, 4096, &with, &without);
    for (uint64_t id : {1, 2}) {
      ASSERT_EQ(with[id].events.size(), without[id].events.size());
      EXPECT_EQ(with[id].tokens, without[id].tokens);
      for (size_t k = 0; k < with[id].events.size(); ++k) {
        const TokenOutput& a = with[id].events[k];
        const TokenOutput& b = without[id].events[k];
        EXPECT_EQ(a.logprob, b.logprob) << "token " << k;
        ASSERT_EQ(a.top_logprobs.size(), 3u);
        for (size_t j = 0; j < 3; ++j) {
          EXPECT_EQ(a.top_logprobs[j].token, b.top_logprobs[j].token);
          EXPECT_EQ(a.top_logprobs[j].logprob, b.top_logprobs[j].logprob);
        }
      }
    }
  }
  // The penalties change the output (the test would not see a missing penalty otherwise).
  EXPECT_NE(without[2].tokens, FakeSpecGreedy(Prompt(9, 2), kVocab, kRange, 24));
}

TEST_F(SpeculativeSchedulerTest, PreemptionAndCancellationKeepWorking) {
  std::vector<std::pair<std::vector<int32_t>, SamplingParams>> requests;
  for (int i = 0; i < 5; ++i) requests.push_back({Prompt(10 + i, i), Greedy(30)});
  for (const SpeculativeOptions& spec : {SpeculativeOptions{3, 1, 0}, {3, 2, 8}}) {
    std::map<uint64_t, Collected> with, without;
    RunBoth(requests, spec, 0.3f, {}, /*capacity=*/150, &with, &without);
    for (uint64_t id = 1; id <= 5; ++id) {
      EXPECT_EQ(with[id].tokens, without[id].tokens) << "request " << id;
      EXPECT_EQ(with[id].tokens.size(), 30u);
    }
  }
  // Preemption happened (the cache holds well under 5 sequences of 40 + drafts).
  FakeSpecBackend backend(kVocab, 150, 0.3f, kRange);
  auto s = Make(&backend, {3, 1, 0});
  std::map<uint64_t, Collected> got;
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(s->AddRequest(Req(i + 1, requests[i].first, requests[i].second, &got)).ok());
  }
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(s->Step().ok());
  s->Cancel(2);
  Run(*s);
  EXPECT_GT(s->total_preemptions(), 0);
  EXPECT_EQ(got[2].finish, FinishReason::kCancelled);
  EXPECT_EQ(got[2].finish_events, 1);
  EXPECT_EQ(got[1].tokens, FakeSpecGreedy(requests[0].first, kVocab, kRange, 30));
  EXPECT_EQ(backend.live_sequences(), 0u);
  EXPECT_EQ(backend.FreeKvTokens(), 150);
}

// A BatchSampler that takes the argmax (lowest id on ties) and records how many rows it saw.
class ArgmaxBatchSampler final : public BatchSampler {
 public:
  Result<std::vector<SampleResult>> SampleBatch(int64_t vocab,
                                                std::span<const BatchSampleRow> rows) override {
    std::vector<SampleResult> out;
    for (const BatchSampleRow& r : rows) {
      int32_t best = 0;
      for (int64_t v = 1; v < vocab; ++v) {
        if (r.logits[v] > r.logits[best]) best = static_cast<int32_t>(v);
      }
      out.push_back({best, 0.0f, {}});
      ++rows_seen;
    }
    return out;
  }
  int rows_seen = 0;
};

TEST_F(SpeculativeSchedulerTest, BatchSamplerSamplesRowsWithoutDraftsOnly) {
  FakeSpecBackend backend(kVocab, 4096, 0.5f, kRange);
  ArgmaxBatchSampler sampler;
  SchedulerOptions options;
  options.batch_sampler = &sampler;
  auto s = Make(&backend, {3, 1, 0}, options);
  std::map<uint64_t, Collected> got;
  ASSERT_TRUE(s->AddRequest(Req(1, Prompt(7, 3), Greedy(20), &got)).ok());
  ASSERT_TRUE(s->AddRequest(Req(2, Prompt(3, 4), Greedy(20), &got)).ok());
  Run(*s);
  EXPECT_EQ(got[1].tokens, FakeSpecGreedy(Prompt(7, 3), kVocab, kRange, 20));
  EXPECT_EQ(got[2].tokens, FakeSpecGreedy(Prompt(3, 4), kVocab, kRange, 20));
  // The first token of each request, plus the last one when a round has no room to draft.
  EXPECT_GE(sampler.rows_seen, 2);
  EXPECT_LE(sampler.rows_seen, 4);
  EXPECT_GT(s->speculative_stats().verify_steps, 0);
}

// Exact distribution of the first `len` generated tokens under the fake target with `params`
// (no penalties): the product of the processed next-token distributions.
std::vector<double> ExactJoint(const std::vector<int32_t>& prompt, const SamplingParams& params,
                               int64_t vocab, int len) {
  std::vector<double> joint(static_cast<size_t>(std::pow(vocab, len)), 0.0);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (size_t cell = 0; cell < joint.size(); ++cell) {
    std::vector<int32_t> seq = prompt;
    std::vector<int32_t> out;
    size_t rest = cell;
    std::vector<int32_t> tokens(static_cast<size_t>(len));
    for (int k = len - 1; k >= 0; --k) {
      tokens[static_cast<size_t>(k)] = static_cast<int32_t>(rest % static_cast<size_t>(vocab));
      rest /= static_cast<size_t>(vocab);
    }
    double p = 1;
    Sampler sampler(params, prompt);
    for (int k = 0; k < len && p > 0; ++k) {
      FakeSpecBackend::TargetLogits(FakeSpecBackend::StateOf(seq), vocab, kRange, logits.data());
      TokenDistribution d;
      sampler.Distribution(logits, out, false, &d);
      p *= d.probs[static_cast<size_t>(tokens[static_cast<size_t>(k)])];
      seq.push_back(tokens[static_cast<size_t>(k)]);
      out.push_back(tokens[static_cast<size_t>(k)]);
    }
    joint[cell] = p;
  }
  return joint;
}

TEST_F(SpeculativeSchedulerTest, SampledOutputFollowsTheTargetDistribution) {
  constexpr int64_t kSmallVocab = 4;
  constexpr int kLen = 5;
  constexpr int kRequests = 20000;
  const std::vector<int32_t> prompt = {1, 3, 2};
  struct Case {
    SpeculativeOptions spec;
    SamplingParams params;
  };
  SamplingParams plain;
  plain.temperature = 1.0f;
  plain.max_tokens = kLen;
  SamplingParams filtered = plain;
  filtered.temperature = 0.7f;
  filtered.top_k = 3;
  filtered.repetition_penalty = 1.3f;
  for (const Case& c : {Case{{3, 1, 0}, plain}, Case{{3, 2, 6}, plain}, Case{{3, 1, 0}, filtered},
                        Case{{2, 2, 5}, filtered}}) {
    SCOPED_TRACE("steps " + std::to_string(c.spec.steps) + " topk " + std::to_string(c.spec.topk) +
                 " top_k " + std::to_string(c.params.top_k));
    FakeSpecBackend backend(kSmallVocab, 1 << 20, /*draft_noise=*/1.5f, kRange);
    SchedulerOptions options;
    options.max_running = 512;
    options.max_batch_tokens = 8192;
    auto s = Make(&backend, c.spec, options);
    ASSERT_NE(s, nullptr);
    std::vector<int64_t> counts(static_cast<size_t>(std::pow(kSmallVocab, kLen)), 0);
    std::vector<std::vector<int32_t>> outs(kRequests);
    for (int i = 0; i < kRequests; ++i) {
      Request r;
      r.id = static_cast<uint64_t>(i + 1);
      r.prompt = prompt;
      r.params = c.params;
      r.params.seed = static_cast<uint64_t>(i) * 7919 + 17;
      r.on_output = [&outs, i](const TokenOutput& out) {
        if (out.token >= 0) outs[i].push_back(out.token);
      };
      ASSERT_TRUE(s->AddRequest(std::move(r)).ok());
    }
    Run(*s);
    for (const auto& o : outs) {
      ASSERT_EQ(o.size(), static_cast<size_t>(kLen));
      size_t cell = 0;
      for (int32_t t : o) cell = cell * kSmallVocab + static_cast<size_t>(t);
      ++counts[cell];
    }
    const std::vector<double> exact = ExactJoint(prompt, c.params, kSmallVocab, kLen);
    int df = 0;
    const double chi2 = ChiSquare(counts, exact, kRequests, &df);
    EXPECT_LT(chi2, Chi2Critical(df)) << "df " << df;
    // Drafts were really verified, and not all accepted (the draft differs from the target).
    const SpeculativeStats& st = s->speculative_stats();
    EXPECT_GT(st.verify_steps, kRequests / 2);
    EXPECT_GT(st.accepted_tokens, 0);
    EXPECT_LT(st.accepted_tokens, st.drafted_tokens);

    // The wrong rule "emit what the draft proposes" gives the draft's distribution, which the
    // same bound rejects: the expected counts under the draft's joint fail it by far.
    std::vector<double> draft_joint(exact.size(), 0.0);
    {
      FakeSpecBackend draft(kSmallVocab, 1, 1.5f, kRange);
      std::vector<float> logits(kSmallVocab);
      for (size_t cell = 0; cell < exact.size(); ++cell) {
        std::vector<int32_t> seq = prompt;
        std::vector<int32_t> out;
        std::vector<int32_t> tokens(kLen);
        size_t rest = cell;
        for (int k = kLen - 1; k >= 0; --k) {
          tokens[k] = static_cast<int32_t>(rest % kSmallVocab);
          rest /= kSmallVocab;
        }
        Sampler sampler(c.params, prompt);
        double p = 1;
        for (int k = 0; k < kLen; ++k) {
          draft.DraftLogits(FakeSpecBackend::StateOf(seq), logits.data());
          TokenDistribution d;
          sampler.Distribution(logits, out, false, &d);
          p *= d.probs[static_cast<size_t>(tokens[k])];
          seq.push_back(tokens[k]);
          out.push_back(tokens[k]);
        }
        draft_joint[cell] = p;
      }
    }
    std::vector<int64_t> draft_counts(exact.size());
    for (size_t i = 0; i < exact.size(); ++i) {
      draft_counts[i] = std::llround(draft_joint[i] * kRequests);
    }
    const double chi2_draft = ChiSquare(draft_counts, exact, kRequests, &df);
    EXPECT_GT(chi2_draft, 10 * Chi2Critical(df));
  }
}

TEST_F(SpeculativeSchedulerTest, SeededSamplingIsReproducibleWhateverTheBatch) {
  SamplingParams params;
  params.temperature = 0.9f;
  params.max_tokens = 25;
  params.seed = 42;
  std::vector<int32_t> alone;
  {
    FakeSpecBackend backend(kVocab, 4096, 1.0f, kRange);
    auto s = Make(&backend, {3, 1, 0});
    std::map<uint64_t, Collected> got;
    ASSERT_TRUE(s->AddRequest(Req(1, Prompt(5, 5), params, &got)).ok());
    Run(*s);
    alone = got[1].tokens;
  }
  FakeSpecBackend backend(kVocab, 200, 1.0f, kRange);  // small: preemptions too
  auto s = Make(&backend, {3, 1, 0});
  std::map<uint64_t, Collected> got;
  for (int i = 0; i < 4; ++i) {
    SamplingParams other = params;
    other.seed = 100 + i;
    ASSERT_TRUE(s->AddRequest(Req(10 + i, Prompt(20, i), other, &got)).ok());
  }
  ASSERT_TRUE(s->AddRequest(Req(1, Prompt(5, 5), params, &got)).ok());
  Run(*s);
  EXPECT_EQ(got[1].tokens, alone);
  EXPECT_EQ(alone.size(), 25u);
}

}  // namespace
}  // namespace spark::engine
