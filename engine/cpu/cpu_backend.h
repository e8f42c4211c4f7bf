// CpuBackend: one tensor-parallel rank's forward pass in plain C++ (fp32 activations), with its
// own paged KV cache. It is the numerical oracle for the CUDA backend, the backend of CI and of
// the embedded demo.
//
// Numerics follow shared/docs/glm4-moe.md §2 exactly (transformers fp32 semantics): weights stay
// in their stored dtype (BF16/F16/F32/FP8 with per-channel or block scales) and are converted
// exactly inside the kernels (float(q) * scale); activations, norms, RoPE, softmax and the router
// run in fp32. Supports Glm4Moe, Llama (incl. llama3 rope scaling), Qwen3 and Qwen3-MoE configs.
//
// Tensor parallelism: every rank of a group creates a CpuBackend with its slice of the weights
// (ModelWeights::tp_rank / tp_size) and the group's Communicator, and calls Forward with the same
// batch in the same order. Collectives per layer: one all-reduce after o_proj and one after the
// MLP/MoE block (routed + shared summed first); the vocab-parallel lm_head rows are all-gathered
// so every rank returns the full-vocabulary logits.
//
// Speculative decoding (backend.h): tree chunks, return_hidden and KeepCacheEntries always work;
// ForwardMtp and SupportsSpeculation need the MTP (nextn) layer, which the backend uses when the
// weights carry one (ModelWeights::mtp, loaded with LoadOptions::load_mtp; only mtp[0] is used).
// The MTP layer is TP-sliced like the main layers (its decoder layer) with eh_proj replicated:
// every rank computes the same eh_proj output from the same full-width inputs, so no collective
// is needed and all ranks agree bit for bit. Its KV cache (one layer) is a second paged cache with
// the same number of blocks as the main one; kv_cache_bytes is split between the two so that both
// hold the same number of tokens, and FreeKvTokens is the smaller of their free tokens.
// Tree chunks are bit-identical to running each root-to-node path as a plain chain (same keys,
// same accumulation order).
//
// Ownership: the backend owns the weights (moved in) and the KV cache; the Communicator is
// borrowed and must outlive the backend. Thread safety: single owner thread (the rank's engine
// loop); internally the kernels fan out over a private thread pool.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/runtime/backend.h"

namespace spark::engine {

struct CpuBackendOptions {
  // Worker threads of the kernel thread pool; 0 = std::thread::hardware_concurrency().
  int threads = 0;
  // KV cache budget of this rank in bytes (fp32 K and V of the rank's local kv heads, all
  // layers, including the MTP layer's cache when the model has one). The cache capacity in
  // tokens is derived from it.
  int64_t kv_cache_bytes = int64_t{256} << 20;
  // Tokens per KV cache block (paging granularity).
  int kv_block_tokens = 16;
};

class CpuKvCache;
class RotaryEmbedding;
class ThreadPool;

class CpuBackend final : public Backend {
 public:
  // Validates the weights against their config (shapes, local head counts, TP slice) and
  // allocates the KV cache. `comm` may be nullptr only when weights.tp_size == 1; otherwise its
  // rank / world_size must equal weights.tp_rank / tp_size.
  static Result<std::unique_ptr<CpuBackend>> Create(ModelWeights weights, Communicator* comm,
                                                    const CpuBackendOptions& options);
  ~CpuBackend() override;

  CpuBackend(const CpuBackend&) = delete;
  CpuBackend& operator=(const CpuBackend&) = delete;

  const ModelConfig& config() const override;

