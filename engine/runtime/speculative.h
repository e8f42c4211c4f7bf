// Speculative decoding with the checkpoint's MTP (nextn) layer as the draft model (EAGLE style,
// shared/docs/glm4-moe.md §4; user guide docs/speculative-decoding.md).
//
// One round per decoding sequence: the draft proposes a tree of tokens after the last emitted
// token (the root), the target verifies the whole tree in one Forward (a tree chunk), and the
// longest acceptable path plus one token from the target (the bonus) is emitted.
//
//   Drafting (RunDraft): draft step 0 runs the MTP layer over the sequence's pending (token,
//   target hidden) pairs (its "draft extend": every position the target computed since the last
//   round) and yields the draft distribution after the root. Steps 1..steps-1 extend the tree:
//     - topk 1: a chain; each step appends one token (sampled from the processed draft
//       distribution for sampled requests, its argmax for greedy ones);
//     - topk k > 1: SGLang's rule: step 0 gives k children of the root (score = draft prob);
//       each later step expands the k current leaves by their top-k children (score = parent
//       score x prob) and keeps the best k of the k*k as the next leaves. All k + (steps-1)k^2
//       candidates compete for draft_tokens - 1 slots by score (ties: earlier candidate), and
//       the chosen nodes (parents always among them) are verified in creation order.
//     The MTP input of a node is its parent's MTP output (after shared_head.norm). With k > 1 the
//     MTP cache cannot address a parent in an earlier call, so each tree step truncates the MTP
//     cache to the root and recomputes the expanded nodes of all levels as one tree chunk.
//   Verification (VerifyGreedy / VerifySampled): over the target's processed distributions
//   (penalties, temperature, top-k/top-p/min-p, as the request's Sampler, counting the path's
//   draft tokens as output):
//     - greedy: from the root, follow the child whose token is the target argmax; the bonus is
//       the argmax at the last accepted node. The output equals decoding without speculation.
//     - sampled: at each node the children are tried in order with the rejection-sampling rule:
//       accept child c with probability min(1, p(c) / q(c)); on rejection p <- norm(max(p - q,
//       0)); if no child is accepted the token is drawn from the final p and the round ends;
//       at a leaf the bonus is drawn from p. q is the draft distribution c was sampled from
//       (chains of sampled requests) or a point mass on c (tree children are a deterministic
//       function of the draft's logits, so each child is a point-mass proposal; this is SGLang's
//       target-only tree sampling). Every emitted token is distributed as the target's.
//
// Random numbers of a round come from a generator keyed by (request seed, tokens generated so
// far), so a seeded request is reproducible and does not depend on batching or preemption.
//
// Thread safety: the functions run on the engine thread that owns the Backend; the structs are
// values.
#pragma once

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

#include "common/status.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/sampler.h"

namespace spark::engine {

struct SpeculativeOptions {
  int steps = 0;         // draft depth (MTP forwards per round); 0 = speculation off
  int topk = 1;          // branching factor per step; 1 = a chain
  int draft_tokens = 0;  // tree nodes verified per round, root included; topk 1: steps + 1
  bool enabled() const { return steps > 0; }
};

// Checks the options and fills what they imply (topk 1: draft_tokens = steps + 1, as SGLang
// forces). InvalidArgument names the field and the allowed range.
Result<SpeculativeOptions> ResolveSpeculativeOptions(const SpeculativeOptions& options);

struct SpeculativeStats {
  int64_t verify_steps = 0;     // rounds that verified at least one draft token
  int64_t drafted_tokens = 0;   // draft tokens verified (tree nodes without the root)
  int64_t accepted_tokens = 0;  // accepted draft tokens (bonus token excluded)
  int64_t emitted_tokens = 0;   // tokens emitted by those rounds (after stop / length limits)
  double draft_ms = 0;          // MTP forwards and tree building
  double verify_ms = 0;         // target forwards that carried verification chunks + acceptance
  // Mean tokens per verify step: accepted / verify_steps + 1 (0 before any verify step).
  double AcceptanceLength() const;
};

// A draft tree. Node 0 is the root (the last emitted token, already in the sequence); parents
// precede children.
struct DraftTree {
  std::vector<int32_t> tokens;   // tokens[0] = root
  std::vector<int32_t> parents;  // parents[0] = -1
  // Per node: the draft distribution its single child was sampled from (chains of sampled
  // requests); empty = its children are point-mass proposals.
  std::vector<std::vector<float>> child_draft_probs;

