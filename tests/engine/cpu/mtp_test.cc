// Speculative-decoding support of the CPU backend on a tiny GLM-4 MoE checkpoint with an MTP layer
// (written at test time by WriteTinyModel with options.mtp, as `spark-model tiny --mtp` does):
//   * the main model, the MTP draft extend and a 3-step greedy MTP draft chain against the numpy
//     reference tests/reference/mtp_reference.py (built by hand from the spec, which first proves
//     itself against the committed transformers logits of tests/data/models/glm_*), at tp 1 and 2:
//     max |diff| <= 1e-4 * max |ref|;
//   * tree chunks (target and MTP) are bit-identical to each root-to-node path run as a chain;
//   * KeepCacheEntries followed by a plain forward is bit-identical to the accepted path forwarded
//     from scratch, for both caches;
//   * the contract's errors (nothing changes on error), cache accounting of both caches;
//   * the same speculation calls through TpLeaderBackend / RunTpWorker (LocalTpGroup, tp 2 over
//     Gloo) equal tp 1.
// The reference needs python3 with numpy; without them those tests are skipped with a message.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "engine/cpu/cpu_backend.h"
#include "engine/model/loader.h"
#include "engine/model/tiny_model.h"
#include "engine/runtime/local_tp_group.h"
#include "tests/engine/cpu/thread_communicator.h"
#include "tests/engine/model/test_util.h"

namespace spark::engine {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using testing::RunRanks;
using testing::TempDir;
using testing::ThreadCommunicatorGroup;

constexpr double kMaxRelDiff = 1e-4;
constexpr int kDraftSteps = 3;

const fs::path& ReferenceScript() {
  static const fs::path script =
      fs::path(SPARK_SOURCE_DIR) / "tests" / "reference" / "mtp_reference.py";
  return script;
}

// A python3 that can import numpy ($SPARK_PYTHON first), or "" when there is none.
const std::string& Python() {
  static const std::string python = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("SPARK_PYTHON"); env != nullptr && *env) {
      candidates.push_back(env);
    }
    candidates.push_back("python3");
    candidates.push_back("/usr/bin/python3");
    for (const std::string& p : candidates) {
      const std::string cmd = p + " -c 'import numpy' > /dev/null 2>&1";
      if (std::system(cmd.c_str()) == 0) return p;
    }
    return std::string();
  }();
  return python;
}

#define SKIP_WITHOUT_NUMPY()                                                                     \
  if (Python().empty()) {                                                                        \
    GTEST_SKIP() << "python3 with numpy not found (set SPARK_PYTHON or install python3-numpy); " \
                    "the numpy MTP reference cannot run";                                        \
  }

// Runs a command, returns its exit status and stdout.
std::pair<int, std::string> RunCommand(const std::string& cmd) {
  std::string out;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return {-1, out};
  std::array<char, 65536> buf;
  size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), pipe)) > 0) out.append(buf.data(), n);
  const int status = ::pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// max |a - b| / max |b|.
double RelDiff(const float* a, const std::vector<double>& b, size_t offset = 0) {
  double diff = 0.0, mag = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(a[offset + i]) - b[i]));
    mag = std::max(mag, std::fabs(b[i]));
  }
  return mag > 0 ? diff / mag : diff;
}

std::vector<double> Flatten(const Json& rows) {
  std::vector<double> out;
  for (const Json& row : rows) {
    for (const Json& v : row) out.push_back(v.get<double>());
  }
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double m = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    m = std::max(m, std::fabs(static_cast<double>(a[i]) - b[i]));
  }
  return m;
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  double mag = 0.0;
  for (float v : b) mag = std::max(mag, std::fabs(static_cast<double>(v)));
  return MaxAbsDiff(a, b) / mag;
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 53 + salt * 97 + 7) % 500);
  return ids;
}

SequenceChunk Chunk(uint64_t seq, int64_t start, std::vector<int32_t> tokens, bool all = false,
                    std::vector<int32_t> parents = {}, bool hidden = false) {
  SequenceChunk c;
  c.seq_id = seq;
  c.start_pos = start;
  c.tokens = std::move(tokens);
  c.all_logits = all;
  c.tree_parents = std::move(parents);
  c.return_hidden = hidden;
  return c;
}

