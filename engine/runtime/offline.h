// Offline runs of a model: the engine behind `spark-model logits` and `spark-model generate`
// (and tests and benchmarks that need the same thing).
//
//   OpenOfflineEngine  - a LocalTpGroup for a checkpoint directory and a backend name;
//   PromptLogits       - full-vocabulary logits of every prompt position (one all_logits chunk);
//   GenerateOffline    - one request through the Scheduler to completion, with timings;
//   ParseTokenIds      - "5,17,3" -> ids.
//
// Thread safety: functions run on the caller's thread, which must own the backend.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "engine/runtime/backend.h"
#include "engine/runtime/local_tp_group.h"
#include "engine/runtime/sampler.h"
#include "engine/runtime/scheduler.h"
#include "engine/runtime/speculative.h"

namespace spark::engine {

// Parses comma-separated token ids ("5,17,3"; spaces allowed). InvalidArgument names the bad
// entry; an empty list is an error.
Result<std::vector<int32_t>> ParseTokenIds(std::string_view text);

struct OfflineEngineOptions {
  std::string backend = "cpu";  // "cpu"; "cuda" is not built yet
  int tp_size = 1;
  int threads = 0;                              // per rank; 0 = hardware threads / tp
  int64_t kv_cache_bytes = int64_t{256} << 20;  // per rank
  bool dummy_weights = false;                   // load_format=dummy (config.json only)
  uint64_t dummy_seed = 0;
  bool load_mtp = false;  // also load the MTP (nextn) layer (speculative decoding's draft)
};

// Unimplemented for --backend cuda ("not supported yet: the CUDA backend is not built"),
// InvalidArgument for an unknown backend or tp size, otherwise LocalTpGroup::Create's errors.
Result<std::unique_ptr<LocalTpGroup>> OpenOfflineEngine(const std::filesystem::path& model_dir,
                                                        const OfflineEngineOptions& options);

// Runs `ids` as one fresh sequence and returns [ids.size(), vocab] row-major logits; the
// sequence is released afterwards.
Result<std::vector<float>> PromptLogits(Backend* backend, const std::vector<int32_t>& ids);

struct OfflineGenerateResult {
  std::vector<int32_t> ids;  // generated tokens only
  FinishReason finish = FinishReason::kNone;
  int64_t prompt_tokens = 0;
  double prefill_ms = 0;  // from start to the first generated token
  double decode_ms = 0;   // from the first to the last generated token
  // (generated - 1) / decode time; 0 with fewer than two tokens.
  double decode_tokens_per_s() const;
  SpeculativeStats speculative;  // zero without speculation
};

// Generates one continuation of `prompt`; `on_token` (optional) sees every token as it comes.
// `speculative` (steps > 0) decodes speculatively with the backend's MTP layer (the scheduler's
// errors when the backend has none). A request-specific failure (kError) is returned as its
// Status.
Result<OfflineGenerateResult> GenerateOffline(Backend* backend, const std::vector<int32_t>& prompt,
                                              const SamplingParams& params,
                                              const std::function<void(int32_t)>& on_token = {},
                                              const SpeculativeOptions& speculative = {});

}  // namespace spark::engine