  int size() const { return static_cast<int>(tokens.size()); }
  // Children of `node` in tree order.
  std::vector<int32_t> Children(int32_t node) const;
};

struct VerifyResult {
  std::vector<int32_t> path;  // accepted nodes (root excluded), root to leaf
  int32_t bonus = -1;         // the token drawn from the target after the last accepted node
  // The tokens emitted, in order: the accepted nodes' tokens then the bonus.
  std::vector<int32_t> Emitted(const DraftTree& tree) const;
};

// Greedy acceptance: `argmax(node)` is the target's processed argmax at that node.
VerifyResult VerifyGreedy(const DraftTree& tree, const std::function<int32_t(int32_t)>& argmax);

// Sampled acceptance (the rule above). `target_probs(node)` is the target's processed
// distribution at that node (vocab entries summing to 1); it is called for the root and the
// accepted nodes only. `rng` supplies the uniforms.
VerifyResult VerifySampled(const DraftTree& tree,
                           const std::function<std::span<const float>(int32_t)>& target_probs,
                           std::mt19937_64& rng);

// Draws a token from `probs` (sum 1; lowest id wins a zero-width draw).
int32_t DrawToken(std::span<const float> probs, std::mt19937_64& rng);

// The tree selection of a topk > 1 round (above): candidates in creation order with their
// parent candidate (-1 = the root) and cumulative score; returns the chosen candidates (at most
// `max_nodes`, each one's parent chosen too), ascending.
std::vector<int32_t> SelectTreeNodes(std::span<const int32_t> parents,
                                     std::span<const double> scores, int max_nodes);

// The k best entries of `scores` (descending; ties: lower index), skipping entries <= 0.
std::vector<int32_t> TopKIndices(std::span<const float> scores, int k);

// One sequence's draft round for RunDraft.
struct DraftJob {
  uint64_t seq_id = 0;
  Sampler* sampler = nullptr;      // the request's (its processing; no random numbers used)
  std::mt19937_64* rng = nullptr;  // the round's generator (sampled chains draw from it)
  // Pending MTP pairs: positions [mtp_start, mtp_start + extend_tokens.size()) of the MTP cache
  // (mtp_start = its cached length): extend_tokens[j] = t_{mtp_start + j + 1}, extend_hidden row
  // j = the target's final-norm hidden at position mtp_start + j.
  int64_t mtp_start = 0;
  std::vector<int32_t> extend_tokens;
  std::vector<float> extend_hidden;
  int32_t root = 0;  // the last emitted token (= extend_tokens.back() when depth > 0)
  int depth = 0;     // draft steps this round (0: extend only; no tree)
  // Output: the tree (root only when depth is 0).
  DraftTree tree;
};

// Runs the draft steps of all jobs, batched per step through Backend::ForwardMtp. Jobs with
// nothing to extend and depth 0 are skipped. On error (e.g. ResourceExhausted) the MTP caches
// may hold entries past each job's mtp_start; the caller truncates them (KeepCacheEntries).
// `options` must be resolved. Each ForwardMtp carries at most `max_forward_tokens` tokens (0 =
// no bound; see ForwardMtpBounded): the backend's per-forward limit (max_batch_tokens), which a
// long extend (a prompt chunk's pairs) or many sequences' trees would otherwise exceed.
Status RunDraft(Backend* backend, const SpeculativeOptions& options,
                std::span<DraftJob* const> jobs, int64_t max_forward_tokens = 0);

// Backend::ForwardMtp of `batch` in forwards of at most `max_tokens` tokens (0 = one forward):
// chunks are packed in order; a causal chunk that does not fit is read in pieces (consecutive
// start positions) whose last one gives its row (all pieces' rows with all_logits); a tree chunk
// is read whole (InvalidArgument when it alone exceeds max_tokens). The result is laid out as
// one ForwardMtp of the whole batch returns it.
Result<ForwardOutput> ForwardMtpBounded(Backend* backend, const MtpBatch& batch,
                                        int64_t max_tokens);

}  // namespace spark::engine
