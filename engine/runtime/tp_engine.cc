#include "engine/runtime/tp_engine.h"

#include <cstring>
#include <string>
#include <utility>

namespace spark::engine {
namespace {

constexpr uint32_t kMagic = 0x534B5053;  // "SPKS" little-endian
// Bounds that keep a corrupt size from allocating unbounded memory.
constexpr uint64_t kMaxMessageBytes = uint64_t{1} << 32;

class Writer {
 public:
  template <typename T>
  void Put(T v) {
    uint8_t bytes[sizeof(T)];
    std::memcpy(bytes, &v, sizeof(T));  // hosts are little-endian (x86-64, aarch64)
    out.insert(out.end(), bytes, bytes + sizeof(T));
  }
  std::vector<uint8_t> out;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  template <typename T>
  bool Get(T& v) {
    if (size_ - pos_ < sizeof(T)) return false;
    std::memcpy(&v, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  size_t left() const { return size_ - pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace

std::vector<uint8_t> EncodeStepMessage(const StepMessage& message) {
  Writer w;
  w.Put<uint32_t>(kMagic);
  w.Put<uint32_t>(static_cast<uint32_t>(message.op));
  w.Put<uint32_t>(static_cast<uint32_t>(message.releases.size()));
  w.Put<uint32_t>(static_cast<uint32_t>(message.batch.chunks.size()));
  for (uint64_t id : message.releases) w.Put<uint64_t>(id);
  for (const SequenceChunk& c : message.batch.chunks) {
    w.Put<uint64_t>(c.seq_id);
    w.Put<int64_t>(c.start_pos);
    w.Put<uint32_t>(c.all_logits ? 1 : 0);
    w.Put<uint32_t>(static_cast<uint32_t>(c.tokens.size()));
    for (int32_t t : c.tokens) w.Put<int32_t>(t);
  }
  return std::move(w.out);
}

Result<StepMessage> DecodeStepMessage(const uint8_t* data, size_t size) {
  Reader r(data, size);
  uint32_t magic = 0, op = 0, n_releases = 0, n_chunks = 0;
  if (!r.Get(magic) || magic != kMagic) {
    return DataLoss("tensor-parallel step message: bad magic; the ranks run different builds");
  }
  if (!r.Get(op) || !r.Get(n_releases) || !r.Get(n_chunks)) {
    return DataLoss("tensor-parallel step message: truncated header");
  }
  StepMessage m;
  if (op < static_cast<uint32_t>(StepOp::kForward) || op > static_cast<uint32_t>(StepOp::kNoop)) {
    return DataLoss("tensor-parallel step message: unknown op " + std::to_string(op));
  }
  m.op = static_cast<StepOp>(op);
  if (n_releases > r.left() / sizeof(uint64_t)) {
    return DataLoss("tensor-parallel step message: release list longer than the message");
  }
  m.releases.resize(n_releases);
  for (uint64_t& id : m.releases) r.Get(id);
  m.batch.chunks.resize(n_chunks > r.left() ? 0 : n_chunks);
  if (m.batch.chunks.size() != n_chunks) {
    return DataLoss("tensor-parallel step message: chunk count longer than the message");
  }
  for (SequenceChunk& c : m.batch.chunks) {
    uint32_t all = 0, n = 0;
    if (!r.Get(c.seq_id) || !r.Get(c.start_pos) || !r.Get(all) || !r.Get(n)) {
      return DataLoss("tensor-parallel step message: truncated chunk header");
    }
    if (n > r.left() / sizeof(int32_t)) {
      return DataLoss("tensor-parallel step message: truncated chunk tokens");
    }
    c.all_logits = all != 0;
    c.tokens.resize(n);
    for (int32_t& t : c.tokens) r.Get(t);
  }
  if (r.left() != 0) return DataLoss("tensor-parallel step message: trailing bytes");
  return m;
}

TpLeaderBackend::TpLeaderBackend(Backend* local, Communicator* comm) : local_(local), comm_(comm) {}

Status TpLeaderBackend::Send(StepMessage& message) {
  message.releases.swap(pending_releases_);
  pending_releases_.clear();
  std::vector<uint8_t> bytes = EncodeStepMessage(message);
  uint64_t size = bytes.size();
  SPARK_RETURN_IF_ERROR(comm_->Broadcast(&size, sizeof(size), 0));
  return comm_->Broadcast(bytes.data(), bytes.size(), 0);
}

Result<ForwardOutput> TpLeaderBackend::Forward(const ForwardBatch& batch) {
  if (stopped_) return FailedPrecondition("tensor-parallel group already stopped");
  StepMessage message;
  message.op = StepOp::kForward;
  message.batch = batch;
  Status sent = Send(message);
  if (!sent.ok()) return sent.WithContext("broadcasting the batch to the tensor-parallel ranks");
  return local_->Forward(batch);
}

void TpLeaderBackend::Release(uint64_t seq_id) {
  local_->Release(seq_id);
  pending_releases_.push_back(seq_id);
}

Status TpLeaderBackend::KeepAlive() {
  if (stopped_) return Status::Ok();
  StepMessage message;
  message.op = StepOp::kNoop;
  return Send(message);
}

Status TpLeaderBackend::Stop() {
  if (stopped_) return Status::Ok();
  stopped_ = true;
  StepMessage message;
  message.op = StepOp::kStop;
  return Send(message);
}

Status RunTpWorker(Backend* local, Communicator* comm) {
  const std::string who = "tensor-parallel rank " + std::to_string(comm->rank());
  std::vector<uint8_t> bytes;
  while (true) {
    uint64_t size = 0;
    Status s = comm->Broadcast(&size, sizeof(size), 0);
    if (!s.ok()) return s.WithContext(who + " waiting for the next step");
    if (size == 0 || size > kMaxMessageBytes) {
      return DataLoss(who + ": step message size " + std::to_string(size) +
                      " is invalid; the ranks are out of step");
    }
    bytes.resize(size);
    s = comm->Broadcast(bytes.data(), bytes.size(), 0);
    if (!s.ok()) return s.WithContext(who + " receiving a step");
    SPARK_ASSIGN_OR_RETURN(StepMessage message, DecodeStepMessage(bytes.data(), bytes.size()));
    for (uint64_t id : message.releases) local->Release(id);
    switch (message.op) {
      case StepOp::kStop:
        return Status::Ok();
      case StepOp::kNoop:
        break;
      case StepOp::kForward: {
        Result<ForwardOutput> out = local->Forward(message.batch);
        if (!out.ok() && out.status().code() != StatusCode::kResourceExhausted &&
            out.status().code() != StatusCode::kInvalidArgument) {
          return out.status().WithContext(who + " forward");
        }
        break;
      }
    }
  }
}

}  // namespace spark::engine
