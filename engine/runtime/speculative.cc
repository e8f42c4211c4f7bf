#include "engine/runtime/speculative.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>
#include <utility>

#include "common/check.h"

namespace spark::engine {
namespace {

constexpr int kMaxSteps = 32;
constexpr int kMaxTopk = 16;
constexpr int kMaxDraftTokens = 64;  // verification trees stay small (one masked attention tile)

double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// Renormalises `p` in place; false (and `p` unchanged) when its sum is not positive.
bool Normalise(std::vector<double>& p) {
  double sum = 0;
  for (double v : p) sum += v;
  if (!(sum > 0)) return false;
  for (double& v : p) v /= sum;
  return true;
}

int32_t DrawFrom(const std::vector<double>& p, std::mt19937_64& rng) {
  double total = 0;
  for (double v : p) total += v;
  const double u = Uniform(rng) * total;
  double cumulative = 0;
  int32_t last_positive = 0;
  for (size_t t = 0; t < p.size(); ++t) {
    if (p[t] <= 0) continue;
    cumulative += p[t];
    last_positive = static_cast<int32_t>(t);
    if (u < cumulative) return last_positive;
  }
  return last_positive;
}

// Softmax of processed logits (the draft scores of greedy requests).
std::vector<float> Softmax(const TokenDistribution& d) {
  std::vector<float> p(d.logits.size());
  for (size_t i = 0; i < p.size(); ++i) {
    p[i] = static_cast<float>(std::exp(static_cast<double>(d.logits[i]) - d.lse));
  }
  return p;
}

}  // namespace

Result<SpeculativeOptions> ResolveSpeculativeOptions(const SpeculativeOptions& options) {
  SpeculativeOptions o = options;
  if (o.steps < 0 || o.steps > kMaxSteps) {
    return InvalidArgument("speculative steps must be in [0, " + std::to_string(kMaxSteps) +
                           "] (0 = off), got " + std::to_string(o.steps));
  }
  if (o.topk < 1 || o.topk > kMaxTopk) {
    return InvalidArgument("speculative topk must be in [1, " + std::to_string(kMaxTopk) +
                           "], got " + std::to_string(o.topk));
  }
  if (o.draft_tokens < 0) {
    return InvalidArgument("speculative draft_tokens must be >= 0, got " +
                           std::to_string(o.draft_tokens));
  }
  if (o.steps == 0) {
    if (o.topk != 1 || o.draft_tokens != 0) {
      return InvalidArgument(
          "speculative topk / draft_tokens need steps >= 1 (speculation is off with steps 0); "
          "set --spec-steps");
    }
    return o;
  }
  if (o.topk == 1) {
    o.draft_tokens = o.steps + 1;  // a chain verifies every draft token plus the root
    return o;
  }
  // Candidates: k + (steps - 1) k^2, plus the root.
  const int64_t max_nodes = 1 + o.topk + static_cast<int64_t>(o.steps - 1) * o.topk * o.topk;
  const int64_t limit = std::min<int64_t>(max_nodes, kMaxDraftTokens);
  if (o.draft_tokens < 2 || o.draft_tokens > limit) {
    return InvalidArgument(
        "speculative draft_tokens must be in [2, " + std::to_string(limit) + "] with topk " +
        std::to_string(o.topk) + " and steps " + std::to_string(o.steps) +
        " (the root plus at most topk + (steps-1) * "
        "topk^2 candidates, at most " +
        std::to_string(kMaxDraftTokens) + "), got " + std::to_string(o.draft_tokens));
  }
  return o;
}

double SpeculativeStats::AcceptanceLength() const {
  if (verify_steps == 0) return 0;
  return static_cast<double>(accepted_tokens) / static_cast<double>(verify_steps) + 1.0;
}

std::vector<int32_t> DraftTree::Children(int32_t node) const {
  std::vector<int32_t> out;
  for (int32_t i = node + 1; i < size(); ++i) {
    if (parents[i] == node) out.push_back(i);
  }
  return out;
}

std::vector<int32_t> VerifyResult::Emitted(const DraftTree& tree) const {
  std::vector<int32_t> out;
  out.reserve(path.size() + 1);
  for (int32_t node : path) out.push_back(tree.tokens[node]);
  out.push_back(bonus);
  return out;
}

VerifyResult VerifyGreedy(const DraftTree& tree, const std::function<int32_t(int32_t)>& argmax) {
  VerifyResult result;
  int32_t node = 0;
  while (true) {
    const int32_t want = argmax(node);
    int32_t next = -1;
    for (int32_t c : tree.Children(node)) {
      if (tree.tokens[c] == want) {
        next = c;
        break;
      }
    }
    if (next < 0) {
      result.bonus = want;
      return result;
    }
    result.path.push_back(next);
    node = next;
  }
}

int32_t DrawToken(std::span<const float> probs, std::mt19937_64& rng) {
  std::vector<double> p(probs.begin(), probs.end());
  return DrawFrom(p, rng);
}

VerifyResult VerifySampled(const DraftTree& tree,
                           const std::function<std::span<const float>(int32_t)>& target_probs,
                           std::mt19937_64& rng) {
  VerifyResult result;
  int32_t node = 0;
  while (true) {
    std::span<const float> target = target_probs(node);
    std::vector<double> p(target.begin(), target.end());
    const std::vector<int32_t> children = tree.Children(node);
    const std::vector<float>& q = tree.child_draft_probs[static_cast<size_t>(node)];
    SPARK_CHECK(q.empty() || children.size() == 1)
        << "a sampled draft distribution proposes exactly one child";
    int32_t accepted = -1;
    for (int32_t c : children) {
      const int32_t token = tree.tokens[c];
      const double u = Uniform(rng);
      if (q.empty()) {
        // Point-mass proposal: accept with probability p(token).
        if (u < p[static_cast<size_t>(token)]) {
          accepted = c;
          break;
        }
        const double before = p[static_cast<size_t>(token)];
        p[static_cast<size_t>(token)] = 0;
        if (!Normalise(p)) p[static_cast<size_t>(token)] = before;  // p was that point: kept
      } else {
        const double qc = q[static_cast<size_t>(token)];
        const double ratio = qc > 0 ? p[static_cast<size_t>(token)] / qc : 0.0;
        if (u < std::min(1.0, ratio)) {
          accepted = c;
          break;
        }
        std::vector<double> residual(p.size());
        for (size_t t = 0; t < p.size(); ++t) residual[t] = std::max(0.0, p[t] - q[t]);
        // An empty residual means p == q up to rounding: rejection had probability 0.
        if (Normalise(residual)) p.swap(residual);
      }
    }
    if (accepted < 0) {
      result.bonus = DrawFrom(p, rng);
      return result;
    }
    result.path.push_back(accepted);
    node = accepted;
  }
}

std::vector<int32_t> TopKIndices(std::span<const float> scores, int k) {
  std::vector<int32_t> idx;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (scores[i] > 0) idx.push_back(static_cast<int32_t>(i));
  }
  auto better = [&](int32_t a, int32_t b) {
    if (scores[a] != scores[b]) return scores[a] > scores[b];
    return a < b;
  };
  const size_t n = std::min<size_t>(idx.size(), static_cast<size_t>(std::max(k, 0)));
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(n), idx.end(), better);
  idx.resize(n);
  return idx;
}

