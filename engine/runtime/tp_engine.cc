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

namespace {

constexpr uint32_t kFlagAllLogits = 1;
constexpr uint32_t kFlagReturnHidden = 2;
constexpr uint32_t kFlagTree = 4;
constexpr uint32_t kKnownFlags = kFlagAllLogits | kFlagReturnHidden | kFlagTree;

void PutChunkHead(Writer& w, uint64_t seq_id, int64_t start_pos, bool all_logits,
                  bool return_hidden, const std::vector<int32_t>& tokens,
                  const std::vector<int32_t>& tree_parents) {
  w.Put<uint64_t>(seq_id);
  w.Put<int64_t>(start_pos);
  uint32_t flags = all_logits ? kFlagAllLogits : 0;
  if (return_hidden) flags |= kFlagReturnHidden;
  if (!tree_parents.empty()) flags |= kFlagTree;
  w.Put<uint32_t>(flags);
  w.Put<uint32_t>(static_cast<uint32_t>(tokens.size()));
  for (int32_t t : tokens) w.Put<int32_t>(t);
  // A tree chunk carries one parent per token (the backend rejects other sizes; the wire form
  // keeps the count it was given so that every rank rejects it the same way).
  if (!tree_parents.empty()) {
    w.Put<uint32_t>(static_cast<uint32_t>(tree_parents.size()));
    for (int32_t p : tree_parents) w.Put<int32_t>(p);
  }
}

Status GetInts(Reader& r, std::vector<int32_t>& out, const char* what) {
  uint32_t n = 0;
  if (!r.Get(n)) {
    return DataLoss(std::string("tensor-parallel step message: truncated ") + what + " count");
  }
  if (n > r.left() / sizeof(int32_t)) {
    return DataLoss(std::string("tensor-parallel step message: truncated ") + what);
  }
  out.resize(n);
  for (int32_t& v : out) r.Get(v);
  return Status::Ok();
}

// Reads one chunk head; `tokens` is read with its count, tree parents when flagged.
Status GetChunkHead(Reader& r, uint64_t& seq_id, int64_t& start_pos, bool& all_logits,
                    bool& return_hidden, std::vector<int32_t>& tokens,
                    std::vector<int32_t>& tree_parents) {
  uint32_t flags = 0;
  if (!r.Get(seq_id) || !r.Get(start_pos) || !r.Get(flags)) {
    return DataLoss("tensor-parallel step message: truncated chunk header");
  }
  if ((flags & ~kKnownFlags) != 0) {
    return DataLoss("tensor-parallel step message: unknown chunk flags " + std::to_string(flags) +
                    "; the ranks run different builds");
  }
  all_logits = (flags & kFlagAllLogits) != 0;
  return_hidden = (flags & kFlagReturnHidden) != 0;
  SPARK_RETURN_IF_ERROR(GetInts(r, tokens, "chunk tokens"));
  tree_parents.clear();
  if ((flags & kFlagTree) != 0) SPARK_RETURN_IF_ERROR(GetInts(r, tree_parents, "tree parents"));
  return Status::Ok();
}

}  // namespace