MtpChunk Mtp(uint64_t seq, int64_t start, std::vector<int32_t> tokens, std::vector<float> hidden,
             bool all = false, std::vector<int32_t> parents = {}, bool return_hidden = false) {
  MtpChunk c;
  c.seq_id = seq;
  c.start_pos = start;
  c.tokens = std::move(tokens);
  c.hidden = std::move(hidden);
  c.all_logits = all;
  c.tree_parents = std::move(parents);
  c.return_hidden = return_hidden;
  return c;
}

ForwardOutput Fwd(Backend* b, std::vector<SequenceChunk> chunks) {
  ForwardBatch batch;
  batch.chunks = std::move(chunks);
  auto out = b->Forward(batch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? std::move(out).value() : ForwardOutput{};
}

ForwardOutput RunMtp(Backend* b, std::vector<MtpChunk> chunks) {
  MtpBatch batch;
  batch.chunks = std::move(chunks);
  auto out = b->ForwardMtp(batch);
  EXPECT_TRUE(out.ok()) << out.status().ToString();
  return out.ok() ? std::move(out).value() : ForwardOutput{};
}

std::vector<float> Rows(const std::vector<float>& m, int64_t width, int64_t begin, int64_t end) {
  return std::vector<float>(m.begin() + begin * width, m.begin() + end * width);
}

class MtpTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new TempDir();
    TinyModelOptions o;
    o.seed = 11;
    o.mtp = true;
    const Status s = WriteTinyModel(dir_->path(), o);
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  static const fs::path& model_dir() { return dir_->path(); }

  static CpuBackendOptions Options(int64_t kv_bytes = int64_t{16} << 20) {
    CpuBackendOptions o;
    o.threads = 2;
    o.kv_cache_bytes = kv_bytes;
    o.kv_block_tokens = 4;
    return o;
  }

  static std::unique_ptr<CpuBackend> Single(bool load_mtp = true,
                                            const CpuBackendOptions& options = Options()) {
    LoadOptions load;
    load.load_mtp = load_mtp;
    auto w = LoadModelWeights(model_dir(), load);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    auto b = CpuBackend::Create(std::move(w).value(), nullptr, options);
    EXPECT_TRUE(b.ok()) << b.status().ToString();
    return std::move(b).value();
  }

  static TempDir* dir_;
};

TempDir* MtpTest::dir_ = nullptr;

// ---- The numpy reference ------------------------------------------------------------------

TEST(MtpReferenceScriptTest, ReproducesTransformersLogitsOfTheCommittedGlmModels) {
  SKIP_WITHOUT_NUMPY();
  const fs::path models = fs::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models";
  int checked = 0;
  for (const char* variant : {"glm_base", "glm_air", "glm_groups", "glm_nobias"}) {
    const fs::path dir = models / variant;
    if (!fs::exists(dir / "ref_logits.f32")) continue;
    auto [status, out] =
        RunCommand(Python() + " " + ReferenceScript().string() + " --check " + dir.string());
    ASSERT_FALSE(out.empty()) << variant;
    const Json r = Json::parse(out);
    std::printf(
        "[ numpy ref ] %s vs transformers: max|diff| %.3g, max|ref| %.3g, rel %.3g, argmax "
        "%d/%d\n",
        variant, r["max_abs_diff"].get<double>(), r["max_abs_ref"].get<double>(),
        r["rel_diff"].get<double>(), r["argmax_agree"].get<int>(), r["positions"].get<int>());
    EXPECT_EQ(status, 0) << out;
    EXPECT_LT(r["rel_diff"].get<double>(), kMaxRelDiff) << variant;
    EXPECT_EQ(r["argmax_agree"], r["positions"]) << variant;
    ++checked;
  }
  EXPECT_GE(checked, 1) << "no tests/data/models/glm_* reference folder found";
}

// Main model, MTP draft extend and the greedy draft chain against the numpy reference.
class MtpAgainstReferenceTest : public MtpTest, public ::testing::WithParamInterface<int> {};

