// Conversions between the data-plane wire messages (spark.proto) and the engine's types.
//
// The controller sends every sampling field explicitly; no defaults are applied here, so an
// unset field arrives as its zero value and is validated as such (max_tokens 0 or top_p 0 are
// rejected by SamplingParams::Validate with a message naming the field).
//
// Thread safety: pure functions.
#pragma once

#include "engine/runtime/sampler.h"
#include "engine/runtime/scheduler.h"
#include "spark.pb.h"

namespace spark::shard {

engine::SamplingParams SamplingParamsFromProto(const spark::v1::SamplingParams& params);

spark::v1::FinishReason FinishReasonToProto(engine::FinishReason reason);

}  // namespace spark::shard
