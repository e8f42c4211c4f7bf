// Backend: one rank's forward pass over a batch of sequence chunks, with the KV cache it owns.
//
// A batch mixes prefill chunks and decode steps (continuous batching): each SequenceChunk
// carries a sequence id, the absolute position of its first token and its tokens. The backend
// appends their K/V to the sequence's cache and returns logits for the last token of each chunk
// (or for every token when `all_logits`). Under tensor parallelism every rank calls Forward with
// the same batch in the same order; the returned logits are the full vocabulary (gathered).
//
// Speculative decoding (engine/runtime/speculative.h) adds three things, all optional for a
// backend (the defaults answer Unimplemented): tree chunks (tree_parents) whose tokens attend to
// the cached prefix plus their ancestors only, the final-norm hidden states of a chunk's tokens
// (return_hidden), and the checkpoint's MTP (nextn) layer as the draft model, with a KV
// cache of its own per sequence (ForwardMtp). KeepCacheEntries compacts a cache after
// verification (the accepted path stays, the rest goes).
//
// Implementations: CpuBackend (engine/cpu/cpu_backend.h), CudaBackend (engine/cuda/).
// Thread safety: single owner thread (the rank's engine loop).
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/model/config.h"

namespace spark::engine {

struct SequenceChunk {
  uint64_t seq_id = 0;
  int64_t start_pos = 0;        // position of tokens[0]; must equal the cached length
  std::vector<int32_t> tokens;  // >= 1 token
  bool all_logits = false;      // logits for every token instead of the last one only
  // Tree chunk (speculative verification): parent index of every token within this chunk, -1
  // for a token whose parent is the last cached token. Empty = a causal chain (token i's parent
  // is token i-1). Parents precede their children. Token i sits at position start_pos + depth(i)
  // (depth 0 for a -1 parent) and attends to the cached prefix, its ancestors and itself. The
  // K/V of every token is appended in chunk order (token i in cache entry start_pos + i, rotated
  // for its position start_pos + depth(i)); KeepCacheEntries then keeps the accepted path.
  // InvalidArgument when the size differs from tokens.size() or entry i is not in [-1, i).
  // Logit rows (last token / all_logits) follow chunk order as for a chain.
  std::vector<int32_t> tree_parents{};
  // Also return the final-norm hidden state (the lm_head input) of EVERY token of the chunk, in
  // chunk order, whatever all_logits says (the MTP draft extend needs all of them).
  bool return_hidden = false;
};

// One sequence's input to the MTP layer (shared/docs/glm4-moe.md §4.1): pair j combines the
// token at position start_pos + j + 1 with the hidden state that produced it (the target's
// final-norm hidden at position start_pos + j, or an earlier MTP step's output after
// shared_head.norm) and runs at position start_pos + depth(j) over the MTP layer's own cache.
struct MtpChunk {
  uint64_t seq_id = 0;
  int64_t start_pos = 0;                // must equal the sequence's MTP cached length
  std::vector<int32_t> tokens;          // >= 1 token; tokens[j] = t_{start_pos + j + 1}
  std::vector<float> hidden;            // [tokens.size(), hidden_size] row-major
  bool all_logits = false;              // logits for every pair instead of the last one only
  std::vector<int32_t> tree_parents{};  // as SequenceChunk::tree_parents
  // Return the MTP outputs after shared_head.norm of the rows that get logits (the last pair, or
  // every pair with all_logits).
  bool return_hidden = false;
};

struct MtpBatch {
  std::vector<MtpChunk> chunks;
};

struct ForwardBatch {
  std::vector<SequenceChunk> chunks;
  // The caller samples on the backend's device (a BatchSampler with SamplesDeviceRows()): a
  // backend that keeps logits in device memory may then return them in
  // ForwardOutput::device_logits and leave `logits` empty. A hint: a backend that cannot (the
  // CPU backend, or a configuration that gathers logits through the host) fills `logits` as
  // always. Only the rank that samples reads it.
  bool logits_on_device = false;
};

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;  // [rows, vocab_size] row-major
  // Instead of `logits` (ForwardBatch::logits_on_device): [rows, vocab_size] row-major in the
  // backend's device memory, ordered on the backend's stream (work queued after Forward on that
  // stream sees them), writable, valid until the next call on this backend. Null otherwise.
  float* device_logits = nullptr;
  std::vector<int64_t> row_begin;  // first row of each chunk, in batch order
  // The logits of chunk i's first row, in device_logits when set, else in logits.
  const float* ChunkLogits(size_t i) const {
    return (device_logits != nullptr ? device_logits : logits.data()) + row_begin[i] * vocab_size;
  }
  // When any chunk asked return_hidden: [hidden rows, hidden_size] row-major, the rows of the
  // chunks that asked in batch order (SequenceChunk: every token; MtpChunk: its logit rows), and
  // hidden_row_begin[i] = the first hidden row of chunk i (a chunk that did not ask contributes
  // no rows: its entry equals the next chunk's). All three empty / 0 when no chunk asked.
  int64_t hidden_size = 0;
  std::vector<float> hidden;
  std::vector<int64_t> hidden_row_begin;
};

// Which KV cache of a sequence an operation addresses.
enum class CacheKind { kTarget, kMtp };

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual Result<ForwardOutput> Forward(const ForwardBatch& batch) = 0;
  // Frees the KV caches of a sequence (finished, cancelled or preempted): the target cache and,
  // with an MTP layer, the MTP cache.
  virtual void Release(uint64_t seq_id) = 0;
  // Tokens the KV cache can still take (for admission and preemption decisions); with an MTP
  // layer, the tokens both caches can still take.
  virtual int64_t FreeKvTokens() const = 0;

  // --- Speculative decoding (optional) ---
  // True when the backend loaded an MTP layer and implements ForwardMtp, tree chunks,
  // return_hidden and KeepCacheEntries.
  virtual bool SupportsSpeculation() const { return false; }
  // Runs the MTP layer over its own cache; same errors as Forward (start_pos against the MTP
  // cache), plus InvalidArgument when a chunk's hidden does not hold tokens.size() *
  // hidden_size values, and Unimplemented without an MTP layer. Logits are the full vocabulary
  // (the main lm_head); hidden rows (return_hidden) are the MTP outputs after shared_head.norm,
  // fed to the next draft step. No embedding is zeroed at position 0 (SGLang semantics).
  virtual Result<ForwardOutput> ForwardMtp(const MtpBatch& /*batch*/) {
    return Unimplemented("this backend has no MTP draft layer");
  }
  // Cached length of a sequence in one of its caches (0 for unknown ids).
  virtual int64_t CachedTokens(uint64_t /*seq_id*/, CacheKind /*kind*/) const { return 0; }
  // Keeps entries [0, prefix_len) of a sequence's cache, then the entries prefix_len + keep[i]
  // (keep ascending, each >= 0 and below the cached length - prefix_len) moved down to
  // prefix_len + i; the rest is dropped. keep = {} truncates to prefix_len. The kept entries
  // must form an ancestor path of the tree chunk they came from (their positions are then
  // prefix_len + i, as stored). InvalidArgument on bad indices (prefix_len outside [0, cached],
  // keep not strictly ascending or out of range); nothing changes then. An unknown sequence
  // has cached length 0 (only prefix_len 0, keep {} is valid: a no-op). Unimplemented for
  // kMtp without an MTP layer.
  virtual Status KeepCacheEntries(uint64_t /*seq_id*/, CacheKind /*kind*/, int64_t /*prefix_len*/,
                                  const std::vector<int32_t>& /*keep*/) {
    return Unimplemented("this backend does not support speculative decoding");
  }
};

}  // namespace spark::engine