std::vector<int32_t> SelectTreeNodes(std::span<const int32_t> parents,
                                     std::span<const double> scores, int max_nodes) {
  std::vector<int32_t> order(parents.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return scores[a] > scores[b]; });
  std::vector<char> chosen(parents.size(), 0);
  std::vector<int32_t> out;
  // A child's score never exceeds its parent's and ties keep creation order, so parents come
  // first; the parent check only guards against scores that break that.
  for (int32_t c : order) {
    if (static_cast<int>(out.size()) >= max_nodes) break;
    if (parents[c] >= 0 && !chosen[parents[c]]) continue;
    chosen[c] = 1;
    out.push_back(c);
  }
  std::sort(out.begin(), out.end());
  return out;
}

namespace {

// Per-job drafting state.
struct JobState {
  DraftJob* job = nullptr;
  int64_t base = 0;  // MTP cached length after the extend: the root's pair is its last entry
  bool greedy = true;
  TokenDistribution dist;
  // Chain: the MTP output after the last node.
  std::vector<float> last_hidden;
  // Tree candidates (creation order).
  struct Candidate {
    int32_t parent = -1;  // candidate index, -1 = root
    int32_t token = 0;
    double score = 0;
    int level = 1;
    bool expanded = false;
    std::vector<float> out_hidden;  // MTP output of this node (expanded nodes, once computed)
  };
  std::vector<Candidate> cands;
  std::vector<int32_t> leaves;  // candidates expanded at the current step
  std::vector<float> root_hidden;
};

std::vector<int32_t> CandidatePath(const std::vector<JobState::Candidate>& cands, int32_t c) {
  std::vector<int32_t> path;
  for (int32_t x = c; x >= 0; x = cands[x].parent) path.push_back(cands[x].token);
  std::reverse(path.begin(), path.end());
  return path;
}

// Adds the top-k children of a node with draft distribution `st.dist`.
void AddChildren(JobState& st, int topk, int32_t parent, double parent_score, int level,
                 std::vector<int32_t>* added) {
  const std::vector<float> scores = st.greedy ? Softmax(st.dist) : st.dist.probs;
  for (int32_t t : TopKIndices(scores, topk)) {
    JobState::Candidate c;
    c.parent = parent;
    c.token = t;
    c.score = parent_score * static_cast<double>(scores[t]);
    c.level = level;
    st.cands.push_back(std::move(c));
    added->push_back(static_cast<int32_t>(st.cands.size()) - 1);
  }
}

const float* Row(const ForwardOutput& out, int64_t row) {
  return out.logits.data() + row * out.vocab_size;
}

const float* HiddenRow(const ForwardOutput& out, int64_t row) {
  return out.hidden.data() + row * out.hidden_size;
}

// Checks ForwardMtp's output shape against the batch that produced it.
Status CheckOutput(const ForwardOutput& out, const MtpBatch& batch, int64_t hidden_size) {
  int64_t rows = 0;
  int64_t hidden_rows = 0;
  for (const MtpChunk& c : batch.chunks) {
    const int64_t n = c.all_logits ? static_cast<int64_t>(c.tokens.size()) : 1;
    rows += n;
    if (c.return_hidden) hidden_rows += n;
  }
  if (out.row_begin.size() != batch.chunks.size() || out.vocab_size <= 0 ||
      static_cast<int64_t>(out.logits.size()) != rows * out.vocab_size) {
    return Internal("ForwardMtp returned " + std::to_string(out.logits.size()) + " logits for " +
                    std::to_string(rows) + " rows");
  }
  if (hidden_rows > 0 &&
      (out.hidden_size != hidden_size || out.hidden_row_begin.size() != batch.chunks.size() ||
       static_cast<int64_t>(out.hidden.size()) != hidden_rows * hidden_size)) {
    return Internal("ForwardMtp returned " + std::to_string(out.hidden.size()) +
                    " hidden values for " + std::to_string(hidden_rows) + " rows of width " +
                    std::to_string(hidden_size));
  }
  return Status::Ok();
}

}  // namespace

