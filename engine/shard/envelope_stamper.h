// EnvelopeStamper: fills the header of every envelope one shard process sends (sender id, run
// generation, per-sender sequence, incarnation), whichever socket it goes out on.
//
// The sequence starts at 1 and grows by one per stamped envelope; the incarnation is random per
// stamper (one stamper per process), as docs/control-plane.md "Envelope rules" asks.
//
// Thread safety: Stamp() may be called from any thread. Ownership: a value type.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

#include "spark.pb.h"

namespace spark::shard {

class EnvelopeStamper {
 public:
  // `incarnation` 0 picks a random non-zero one.
  EnvelopeStamper(std::string sender_id, uint64_t generation, uint64_t incarnation = 0);
  EnvelopeStamper(const EnvelopeStamper&) = delete;
  EnvelopeStamper& operator=(const EnvelopeStamper&) = delete;

  // Sets sender_id, generation, sequence and sender_incarnation of `envelope`.
  void Stamp(spark::v1::Envelope& envelope);

  const std::string& sender_id() const { return sender_id_; }
  uint64_t generation() const { return generation_; }
  uint64_t incarnation() const { return incarnation_; }
  // Sequence number of the last stamped envelope (0 before the first).
  uint64_t last_sequence() const { return sequence_.load(); }

 private:
  const std::string sender_id_;
  const uint64_t generation_;
  const uint64_t incarnation_;
  std::atomic<uint64_t> sequence_{0};
};

}  // namespace spark::shard
