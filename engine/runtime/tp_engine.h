// Tensor-parallel driver: rank 0 runs the scheduler, every rank runs the same Forward.
//
// On rank 0 the scheduler talks to a TpLeaderBackend, a Backend decorator around the rank's own
// backend. Each Forward first broadcasts a step message (the ForwardBatch, plus the sequence ids
// released since the previous message) to the other ranks through the Communicator, then runs
// the local Forward; the workers, in RunTpWorker, receive the message, apply the releases and run
// the same Forward (whose collectives pair with rank 0's). Only rank 0 samples. Stop() sends the
// stop message that ends the worker loops.
//
// Messages go as two broadcasts from rank 0: the payload size (8 bytes), then the payload
// (EncodeStepMessage). Workers wait for the next message under the communicator's op timeout, so
// an idle leader must call KeepAlive() more often than that timeout.
//
// Errors: a Forward that fails with ResourceExhausted or InvalidArgument fails identically and
// before any collective on every rank (same batch, same cache state), so workers carry on and the
// leader's scheduler decides. Any other worker error (a collective failed, the leader died) ends
// RunTpWorker with that Status: the group lives and dies as one.
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

enum class StepOp : uint32_t { kForward = 1, kStop = 2, kNoop = 3 };

struct StepMessage {
  StepOp op = StepOp::kForward;
  std::vector<uint64_t> releases;  // sequences to release before the batch
  ForwardBatch batch;              // kForward only
};

// Little-endian wire form: magic "SPKS", op, release count, chunk count, release ids, then per
// chunk seq_id, start_pos, all_logits, token count, tokens.
std::vector<uint8_t> EncodeStepMessage(const StepMessage& message);
// DataLoss when the bytes are truncated or malformed.
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

  // Sends an empty message so idle workers do not hit their op timeout.
  Status KeepAlive();
  // Ends the worker loops. Idempotent; after it Forward fails with FailedPrecondition.
  Status Stop();

 private:
  Status Send(StepMessage& message);

  Backend* local_;
  Communicator* comm_;
  std::vector<uint64_t> pending_releases_;
  bool stopped_ = false;
};

// Worker rank loop: runs until the stop message (OK) or a communication failure (its Status).
Status RunTpWorker(Backend* local, Communicator* comm);

}  // namespace spark::engine