Result<ForwardOutput> ForwardMtpBounded(Backend* backend, const MtpBatch& batch,
                                        int64_t max_tokens) {
  int64_t total = 0;
  for (const MtpChunk& c : batch.chunks) total += static_cast<int64_t>(c.tokens.size());
  if (max_tokens <= 0 || total <= max_tokens) return backend->ForwardMtp(batch);
  const size_t n = batch.chunks.size();
  bool any_hidden = false;
  for (const MtpChunk& c : batch.chunks) any_hidden = any_hidden || c.return_hidden;
  ForwardOutput merged;
  merged.row_begin.assign(n, 0);
  if (any_hidden) merged.hidden_row_begin.assign(n, 0);
  std::vector<int64_t> done(n, 0);  // tokens of each chunk already forwarded
  size_t next = 0;                  // first chunk not finished (chunks finish in order)
  while (next < n) {
    MtpBatch part;
    std::vector<size_t> source;  // chunk of each piece
    int64_t room = max_tokens;
    for (size_t i = next; i < n && room > 0; ++i) {
      const MtpChunk& c = batch.chunks[i];
      const int64_t size = static_cast<int64_t>(c.tokens.size());
      const int64_t take = std::min(size - done[i], room);
      if (!c.tree_parents.empty() && take < size) {
        if (size > max_tokens) {
          return InvalidArgument("an MTP tree chunk of " + std::to_string(size) +
                                 " tokens exceeds the " + std::to_string(max_tokens) +
                                 " tokens of one forward; raise max_batch_tokens");
        }
        break;  // a tree is read whole, in the next forward
      }
      MtpChunk piece;
      piece.seq_id = c.seq_id;
      piece.start_pos = c.start_pos + done[i];
      piece.tokens.assign(c.tokens.begin() + done[i], c.tokens.begin() + done[i] + take);
      const int64_t width = static_cast<int64_t>(c.hidden.size()) / std::max<int64_t>(size, 1);
      piece.hidden.assign(c.hidden.begin() + done[i] * width,
                          c.hidden.begin() + (done[i] + take) * width);
      piece.all_logits = c.all_logits;
      piece.tree_parents = c.tree_parents;
      piece.return_hidden = c.return_hidden;
      part.chunks.push_back(std::move(piece));
      source.push_back(i);
      done[i] += take;
      room -= take;
    }
    SPARK_ASSIGN_OR_RETURN(ForwardOutput out, backend->ForwardMtp(part));
    merged.vocab_size = out.vocab_size;
    if (any_hidden) merged.hidden_size = out.hidden_size;
    const int64_t out_rows =
        out.vocab_size > 0 ? static_cast<int64_t>(out.logits.size()) / out.vocab_size : 0;
    for (size_t j = 0; j < part.chunks.size(); ++j) {
      const size_t i = source[j];
      const MtpChunk& c = batch.chunks[i];
      const bool final = done[i] == static_cast<int64_t>(c.tokens.size());
      const bool first = done[i] == static_cast<int64_t>(part.chunks[j].tokens.size());
      // Without all_logits only the final piece's row is the chunk's.
      if (!c.all_logits && !final) continue;
      const int64_t rows_now =
          static_cast<int64_t>(merged.logits.size()) / std::max<int64_t>(merged.vocab_size, 1);
      if (first || !c.all_logits) merged.row_begin[i] = rows_now;
      const int64_t r0 = out.row_begin[j];
      const int64_t r1 = j + 1 < part.chunks.size() ? out.row_begin[j + 1] : out_rows;
      merged.logits.insert(merged.logits.end(), out.logits.begin() + r0 * out.vocab_size,
                           out.logits.begin() + r1 * out.vocab_size);
      if (any_hidden) {
        const int64_t hidden_now =
            static_cast<int64_t>(merged.hidden.size()) / std::max<int64_t>(merged.hidden_size, 1);
        if (first || !c.all_logits) merged.hidden_row_begin[i] = hidden_now;
        if (c.return_hidden) {
          merged.hidden.insert(
              merged.hidden.end(), out.hidden.begin() + out.hidden_row_begin[j] * out.hidden_size,
              out.hidden.begin() + (out.hidden_row_begin[j] + (r1 - r0)) * out.hidden_size);
        }
      }
    }
    while (next < n && done[next] == static_cast<int64_t>(batch.chunks[next].tokens.size())) {
      ++next;
    }
  }
  return merged;
}