TEST_P(MtpAgainstReferenceTest, ForwardMtpMatchesNumpyReference) {
  SKIP_WITHOUT_NUMPY();
  const int tp = GetParam();
  const std::vector<int32_t> tokens = Prompt(12, 1);
  std::string ids;
  for (int32_t t : tokens) ids += (ids.empty() ? "" : ",") + std::to_string(t);
  auto [status, out] =
      RunCommand(Python() + " " + ReferenceScript().string() + " " + model_dir().string() +
                 " --tokens " + ids + " --draft-steps " + std::to_string(kDraftSteps));
  ASSERT_EQ(status, 0) << out;
  const Json ref = Json::parse(out);
  const std::vector<int32_t> draft = ref["draft_tokens"].get<std::vector<int32_t>>();
  ASSERT_EQ(draft.size(), static_cast<size_t>(kDraftSteps));
  const int64_t n = static_cast<int64_t>(tokens.size());

  // Every rank makes the same calls; rank r's outputs land in outputs[r].
  struct Outputs {
    ForwardOutput prefill, extend;
    std::vector<ForwardOutput> steps;
  };
  std::vector<Outputs> outputs(tp);
  ThreadCommunicatorGroup group(tp);
  RunRanks(&group, [&](int rank, Communicator* comm) {
    LoadOptions load;
    load.tp_rank = rank;
    load.tp_size = tp;
    load.load_mtp = true;
    auto w = LoadModelWeights(model_dir(), load);
    EXPECT_TRUE(w.ok()) << w.status().ToString();
    auto created = CpuBackend::Create(std::move(w).value(), tp > 1 ? comm : nullptr, Options());
    EXPECT_TRUE(created.ok()) << created.status().ToString();
    CpuBackend* b = created->get();
    EXPECT_TRUE(b->SupportsSpeculation());
    Outputs& o = outputs[rank];
    o.prefill = Fwd(b, {Chunk(1, 0, tokens, true, {}, true)});
    const int64_t h = o.prefill.hidden_size;
    // Draft extend: pairs (t_{j+1}, h_j), j = 0 .. n-2.
    o.extend = RunMtp(b, {Mtp(1, 0, std::vector<int32_t>(tokens.begin() + 1, tokens.end()),
                              Rows(o.prefill.hidden, h, 0, n - 1), true, {}, true)});
    std::vector<float> prev = Rows(o.extend.hidden, h, n - 2, n - 1);
    for (int k = 0; k < kDraftSteps; ++k) {
      o.steps.push_back(RunMtp(b, {Mtp(1, n - 1 + k, {draft[k]}, prev, false, {}, true)}));
      prev = o.steps.back().hidden;
    }
    EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), n);
    EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), n - 1 + kDraftSteps);
  });

  const Outputs& o = outputs[0];
  const int64_t vocab = o.prefill.vocab_size;
  ASSERT_EQ(o.prefill.hidden_size, 128);
  ASSERT_EQ(o.prefill.hidden_row_begin, std::vector<int64_t>{0});
  ASSERT_EQ(static_cast<int64_t>(o.prefill.logits.size()), n * vocab);
  ASSERT_EQ(static_cast<int64_t>(o.prefill.hidden.size()), n * 128);
  const double logits = RelDiff(o.prefill.logits.data(), Flatten(ref["logits"]));
  const double hidden = RelDiff(o.prefill.hidden.data(), Flatten(ref["hidden"]));
  ASSERT_EQ(static_cast<int64_t>(o.extend.logits.size()), (n - 1) * vocab);
  const double mtp_logits = RelDiff(o.extend.logits.data(), Flatten(ref["mtp_logits"]));
  const double mtp_hidden = RelDiff(o.extend.hidden.data(), Flatten(ref["mtp_hidden"]));
  std::printf(
      "[ tp=%d ] rel diff vs numpy: logits %.3g, hidden %.3g, MTP logits %.3g, MTP hidden "
      "%.3g\n",
      tp, logits, hidden, mtp_logits, mtp_hidden);
  EXPECT_LT(logits, kMaxRelDiff);
  EXPECT_LT(hidden, kMaxRelDiff);
  EXPECT_LT(mtp_logits, kMaxRelDiff);
  EXPECT_LT(mtp_hidden, kMaxRelDiff);
  const std::vector<double> step_logits = Flatten(ref["draft_logits"]);
  const std::vector<double> step_hidden = Flatten(ref["draft_hidden"]);
  ASSERT_EQ(o.steps.size(), static_cast<size_t>(kDraftSteps));
  for (int k = 0; k < kDraftSteps; ++k) {
    ASSERT_EQ(static_cast<int64_t>(o.steps[k].logits.size()), vocab);
    const std::vector<double> l(step_logits.begin() + k * vocab,
                                step_logits.begin() + (k + 1) * vocab);
    const std::vector<double> hs(step_hidden.begin() + k * 128,
                                 step_hidden.begin() + (k + 1) * 128);
    const double dl = RelDiff(o.steps[k].logits.data(), l);
    const double dh = RelDiff(o.steps[k].hidden.data(), hs);
    std::printf("[ tp=%d ] draft step %d (token %d): rel diff logits %.3g, hidden %.3g\n", tp, k,
                draft[k], dl, dh);
    EXPECT_LT(dl, kMaxRelDiff) << "step " << k;
    EXPECT_LT(dh, kMaxRelDiff) << "step " << k;
  }
  // The drafted tokens are the reference's greedy choices.
  EXPECT_EQ(std::max_element(o.extend.logits.end() - vocab, o.extend.logits.end()) -
                (o.extend.logits.end() - vocab),
            draft[0]);
  // Every rank returns the same full-vocabulary logits and full-width hidden rows.
  for (int r = 1; r < tp; ++r) {
    EXPECT_EQ(outputs[r].prefill.logits, o.prefill.logits);
    EXPECT_EQ(outputs[r].prefill.hidden, o.prefill.hidden);
    EXPECT_EQ(outputs[r].extend.logits, o.extend.logits);
    EXPECT_EQ(outputs[r].steps.back().hidden, o.steps.back().hidden);
  }
}