  // Runs every chunk of the batch through the model: the tokens of all chunks share the linear
  // layers, attention runs per sequence over its cache. Returns logits for the last token of
  // each chunk (all tokens when `all_logits`), full vocabulary, rows in batch order, and the
  // final-norm hidden rows of every token of the chunks that set return_hidden. A tree chunk
  // (tree_parents) writes token i's K/V to cache slot start_pos + i, rotated for position
  // start_pos + depth(i), and token i attends to slots [0, start_pos) then the slots of its
  // ancestors (root first) and itself.
  // Errors (nothing is modified then): InvalidArgument for an empty chunk, a token id outside
  // [0, vocab_size), a start_pos different from the sequence's cached length, a sequence
  // appearing twice in one batch, or tree_parents whose size differs from the tokens' or whose
  // entry i is not in [-1, i); ResourceExhausted when the KV cache cannot hold the new tokens
  // (the scheduler preempts and retries). A failing collective returns its Status (the cache of
  // the batch's sequences is then undefined: release them).
  Result<ForwardOutput> Forward(const ForwardBatch& batch) override;

  // Frees both KV caches (target and MTP) of a sequence; unknown ids are ignored.
  void Release(uint64_t seq_id) override;

  // Tokens the KV cache can still take (free blocks * block tokens; with an MTP layer the
  // smaller of the target and MTP caches' free tokens).
  int64_t FreeKvTokens() const override;

  // True when the weights carry an MTP layer.
  bool SupportsSpeculation() const override;

  // The MTP layer over its own cache (shared/docs/glm4-moe.md §4.1), per pair j of a chunk:
  // z = eh_proj([enorm(embed[tokens[j]]), hnorm(hidden[j])]), z = decoder layer L at position
  // start_pos + depth(j) (cache slot start_pos + j, tree rules as Forward), out =
  // shared_head.norm(z), logits = lm_head(out); hidden rows (return_hidden) are `out` of the
  // rows that get logits.
  // Errors: as Forward (start_pos against the MTP cache), plus InvalidArgument when hidden does
  // not hold tokens.size() * hidden_size values; Unimplemented when the model has no MTP layer.
  Result<ForwardOutput> ForwardMtp(const MtpBatch& batch) override;

  // Cached length of a sequence in one of its caches (0 for unknown ids).
  int64_t CachedTokens(uint64_t seq_id, CacheKind kind) const override;
  // Cached length in the target cache (0 for unknown ids).
  int64_t CachedTokens(uint64_t seq_id) const;

  // Compacts one cache of a sequence (backend.h). Unimplemented for kMtp without an MTP layer.
  Status KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep) override;
  // Shrinks a sequence's cache to its first `length` tokens (speculative decoding rollback).
  // InvalidArgument when length is negative or longer than the cached length.
  Status TruncateSequence(uint64_t seq_id, int64_t length);
  // Total KV capacity in tokens.
  int64_t KvCapacityTokens() const;

  const ModelWeights& weights() const { return weights_; }
  int threads() const;

 private:
  CpuBackend(ModelWeights weights, Communicator* comm, const CpuBackendOptions& options);

  struct Scratch;
  struct ChunkSpec;

  // Validates `chunks` against `kv` (nothing changes on error), then grows the caches and fills
  // the per-token plan of the scratch (ids, slots, positions, attention key sets). Returns the
  // number of output rows.
  Result<int64_t> Plan(const std::vector<ChunkSpec>& chunks, CpuKvCache* kv,
                       const char* cache_name);
  // One decoder layer over the planned tokens in scratch x (in place), K/V into layer
  // `cache_layer` of `kv`.
  Status RunLayer(const LayerWeights& L, CpuKvCache* kv, int cache_layer, const std::string& name);
  // Gathers the output rows of scratch x, applies `norm`, fills logits and, for chunks asking
  // return_hidden, the hidden rows (every token when hidden_all_tokens, else the logit rows).
  Status Finish(const std::vector<ChunkSpec>& chunks, int64_t rows, const std::vector<float>& norm,
                bool hidden_all_tokens, ForwardOutput* output);
  CpuKvCache* Cache(CacheKind kind) const;

  ModelWeights weights_;
  Communicator* comm_;  // not owned; nullptr when tp_size == 1
  CpuBackendOptions options_;
  int local_q_heads_ = 0;
  int local_kv_heads_ = 0;
  std::unique_ptr<RotaryEmbedding> rope_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<CpuKvCache> kv_;
  std::unique_ptr<CpuKvCache> mtp_kv_;  // null without an MTP layer
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace spark::engine
