// Backend: one rank's forward pass over a batch of sequence chunks, with the KV cache it owns.
//
// A batch mixes prefill chunks and decode steps (continuous batching): each SequenceChunk
// carries a sequence id, the absolute position of its first token and its tokens. The backend
// appends their K/V to the sequence's cache and returns logits for the last token of each chunk
// (or for every token when `all_logits`). Under tensor parallelism every rank calls Forward with
// the same batch in the same order; the returned logits are the full vocabulary (gathered).
//
// Implementations: CpuBackend (engine/cpu/cpu_backend.h), the CUDA backend later.
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
};

struct ForwardBatch {
  std::vector<SequenceChunk> chunks;
};

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;       // [rows, vocab_size] row-major
  std::vector<int64_t> row_begin;  // first row of each chunk, in batch order
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const ModelConfig& config() const = 0;
  virtual Result<ForwardOutput> Forward(const ForwardBatch& batch) = 0;
  // Frees the KV cache of a sequence (finished, cancelled or preempted).
  virtual void Release(uint64_t seq_id) = 0;
  // Tokens the KV cache can still take (for admission and preemption decisions).
  virtual int64_t FreeKvTokens() const = 0;
};

}  // namespace spark::engine