INSTANTIATE_TEST_SUITE_P(TensorParallel, MtpAgainstReferenceTest, ::testing::Values(1, 2),
                         [](const auto& info) { return "tp" + std::to_string(info.param); });

// ---- Tree chunks --------------------------------------------------------------------------

// parents of the verification tree below: root 0 with children 1, 2; 3, 4 under 1; 5 under 2;
// 6 a second root, 7 under it.
const std::vector<int32_t> kParents = {-1, 0, 0, 1, 1, 2, -1, 6};

std::vector<int32_t> PathTo(int node) {
  std::vector<int32_t> path;
  for (int n = node; n >= 0; n = kParents[n]) path.insert(path.begin(), n);
  return path;
}

TEST_F(MtpTest, TreeChunkEqualsEveryRootToNodePathAsAChain) {
  auto b = Single();
  const std::vector<int32_t> prompt = Prompt(9, 2);
  const std::vector<int32_t> tree = {17, 301, 44, 5, 260, 99, 3, 411};
  const int64_t p = static_cast<int64_t>(prompt.size());
  ForwardOutput pre = Fwd(b.get(), {Chunk(1, 0, prompt, true, {}, true)});
  const int64_t h = pre.hidden_size;
  const int64_t vocab = pre.vocab_size;
  ForwardOutput out = Fwd(b.get(), {Chunk(1, p, tree, true, kParents, true)});
  ASSERT_EQ(out.logits.size(), tree.size() * vocab);
  ASSERT_EQ(out.hidden.size(), tree.size() * h);
  EXPECT_EQ(b->CachedTokens(1), p + static_cast<int64_t>(tree.size()));

  // MTP over the same tree: pair i pairs tree token i with a hidden row (here: the target's tree
  // hidden of its parent node, or the last prompt hidden for a root).
  RunMtp(b.get(), {Mtp(1, 0, std::vector<int32_t>(prompt.begin() + 1, prompt.end()),
                       Rows(pre.hidden, h, 0, p - 1))});
  std::vector<float> mtp_hidden;
  for (size_t i = 0; i < tree.size(); ++i) {
    const std::vector<float> row = kParents[i] < 0
                                       ? Rows(pre.hidden, h, p - 1, p)
                                       : Rows(out.hidden, h, kParents[i], kParents[i] + 1);
    mtp_hidden.insert(mtp_hidden.end(), row.begin(), row.end());
  }
  ForwardOutput mtp = RunMtp(b.get(), {Mtp(1, p - 1, tree, mtp_hidden, true, kParents, true)});
  ASSERT_EQ(mtp.logits.size(), tree.size() * vocab);

  for (int node = 0; node < static_cast<int>(tree.size()); ++node) {
    SCOPED_TRACE("node " + std::to_string(node));
    const std::vector<int32_t> path = PathTo(node);
    std::vector<int32_t> chain;
    std::vector<float> chain_hidden;
    for (int32_t i : path) {
      chain.push_back(tree[i]);
      const std::vector<float> row =
          Rows(mtp_hidden, h, i, i + 1);  // the same (token, hidden) pair
      chain_hidden.insert(chain_hidden.end(), row.begin(), row.end());
    }
    const uint64_t seq = 100 + node;
    Fwd(b.get(), {Chunk(seq, 0, prompt)});
    ForwardOutput c = Fwd(b.get(), {Chunk(seq, p, chain, false, {}, true)});
    EXPECT_EQ(c.logits, Rows(out.logits, vocab, node, node + 1)) << "target logits";
    const int64_t len = static_cast<int64_t>(chain.size());
    ASSERT_EQ(static_cast<int64_t>(c.hidden.size()), len * h);  // every token of the chain
    EXPECT_EQ(Rows(c.hidden, h, len - 1, len), Rows(out.hidden, h, node, node + 1))
        << "target hidden";
    RunMtp(b.get(), {Mtp(seq, 0, std::vector<int32_t>(prompt.begin() + 1, prompt.end()),
                         Rows(pre.hidden, h, 0, p - 1))});
    ForwardOutput m = RunMtp(b.get(), {Mtp(seq, p - 1, chain, chain_hidden, false, {}, true)});
    EXPECT_EQ(m.logits, Rows(mtp.logits, vocab, node, node + 1)) << "MTP logits";
    EXPECT_EQ(m.hidden, Rows(mtp.hidden, h, node, node + 1)) << "MTP hidden";
    b->Release(seq);
  }
}