Status RunDraft(Backend* backend, const SpeculativeOptions& options,
                std::span<DraftJob* const> jobs, int64_t max_forward_tokens) {
  const int64_t hidden_size = backend->config().hidden_size;
  const int topk = options.topk;
  std::vector<JobState> states;
  states.reserve(jobs.size());
  for (DraftJob* job : jobs) {
    job->tree = DraftTree{};
    job->tree.tokens = {job->root};
    job->tree.parents = {-1};
    job->tree.child_draft_probs.resize(1);
    if (job->extend_tokens.empty()) {
      job->depth = 0;  // no pair to continue from
      continue;
    }
    if (static_cast<int64_t>(job->extend_hidden.size()) !=
        static_cast<int64_t>(job->extend_tokens.size()) * hidden_size) {
      return Internal("draft job for sequence " + std::to_string(job->seq_id) + ": " +
                      std::to_string(job->extend_hidden.size()) + " hidden values for " +
                      std::to_string(job->extend_tokens.size()) + " pairs");
    }
    JobState st;
    st.job = job;
    st.base = job->mtp_start + static_cast<int64_t>(job->extend_tokens.size());
    st.greedy = job->sampler->params().greedy();
    states.push_back(std::move(st));
  }

  // Step 0: the extend over the pending pairs; its last row is the draft after the root.
  {
    MtpBatch batch;
    std::vector<JobState*> owners;
    for (JobState& st : states) {
      MtpChunk chunk;
      chunk.seq_id = st.job->seq_id;
      chunk.start_pos = st.job->mtp_start;
      chunk.tokens = st.job->extend_tokens;
      chunk.hidden = st.job->extend_hidden;
      chunk.return_hidden = st.job->depth > 1;
      batch.chunks.push_back(std::move(chunk));
      owners.push_back(&st);
    }
    if (batch.chunks.empty()) return Status::Ok();
    SPARK_ASSIGN_OR_RETURN(ForwardOutput out,
                           ForwardMtpBounded(backend, batch, max_forward_tokens));
    SPARK_RETURN_IF_ERROR(CheckOutput(out, batch, hidden_size));
    for (size_t i = 0; i < owners.size(); ++i) {
      JobState& st = *owners[i];
      DraftJob& job = *st.job;
      const bool has_hidden = batch.chunks[i].return_hidden;
      const float* h = has_hidden ? HiddenRow(out, out.hidden_row_begin[i]) : nullptr;
      if (job.depth == 0) continue;
      const std::span<const float> row(Row(out, out.row_begin[i]),
                                       static_cast<size_t>(out.vocab_size));
      job.sampler->Distribution(row, {}, /*keep_logits=*/st.greedy && topk > 1, &st.dist);
      if (topk == 1) {
        int32_t token = st.dist.argmax;
        if (!st.greedy) {
          token = DrawToken(st.dist.probs, *job.rng);
          job.tree.child_draft_probs[0] = std::move(st.dist.probs);
        }
        job.tree.tokens.push_back(token);
        job.tree.parents.push_back(0);
        job.tree.child_draft_probs.emplace_back();
        if (h != nullptr) st.last_hidden.assign(h, h + hidden_size);
      } else {
        std::vector<int32_t> added;
        AddChildren(st, topk, -1, 1.0, 1, &added);
        for (int32_t c : added) st.cands[c].expanded = true;
        st.leaves = std::move(added);
        if (h != nullptr) st.root_hidden.assign(h, h + hidden_size);
      }
    }
  }

  // Steps 1 .. depth-1.
  for (int step = 1; step < options.steps; ++step) {
    MtpBatch batch;
    std::vector<JobState*> owners;
    // Chunk index of every expanded candidate (tree jobs).
    std::vector<std::vector<int32_t>> chunk_of(states.size());
    for (size_t s = 0; s < states.size(); ++s) {
      JobState& st = states[s];
      DraftJob& job = *st.job;
      if (job.depth <= step) continue;
      MtpChunk chunk;
      chunk.seq_id = job.seq_id;
      chunk.return_hidden = step + 1 < job.depth;
      if (topk == 1) {
        chunk.start_pos = st.base + step - 1;
        chunk.tokens = {job.tree.tokens.back()};
        chunk.hidden = st.last_hidden;
      } else {
        if (st.leaves.empty()) continue;  // the draft has no candidates left
        if (step >= 2) {
          // The previous step's nodes cannot be addressed as parents: recompute them.
          SPARK_RETURN_IF_ERROR(
              backend->KeepCacheEntries(job.seq_id, CacheKind::kMtp, st.base, {}));
        }
        chunk.start_pos = st.base;
        chunk.all_logits = true;
        chunk.return_hidden = true;
        std::vector<int32_t>& index = chunk_of[s];
        index.assign(st.cands.size(), -1);
        for (size_t c = 0; c < st.cands.size(); ++c) {
          const JobState::Candidate& cand = st.cands[c];
          if (!cand.expanded) continue;
          index[c] = static_cast<int32_t>(chunk.tokens.size());
          chunk.tokens.push_back(cand.token);
          chunk.tree_parents.push_back(cand.parent < 0 ? -1 : index[cand.parent]);
          const std::vector<float>& in =
              cand.parent < 0 ? st.root_hidden : st.cands[cand.parent].out_hidden;
          SPARK_CHECK(static_cast<int64_t>(in.size()) == hidden_size)
              << "draft node input hidden missing";
          chunk.hidden.insert(chunk.hidden.end(), in.begin(), in.end());
        }
      }
      batch.chunks.push_back(std::move(chunk));
      owners.push_back(&st);
    }
    if (batch.chunks.empty()) break;
    SPARK_ASSIGN_OR_RETURN(ForwardOutput out,
                           ForwardMtpBounded(backend, batch, max_forward_tokens));
    SPARK_RETURN_IF_ERROR(CheckOutput(out, batch, hidden_size));
    for (size_t i = 0; i < owners.size(); ++i) {
      JobState& st = *owners[i];
      DraftJob& job = *st.job;
      const MtpChunk& chunk = batch.chunks[i];
      const int64_t first = out.row_begin[i];
      if (topk == 1) {
        std::vector<int32_t> path(job.tree.tokens.begin() + 1, job.tree.tokens.end());
        const std::span<const float> row(Row(out, first), static_cast<size_t>(out.vocab_size));
        job.sampler->Distribution(row, path, /*keep_logits=*/false, &st.dist);
        int32_t token = st.dist.argmax;
        const size_t parent = job.tree.tokens.size() - 1;
        if (!st.greedy) {
          token = DrawToken(st.dist.probs, *job.rng);
          job.tree.child_draft_probs[parent] = std::move(st.dist.probs);
        }
        job.tree.tokens.push_back(token);
        job.tree.parents.push_back(static_cast<int32_t>(parent));
        job.tree.child_draft_probs.emplace_back();
        if (chunk.return_hidden) {
          const float* h = HiddenRow(out, out.hidden_row_begin[i]);
          st.last_hidden.assign(h, h + hidden_size);
        }
        continue;
      }
      // Tree: outputs of the current leaves; expand each by its top-k children.
      const size_t s = static_cast<size_t>(&st - states.data());
      std::vector<int32_t> added;
      for (int32_t leaf : st.leaves) {
        const int32_t r = chunk_of[s][leaf];
        const float* h = HiddenRow(out, out.hidden_row_begin[i] + r);
        st.cands[leaf].out_hidden.assign(h, h + hidden_size);
        const std::span<const float> row(Row(out, first + r), static_cast<size_t>(out.vocab_size));
        const std::vector<int32_t> path = CandidatePath(st.cands, leaf);
        job.sampler->Distribution(row, path, /*keep_logits=*/st.greedy, &st.dist);
        AddChildren(st, topk, leaf, st.cands[leaf].score, step + 1, &added);
      }
      // The best k of the new candidates are the next leaves.
      std::vector<int32_t> next = added;
      std::stable_sort(next.begin(), next.end(),
                       [&](int32_t a, int32_t b) { return st.cands[a].score > st.cands[b].score; });
      if (static_cast<int>(next.size()) > topk) next.resize(static_cast<size_t>(topk));
      std::sort(next.begin(), next.end());
      for (int32_t c : next) st.cands[c].expanded = true;
      st.leaves = std::move(next);
    }
  }

  // Trees: choose the verified nodes.
  if (topk > 1) {
    for (JobState& st : states) {
      DraftJob& job = *st.job;
      if (job.depth == 0 || st.cands.empty()) continue;
      std::vector<int32_t> parents;
      std::vector<double> scores;
      for (const JobState::Candidate& c : st.cands) {
        parents.push_back(c.parent);
        scores.push_back(c.score);
      }
      const std::vector<int32_t> chosen =
          SelectTreeNodes(parents, scores, options.draft_tokens - 1);
      std::vector<int32_t> node_of(st.cands.size(), -1);
      for (int32_t c : chosen) {
        node_of[c] = job.tree.size();
        job.tree.tokens.push_back(st.cands[c].token);
        job.tree.parents.push_back(st.cands[c].parent < 0 ? 0 : node_of[st.cands[c].parent]);
        job.tree.child_draft_probs.emplace_back();
      }
    }
  }
  return Status::Ok();
}

}  // namespace spark::engine
