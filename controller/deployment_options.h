// Deployment options: the `options` object of POST /api/v1/models (and `sparkctl deploy
// --option key=value`), validated and turned into the wire EngineOptions plus the controller's
// per-deployment deadlines.
//
// Keys (numbers may also be given as decimal strings, as sparkctl sends them):
//   max_batch, max_seq_len                   unsigned integers
//   kv_cache_fraction                        number in (0, 1]
//   kv_cache_bytes, shared_memory_cap_bytes  unsigned integers (bytes)
//   load_format                              "auto" or "dummy"
//   dtype                                    string ("auto", "bfloat16", ...)
//   seed                                     unsigned integer
//   speculative                              "auto" (the default), "off", or an object {steps,
//                                            topk, draft_tokens}: speculative decoding with the
//                                            checkpoint's MTP layer (below)
//   speculative_steps, speculative_topk, speculative_draft_tokens
//                                            flat aliases of the speculative object's fields
//                                            (give either the object or the aliases)
//   extra                                    object of string values (experimental engine knobs)
//   rendezvous_timeout_ms, load_timeout_ms, first_generation_timeout_ms
//                                            unsigned integers overriding the controller's
//                                            deadlines for this deployment
// Unknown keys are refused with the list of known ones.
//
// speculative (validated as SGLang does; a field of 0 counts as not given). Absent, null or
// "auto": the shard decides (on for the CUDA backend with a checkpoint that has its MTP layer;
// engine/shard/shard_settings.h); "off", an empty object or steps 0: off.
//   steps         draft steps per verify, [1, 32]; 0 = speculative decoding off (then topk and
//                 draft_tokens must be absent too)
//   topk          branching per draft step, [1, 16]; default 1 (a chain)
//   draft_tokens  tokens verified per step: with topk 1 it is steps + 1 (the default; any other
//                 value is refused); with topk > 1 it is required, in [2, min(64, 1 + topk +
//                 (steps - 1) * topk^2)]
// The normalized form holds the object with all three fields (the flat aliases are folded into
// it), "off", or no "speculative" key (automatic).
//
// Thread safety: pure functions.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "spark.pb.h"

namespace spark::controller {

struct DeploymentOptions {
  spark::v1::EngineOptions engine;  // tp filled in
  std::optional<std::chrono::milliseconds> rendezvous_timeout;
  std::optional<std::chrono::milliseconds> load_timeout;
  std::optional<std::chrono::milliseconds> first_generation_timeout;
};

// Validates `options` (a JSON object; null counts as {}) and returns it with typed values (the
// form that is stored). InvalidArgument names the key and what it must be.
Result<nlohmann::json> NormalizeDeploymentOptions(const nlohmann::json& options);

// Parses normalized (or raw) options; `tp` goes into EngineOptions.tp.
Result<DeploymentOptions> ParseDeploymentOptions(const nlohmann::json& options, int tp);

// Parses the stored options_json text.
Result<DeploymentOptions> ParseDeploymentOptionsJson(const std::string& options_json, int tp);

}  // namespace spark::controller