TEST_F(MtpTest, TreeChunkInABatchWithOtherSequences) {
  auto b = Single();
  const std::vector<int32_t> a = Prompt(6, 3), c = Prompt(5, 4);
  const std::vector<int32_t> tree = {8, 9, 10, 11, 12, 13, 14, 15};
  Fwd(b.get(), {Chunk(1, 0, a), Chunk(2, 0, c)});
  // Tree for sequence 1 next to a plain prefill chunk of sequence 3 and a decode of 2.
  ForwardOutput mixed = Fwd(b.get(), {Chunk(3, 0, Prompt(7, 5), false, {}, true),
                                      Chunk(1, 6, tree, true, kParents), Chunk(2, 5, {77})});
  ASSERT_EQ(mixed.row_begin, (std::vector<int64_t>{0, 1, 9}));
  // Hidden rows: every token of sequence 3 only.
  ASSERT_EQ(mixed.hidden_row_begin, (std::vector<int64_t>{0, 7, 7}));
  ASSERT_EQ(mixed.hidden.size(), 7u * 128);
  auto fresh = Single();
  Fwd(fresh.get(), {Chunk(1, 0, a)});
  ForwardOutput alone = Fwd(fresh.get(), {Chunk(1, 6, tree, true, kParents)});
  EXPECT_EQ(Rows(mixed.logits, mixed.vocab_size, 1, 9), alone.logits);
  ForwardOutput three = Fwd(fresh.get(), {Chunk(3, 0, Prompt(7, 5), false, {}, true)});
  EXPECT_EQ(three.hidden, mixed.hidden);
  EXPECT_EQ(Rows(three.logits, three.vocab_size, 0, 1), Rows(mixed.logits, mixed.vocab_size, 0, 1));
}

// ---- KeepCacheEntries -----------------------------------------------------------------------

