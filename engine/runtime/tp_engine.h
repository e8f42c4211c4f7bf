// Tensor-parallel driver: rank 0 runs the scheduler, every rank runs the same Forward.
//
// On rank 0 the scheduler talks to a TpLeaderBackend, a Backend decorator around the rank's own
// backend. Each Forward first broadcasts a step message (the ForwardBatch, plus the sequence ids
// released since the previous message) to the other ranks through the Communicator, then runs
// the local Forward; the workers, in RunTpWorker, receive the message, apply the releases and run
// the same Forward (whose collectives pair with rank 0's). Only rank 0 samples. Stop() sends the
// stop message that ends the worker loops.
//
// Speculative decoding rides on the same messages: ForwardMtp broadcasts its MtpBatch (with the
// full-width hidden rows, so every rank feeds the MTP layer the same input) as a kForwardMtp
// step; KeepCacheEntries runs locally at once and is queued like a release, and workers apply
// the queued compactions (in call order) and then the releases before the next step's batch.
// Rank 0 only queues compactions that succeeded locally, so a worker whose compaction fails is
// out of step and ends with an error.
//
// Messages go as two broadcasts from rank 0: the payload size (8 bytes), then the payload
// (EncodeStepMessage). Workers wait for the next message under the communicator's op timeout, so
// an idle leader must call KeepAlive() more often than that timeout.
//
// Errors: a Forward / ForwardMtp that fails with ResourceExhausted, InvalidArgument or
// Unimplemented fails identically and before any collective on every rank (same batch, same
// cache state, same weights), so workers carry on and the leader's scheduler decides. Any other
// worker error (a collective failed, the leader died) ends RunTpWorker with that Status: the
// group lives and dies as one.
//
// Thread safety: TpLeaderBackend belongs to rank 0's engine thread; RunTpWorker runs on each
// worker's engine thread. Ownership: both borrow the local backend and the communicator.
#pragma once

#include <cstdint>
#include <vector>

#include "common/status.h"
#include "engine/comm/communicator.h"
#include "engine/runtime/backend.h"

namespace spark::engine {

enum class StepOp : uint32_t { kForward = 1, kStop = 2, kNoop = 3, kForwardMtp = 4 };

// One KeepCacheEntries call, replayed on the workers.
struct CacheKeep {
  uint64_t seq_id = 0;
  CacheKind kind = CacheKind::kTarget;
  int64_t prefix_len = 0;
  std::vector<int32_t> keep;
};

struct StepMessage {
  StepOp op = StepOp::kForward;
  std::vector<uint64_t> releases;  // sequences to release before the batch
  ForwardBatch batch;              // kForward only
  MtpBatch mtp_batch;              // kForwardMtp only
  std::vector<CacheKeep> keeps;    // compactions applied (in order) before the releases
};

// Little-endian wire form: magic "SPKS", op, release count, chunk count (of `batch` or
// `mtp_batch`), release ids, then per chunk seq_id, start_pos, flags (bit 0 all_logits, bit 1
// return_hidden, bit 2 tree_parents follow), token count, tokens, [tree parents, one per token],
// and for kForwardMtp the hidden value count (u64) and the hidden floats. When `keeps` is not
// empty a trailing section follows: keep count, then per keep seq_id, kind (0 target, 1 MTP),
// prefix_len, index count, indices. A message without the new fields is byte-identical to the
// original format (flags 0/1, no trailing section), so older messages still decode.
std::vector<uint8_t> EncodeStepMessage(const StepMessage& message);
// DataLoss when the bytes are truncated or malformed (unknown op, flags or cache kind).
Result<StepMessage> DecodeStepMessage(const uint8_t* data, size_t size);

class TpLeaderBackend final : public Backend {
 public:
  // `comm` must be rank 0 of the group.
  TpLeaderBackend(Backend* local, Communicator* comm);
  TpLeaderBackend(const TpLeaderBackend&) = delete;
  TpLeaderBackend& operator=(const TpLeaderBackend&) = delete;

  const ModelConfig& config() const override { return local_->config(); }
  Result<ForwardOutput> Forward(const ForwardBatch& batch) override;
  void Release(uint64_t seq_id) override;
  int64_t FreeKvTokens() const override { return local_->FreeKvTokens(); }
  bool SupportsSpeculation() const override { return local_->SupportsSpeculation(); }
  // Broadcasts the batch (hidden rows included), then runs the local ForwardMtp.
  Result<ForwardOutput> ForwardMtp(const MtpBatch& batch) override;
  int64_t CachedTokens(uint64_t seq_id, CacheKind kind) const override {
    return local_->CachedTokens(seq_id, kind);
  }
  // Runs locally; on success the call is queued for the workers (sent with the next message).
  Status KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                          const std::vector<int32_t>& keep) override;

  // Sends an empty message so idle workers do not hit their op timeout.
  Status KeepAlive();
  // Ends the worker loops. Idempotent; after it Forward fails with FailedPrecondition.
  Status Stop();

 private:
  Status Send(StepMessage& message);

  Backend* local_;
  Communicator* comm_;
  std::vector<uint64_t> pending_releases_;
  std::vector<CacheKeep> pending_keeps_;
  bool stopped_ = false;
};

// Worker rank loop: runs until the stop message (OK) or a communication failure (its Status).
Status RunTpWorker(Backend* local, Communicator* comm);

}  // namespace spark::engine
