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
  // layers). The cache capacity in tokens is derived from it.
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
  // each chunk (all tokens when `all_logits`), full vocabulary, rows in batch order.
  // Errors (nothing is modified then): InvalidArgument for an empty chunk, a token id outside
  // [0, vocab_size), a start_pos different from the sequence's cached length, or a sequence
  // appearing twice in one batch; ResourceExhausted when the KV cache cannot hold the new tokens
  // (the scheduler preempts and retries). A failing collective returns its Status (the cache of
  // the batch's sequences is then undefined: release them).
  Result<ForwardOutput> Forward(const ForwardBatch& batch) override;

  // Frees the KV cache of a sequence; unknown ids are ignored.
  void Release(uint64_t seq_id) override;

  // Tokens the KV cache can still take (free blocks * block tokens).
  int64_t FreeKvTokens() const override;

  // Cached length of a sequence (0 for unknown ids).
  int64_t CachedTokens(uint64_t seq_id) const;
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

  ModelWeights weights_;
  Communicator* comm_;  // not owned; nullptr when tp_size == 1
  CpuBackendOptions options_;
  int local_q_heads_ = 0;
  int local_kv_heads_ = 0;
  std::unique_ptr<RotaryEmbedding> rope_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<CpuKvCache> kv_;
  std::unique_ptr<Scratch> scratch_;
};

}  // namespace spark::engine
