#include "engine/shard/envelope_stamper.h"

#include <random>
#include <utility>

namespace spark::shard {
namespace {

uint64_t RandomIncarnation() {
  std::random_device device;
  std::mt19937_64 rng((static_cast<uint64_t>(device()) << 32) ^ device());
  uint64_t value = 0;
  while (value == 0) value = rng();
  return value;
}

}  // namespace

EnvelopeStamper::EnvelopeStamper(std::string sender_id, uint64_t generation, uint64_t incarnation)
    : sender_id_(std::move(sender_id)),
      generation_(generation),
      incarnation_(incarnation != 0 ? incarnation : RandomIncarnation()) {}

void EnvelopeStamper::Stamp(spark::v1::Envelope& envelope) {
  envelope.set_sender_id(sender_id_);
  envelope.set_generation(generation_);
  envelope.set_sequence(sequence_.fetch_add(1) + 1);
  envelope.set_sender_incarnation(incarnation_);
}

}  // namespace spark::shard