TEST_F(MtpTest, KeepCacheEntriesThenForwardEqualsTheAcceptedPathFromScratch) {
  auto b = Single();
  const std::vector<int32_t> prompt = Prompt(10, 6);
  const std::vector<int32_t> tree = {17, 301, 44, 5, 260, 99, 3, 411};
  const std::vector<int32_t> accepted = {0, 1, 4};  // root, node 1, node 4 (a path)
  const std::vector<int32_t> next = {123, 45};
  const int64_t p = static_cast<int64_t>(prompt.size());
  ForwardOutput pre = Fwd(b.get(), {Chunk(1, 0, prompt, false, {}, true)});
  const int64_t h = pre.hidden_size;
  ForwardOutput verify = Fwd(b.get(), {Chunk(1, p, tree, true, kParents, true)});
  // MTP cache: the prompt pairs, then a tree of drafts from the last prompt position.
  RunMtp(b.get(), {Mtp(1, 0, std::vector<int32_t>(prompt.begin() + 1, prompt.end()),
                       Rows(pre.hidden, h, 0, p - 1))});
  std::vector<float> tree_hidden;
  for (size_t i = 0; i < tree.size(); ++i) {
    const std::vector<float> row = Rows(verify.hidden, h, i, i + 1);
    tree_hidden.insert(tree_hidden.end(), row.begin(), row.end());
  }
  RunMtp(b.get(), {Mtp(1, p - 1, tree, tree_hidden, true, kParents)});

  ASSERT_TRUE(b->KeepCacheEntries(1, CacheKind::kTarget, p, accepted).ok());
  ASSERT_TRUE(b->KeepCacheEntries(1, CacheKind::kMtp, p - 1, accepted).ok());
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), p + 3);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), p - 1 + 3);
  ForwardOutput after = Fwd(b.get(), {Chunk(1, p + 3, next, true, {}, true)});
  std::vector<float> next_hidden = Rows(after.hidden, h, 0, 2);
  ForwardOutput mtp_after = RunMtp(b.get(), {Mtp(1, p + 2, next, next_hidden, true, {}, true)});

  // From scratch: prompt + accepted tokens + next as plain chains.
  auto fresh = Single();
  std::vector<int32_t> all = prompt;
  std::vector<float> all_hidden = Rows(pre.hidden, h, 0, p - 1);
  for (int32_t i : accepted) {
    all.push_back(tree[i]);
    const std::vector<float> row = Rows(tree_hidden, h, i, i + 1);
    all_hidden.insert(all_hidden.end(), row.begin(), row.end());
  }
  Fwd(fresh.get(), {Chunk(1, 0, all)});
  ForwardOutput ref = Fwd(fresh.get(), {Chunk(1, p + 3, next, true, {}, true)});
  EXPECT_EQ(after.logits, ref.logits);
  EXPECT_EQ(after.hidden, ref.hidden);
  // MTP pairs: prompt pairs, then (tree[accepted[i]], its hidden row), then next.
  RunMtp(fresh.get(), {Mtp(1, 0, std::vector<int32_t>(all.begin() + 1, all.end()), all_hidden)});
  ForwardOutput mtp_ref = RunMtp(fresh.get(), {Mtp(1, p + 2, next, next_hidden, true, {}, true)});
  EXPECT_EQ(mtp_after.logits, mtp_ref.logits);
  EXPECT_EQ(mtp_after.hidden, mtp_ref.hidden);
}

TEST_F(MtpTest, KeepCacheEntriesRejectsBadIndicesAndChangesNothing) {
  auto b = Single();
  const std::vector<int32_t> prompt = Prompt(6, 7);
  Fwd(b.get(), {Chunk(1, 0, prompt)});
  Fwd(b.get(), {Chunk(1, 6, {1, 2, 3, 4}, true, {-1, 0, 0, 1})});
  const int64_t free_before = b->FreeKvTokens();
  for (auto [prefix, keep] : std::vector<std::pair<int64_t, std::vector<int32_t>>>{
           {11, {}}, {-1, {}}, {6, {1, 1}}, {6, {2, 1}}, {6, {4}}, {6, {-1}}, {8, {2}}}) {
    SCOPED_TRACE("prefix " + std::to_string(prefix));
    Status s = b->KeepCacheEntries(1, CacheKind::kTarget, prefix, keep);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), 10);
  }
  EXPECT_EQ(b->FreeKvTokens(), free_before);
  // Unknown sequences have nothing cached: only the empty keep is valid.
  EXPECT_TRUE(b->KeepCacheEntries(99, CacheKind::kTarget, 0, {}).ok());
  EXPECT_EQ(b->KeepCacheEntries(99, CacheKind::kMtp, 1, {}).code(), StatusCode::kInvalidArgument);
  // keep = {} truncates (rollback); the next forward starts there.
  ASSERT_TRUE(b->KeepCacheEntries(1, CacheKind::kTarget, 7, {}).ok());
  EXPECT_EQ(b->CachedTokens(1), 7);
  auto fresh = Single();
  std::vector<int32_t> seven = prompt;
  seven.push_back(1);
  Fwd(fresh.get(), {Chunk(1, 0, seven)});
  EXPECT_EQ(Fwd(b.get(), {Chunk(1, 7, {9})}).logits, Fwd(fresh.get(), {Chunk(1, 7, {9})}).logits);
}

// ---- Errors and accounting ----------------------------------------------------------------