std::vector<uint8_t> EncodeStepMessage(const StepMessage& message) {
  Writer w;
  const bool mtp = message.op == StepOp::kForwardMtp;
  w.Put<uint32_t>(kMagic);
  w.Put<uint32_t>(static_cast<uint32_t>(message.op));
  w.Put<uint32_t>(static_cast<uint32_t>(message.releases.size()));
  w.Put<uint32_t>(
      static_cast<uint32_t>(mtp ? message.mtp_batch.chunks.size() : message.batch.chunks.size()));
  for (uint64_t id : message.releases) w.Put<uint64_t>(id);
  if (mtp) {
    for (const MtpChunk& c : message.mtp_batch.chunks) {
      PutChunkHead(w, c.seq_id, c.start_pos, c.all_logits, c.return_hidden, c.tokens,
                   c.tree_parents);
      w.Put<uint64_t>(c.hidden.size());
      for (float v : c.hidden) w.Put<float>(v);
    }
  } else {
    for (const SequenceChunk& c : message.batch.chunks) {
      PutChunkHead(w, c.seq_id, c.start_pos, c.all_logits, c.return_hidden, c.tokens,
                   c.tree_parents);
    }
  }
  if (!message.keeps.empty()) {
    w.Put<uint32_t>(static_cast<uint32_t>(message.keeps.size()));
    for (const CacheKeep& k : message.keeps) {
      w.Put<uint64_t>(k.seq_id);
      w.Put<uint32_t>(k.kind == CacheKind::kTarget ? 0u : 1u);
      w.Put<int64_t>(k.prefix_len);
      w.Put<uint32_t>(static_cast<uint32_t>(k.keep.size()));
      for (int32_t v : k.keep) w.Put<int32_t>(v);
    }
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
  if (op < static_cast<uint32_t>(StepOp::kForward) ||
      op > static_cast<uint32_t>(StepOp::kForwardMtp)) {
    return DataLoss("tensor-parallel step message: unknown op " + std::to_string(op));
  }
  m.op = static_cast<StepOp>(op);
  if (n_releases > r.left() / sizeof(uint64_t)) {
    return DataLoss("tensor-parallel step message: release list longer than the message");
  }
  m.releases.resize(n_releases);
  for (uint64_t& id : m.releases) r.Get(id);
  // Every chunk takes at least 24 bytes, which bounds the count before allocating.
  if (n_chunks > r.left() / 24) {
    return DataLoss("tensor-parallel step message: chunk count longer than the message");
  }
  if (m.op == StepOp::kForwardMtp) {
    m.mtp_batch.chunks.resize(n_chunks);
    for (MtpChunk& c : m.mtp_batch.chunks) {
      SPARK_RETURN_IF_ERROR(GetChunkHead(r, c.seq_id, c.start_pos, c.all_logits, c.return_hidden,
                                         c.tokens, c.tree_parents));
      uint64_t n = 0;
      if (!r.Get(n) || n > r.left() / sizeof(float)) {
        return DataLoss("tensor-parallel step message: truncated MTP hidden rows");
      }
      c.hidden.resize(n);
      for (float& v : c.hidden) r.Get(v);
    }
  } else {
    m.batch.chunks.resize(n_chunks);
    for (SequenceChunk& c : m.batch.chunks) {
      SPARK_RETURN_IF_ERROR(GetChunkHead(r, c.seq_id, c.start_pos, c.all_logits, c.return_hidden,
                                         c.tokens, c.tree_parents));
    }
  }
  if (r.left() != 0) {
    uint32_t n_keeps = 0;
    if (!r.Get(n_keeps) || n_keeps == 0 || n_keeps > r.left() / 24) {
      return DataLoss("tensor-parallel step message: trailing bytes");
    }
    m.keeps.resize(n_keeps);
    for (CacheKeep& k : m.keeps) {
      uint32_t kind = 0;
      if (!r.Get(k.seq_id) || !r.Get(kind) || !r.Get(k.prefix_len)) {
        return DataLoss("tensor-parallel step message: truncated cache compaction");
      }
      if (kind > 1) {
        return DataLoss("tensor-parallel step message: unknown cache kind " + std::to_string(kind));
      }
      k.kind = kind == 0 ? CacheKind::kTarget : CacheKind::kMtp;
      SPARK_RETURN_IF_ERROR(GetInts(r, k.keep, "cache compaction indices"));
    }
    if (r.left() != 0) return DataLoss("tensor-parallel step message: trailing bytes");
  }
  return m;
}

TpLeaderBackend::TpLeaderBackend(Backend* local, Communicator* comm) : local_(local), comm_(comm) {}

Status TpLeaderBackend::Send(StepMessage& message) {
  message.releases.swap(pending_releases_);
  pending_releases_.clear();
  message.keeps.swap(pending_keeps_);
  pending_keeps_.clear();
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

Result<ForwardOutput> TpLeaderBackend::ForwardMtp(const MtpBatch& batch) {
  if (stopped_) return FailedPrecondition("tensor-parallel group already stopped");
  StepMessage message;
  message.op = StepOp::kForwardMtp;
  message.mtp_batch = batch;
  Status sent = Send(message);
  if (!sent.ok()) {
    return sent.WithContext("broadcasting the MTP batch to the tensor-parallel ranks");
  }
  return local_->ForwardMtp(batch);
}

Status TpLeaderBackend::KeepCacheEntries(uint64_t seq_id, CacheKind kind, int64_t prefix_len,
                                         const std::vector<int32_t>& keep) {
  SPARK_RETURN_IF_ERROR(local_->KeepCacheEntries(seq_id, kind, prefix_len, keep));
  pending_keeps_.push_back(CacheKeep{seq_id, kind, prefix_len, keep});
  return Status::Ok();
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

namespace {

// Errors a batch returns before any collective, identically on every rank.
bool SameOnEveryRank(const Status& s) {
  return s.code() == StatusCode::kResourceExhausted || s.code() == StatusCode::kInvalidArgument ||
         s.code() == StatusCode::kUnimplemented;
}

}  // namespace

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
    for (const CacheKeep& k : message.keeps) {
      s = local->KeepCacheEntries(k.seq_id, k.kind, k.prefix_len, k.keep);
      if (!s.ok()) {
        return s.WithContext(who + ": cache compaction of sequence " + std::to_string(k.seq_id) +
                             " that succeeded on rank 0 failed here; the ranks are out of step");
      }
    }
    for (uint64_t id : message.releases) local->Release(id);
    switch (message.op) {
      case StepOp::kStop:
        return Status::Ok();
      case StepOp::kNoop:
        break;
      case StepOp::kForward: {
        Result<ForwardOutput> out = local->Forward(message.batch);
        if (!out.ok() && !SameOnEveryRank(out.status())) {
          return out.status().WithContext(who + " forward");
        }
        break;
      }
      case StepOp::kForwardMtp: {
        Result<ForwardOutput> out = local->ForwardMtp(message.mtp_batch);
        if (!out.ok() && !SameOnEveryRank(out.status())) {
          return out.status().WithContext(who + " MTP forward");
        }
        break;
      }
    }
  }
}

}  // namespace spark::engine
