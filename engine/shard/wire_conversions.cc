#include "engine/shard/wire_conversions.h"

namespace spark::shard {

engine::SamplingParams SamplingParamsFromProto(const spark::v1::SamplingParams& p) {
  engine::SamplingParams out;
  out.temperature = p.temperature();
  out.top_k = p.top_k();
  out.top_p = p.top_p();
  out.min_p = p.min_p();
  out.repetition_penalty = p.repetition_penalty();
  out.presence_penalty = p.presence_penalty();
  out.frequency_penalty = p.frequency_penalty();
  if (p.has_seed()) out.seed = p.seed();
  out.stop_token_ids.assign(p.stop_token_ids().begin(), p.stop_token_ids().end());
  out.ignore_eos = p.ignore_eos();
  out.max_tokens = p.max_tokens();
  out.logprobs = p.logprobs();
  out.top_logprobs = static_cast<int>(p.top_logprobs());
  return out;
}

spark::v1::FinishReason FinishReasonToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kNone:
      return spark::v1::FINISH_REASON_NONE;
    case engine::FinishReason::kStop:
      return spark::v1::FINISH_REASON_STOP;
    case engine::FinishReason::kLength:
      return spark::v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kCancelled:
      return spark::v1::FINISH_REASON_CANCELLED;
    case engine::FinishReason::kError:
      return spark::v1::FINISH_REASON_ERROR;
  }
  return spark::v1::FINISH_REASON_ERROR;
}

}  // namespace spark::shard