TEST_F(MtpTest, BadTreesAndMtpChunksAreRejectedBeforeAnythingChanges) {
  auto b = Single();
  Fwd(b.get(), {Chunk(1, 0, Prompt(5, 8), false, {}, true)});
  const std::vector<float> row(128, 0.5f);
  RunMtp(b.get(), {Mtp(1, 0, {3, 4}, std::vector<float>(256, 0.25f))});
  struct Bad {
    const char* what;
    std::vector<int32_t> parents;
  };
  for (const Bad& bad : {Bad{"too few", {-1, 0}}, Bad{"self", {-1, 1, 1}}, Bad{"later", {-1, 2, 0}},
                         Bad{"below -1", {-2, 0, 1}}}) {
    SCOPED_TRACE(bad.what);
    ForwardBatch batch;
    // A valid chunk of another sequence in the same batch must not run either.
    batch.chunks = {Chunk(2, 0, {1, 2}), Chunk(1, 5, {7, 8, 9}, true, bad.parents)};
    auto out = b->Forward(batch);
    EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument) << out.status().ToString();
    EXPECT_NE(out.status().message().find("tree parent"), std::string::npos)
        << out.status().message();
    MtpBatch mtp;
    mtp.chunks = {Mtp(1, 2, {7, 8, 9}, std::vector<float>(3 * 128, 0.1f), true, bad.parents)};
    EXPECT_EQ(b->ForwardMtp(mtp).status().code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), 5);
  EXPECT_EQ(b->CachedTokens(2, CacheKind::kTarget), 0);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 2);

  MtpBatch mtp;
  mtp.chunks = {Mtp(1, 2, {7, 8}, row)};  // one hidden row for two tokens
  auto out = b->ForwardMtp(mtp);
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("hidden"), std::string::npos) << out.status().message();
  mtp.chunks = {Mtp(1, 5, {7}, row)};  // start_pos of the target cache, not the MTP one
  out = b->ForwardMtp(mtp);
  EXPECT_EQ(out.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(out.status().message().find("MTP cache"), std::string::npos) << out.status().message();
  mtp.chunks = {Mtp(1, 2, {512}, row)};  // token outside the vocabulary
  EXPECT_EQ(b->ForwardMtp(mtp).status().code(), StatusCode::kInvalidArgument);
  mtp.chunks = {Mtp(1, 2, {}, {})};
  EXPECT_EQ(b->ForwardMtp(mtp).status().code(), StatusCode::kInvalidArgument);
  mtp.chunks = {Mtp(1, 2, {7}, row), Mtp(1, 3, {8}, row)};
  EXPECT_EQ(b->ForwardMtp(mtp).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 2);
}

TEST_F(MtpTest, WithoutAnMtpLayerSpeculationIsUnimplementedButTreesWork) {
  auto b = Single(/*load_mtp=*/false);
  EXPECT_FALSE(b->SupportsSpeculation());
  MtpBatch mtp;
  mtp.chunks = {Mtp(1, 0, {1}, std::vector<float>(128, 0.0f))};
  auto out = b->ForwardMtp(mtp);
  EXPECT_EQ(out.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(out.status().message().find("MTP"), std::string::npos);
  EXPECT_EQ(b->KeepCacheEntries(1, CacheKind::kMtp, 0, {}).code(), StatusCode::kUnimplemented);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 0);
  Fwd(b.get(), {Chunk(1, 0, {1, 2, 3})});
  ForwardOutput tree = Fwd(b.get(), {Chunk(1, 3, {4, 5, 6}, true, {-1, 0, -1}, true)});
  EXPECT_EQ(tree.hidden.size(), 3u * 128);
  EXPECT_TRUE(b->KeepCacheEntries(1, CacheKind::kTarget, 3, {2}).ok());
  EXPECT_EQ(b->CachedTokens(1), 4);
  // The whole KV budget goes to the target cache.
  EXPECT_GT(b->KvCapacityTokens(), Single()->KvCapacityTokens());
}

TEST_F(MtpTest, BothCachesShareTheBudgetAndAreReleasedTogether) {
  // One block of 4 tokens over all 4 layers (3 + MTP): 4 layers * (K, V) * 4 tokens * 2 kv heads
  // * 64 dims * 4 B = 16 KiB; a budget of 5 such blocks gives each cache 5 blocks = 20 tokens.
  const int64_t block = int64_t{4} * 2 * 4 * 2 * 64 * 4;
  auto b = Single(true, Options(5 * block));
  EXPECT_EQ(b->KvCapacityTokens(), 20);
  EXPECT_EQ(b->FreeKvTokens(), 20);
  Fwd(b.get(), {Chunk(1, 0, Prompt(8, 9), false, {}, true)});
  EXPECT_EQ(b->FreeKvTokens(), 12);
  RunMtp(b.get(), {Mtp(1, 0, Prompt(16, 10), std::vector<float>(16 * 128, 0.1f))});
  EXPECT_EQ(b->FreeKvTokens(), 4);  // the MTP cache is the fuller one now
  MtpBatch mtp;
  mtp.chunks = {Mtp(1, 16, Prompt(5, 11), std::vector<float>(5 * 128, 0.1f))};
  auto full = b->ForwardMtp(mtp);
  EXPECT_EQ(full.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(full.status().message().find("MTP cache"), std::string::npos);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 16);
  b->Release(1);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), 0);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 0);
  EXPECT_EQ(b->FreeKvTokens(), 20);
}

// ---- Tensor parallelism through TpLeaderBackend / RunTpWorker -------------------------------

// The speculation calls of one verify round, made on `b`; returns every output in order.
std::vector<ForwardOutput> SpeculationRound(Backend* b) {
  std::vector<ForwardOutput> outs;
  const std::vector<int32_t> prompt = Prompt(8, 12);
  outs.push_back(Fwd(b, {Chunk(1, 0, prompt, false, {}, true), Chunk(2, 0, Prompt(5, 13))}));
  const int64_t h = outs[0].hidden_size;
  outs.push_back(RunMtp(b, {Mtp(1, 0, std::vector<int32_t>(prompt.begin() + 1, prompt.end()),
                                Rows(outs[0].hidden, h, 0, 7), true, {}, true)}));
  const std::vector<float> last = Rows(outs[0].hidden, h, 7, 8);
  // Two draft steps, then a 4-node tree verify.
  outs.push_back(RunMtp(b, {Mtp(1, 7, {300}, last, false, {}, true)}));
  outs.push_back(RunMtp(b, {Mtp(1, 8, {301}, outs.back().hidden, false, {}, true)}));
  outs.push_back(Fwd(b, {Chunk(1, 8, {300, 301, 302, 303}, true, {-1, 0, 1, 0}, true)}));
  EXPECT_TRUE(b->KeepCacheEntries(1, CacheKind::kTarget, 8, {0, 1}).ok());
  EXPECT_TRUE(b->KeepCacheEntries(1, CacheKind::kMtp, 7, {0}).ok());
  b->Release(2);
  EXPECT_EQ(b->KeepCacheEntries(1, CacheKind::kTarget, 8, {5}).code(),
            StatusCode::kInvalidArgument);  // rejected on rank 0, never sent
  outs.push_back(Fwd(b, {Chunk(1, 10, {7, 8}, true, {}, true)}));
  outs.push_back(RunMtp(b, {Mtp(1, 8, {301, 7}, Rows(outs[4].hidden, h, 0, 2), true, {}, true)}));
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kTarget), 12);
  EXPECT_EQ(b->CachedTokens(1, CacheKind::kMtp), 10);
  EXPECT_EQ(b->CachedTokens(2, CacheKind::kTarget), 0);
  return outs;
}

TEST_F(MtpTest, TensorParallelGroupRunsSpeculationLikeASingleRank) {
  auto single = Single();
  const std::vector<ForwardOutput> expected = SpeculationRound(single.get());

  LocalTpGroupOptions o;
  o.model_dir = model_dir();
  o.tp_size = 2;
  o.load.load_mtp = true;
  o.cpu.threads = 1;
  o.cpu.kv_cache_bytes = int64_t{16} << 20;
  o.cpu.kv_block_tokens = 4;
  o.gloo.op_timeout_ms = 20000;
  auto group = LocalTpGroup::Create(o);
  ASSERT_TRUE(group.ok()) << group.status().ToString();
  Backend* leader = (*group)->backend();
  EXPECT_TRUE(leader->SupportsSpeculation());
  const std::vector<ForwardOutput> got = SpeculationRound(leader);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE("call " + std::to_string(i));
    EXPECT_EQ(got[i].row_begin, expected[i].row_begin);
    EXPECT_EQ(got[i].hidden_row_begin, expected[i].hidden_row_begin);
    EXPECT_LT(RelDiff(got[i].logits, expected[i].logits), 1e-5);
    EXPECT_LT(RelDiff(got[i].hidden, expected[i].hidden), 1e-5);
  }
  // The workers applied the same compactions: their caches equal rank 0's, so the next steps
  // (whose collectives pair with the workers') still agree with the single rank.
  const std::vector<float> h(2 * 128, 0.2f);
  ForwardOutput a = RunMtp(leader, {Mtp(1, 10, {5, 6}, h, true)});
  ForwardOutput e = RunMtp(single.get(), {Mtp(1, 10, {5, 6}, h, true)});
  EXPECT_LT(RelDiff(a.logits, e.logits), 1e-5);
  EXPECT_TRUE((*group)->Shutdown().ok());
}

}  // namespace
}  // namespace spark::engine
