// `spark-bench speculative`: acceptance length and decode speed of speculative decoding (MTP
// draft) against plain decoding, on the same model, prompts and machine, in one run.
//
// The model is a checkpoint directory with an MTP layer (--model; its own MTP layer is used as
// it is), or by default a tiny GLM written by WriteSelfDraftModel (self_draft_model.h), whose
// MTP layer is derived from the model so that the draft agrees with it. `requests` sequences of
// `prompt_tokens` seeded random tokens are generated to `max_tokens` each (ignore_eos), once
// without and once with speculation, through the Scheduler on the CPU backend (tp ranks as
// threads). Reported per run: generated tokens, wall time, tokens/s (whole run and decode phase:
// after every request has its first token), and for the speculative run the acceptance length
// (tokens per verify step), accepted / drafted tokens and the draft / verify time; plus whether
// the greedy outputs were identical.
//
// Thread safety: RunSpeculativeBench runs on the calling thread (plus the TP group's workers).
#pragma once

#include <cstdint>
#include <filesystem>
#include <iosfwd>

#include "common/status.h"
#include "engine/runtime/speculative.h"

namespace spark::bench {

struct SpeculativeBenchOptions {
  std::filesystem::path model_dir;  // empty: a self-draft tiny model in a temporary directory
  int layers = 8;                   // self-draft model: target decoder layers
  float residual_scale = 0.0f;      // self-draft model: layers 1..L-1 output scale
  uint64_t seed = 0;                // model (self-draft) and prompts
  int tp = 1;
  int threads = 0;  // CPU threads per rank; 0 = cores / tp
  int requests = 1;
  int prompt_tokens = 32;
  int max_tokens = 128;
  float temperature = 0.0f;  // 0 = greedy (outputs compared)
  engine::SpeculativeOptions speculative = {3, 1, 0};
  bool json = false;
};

struct SpeculativeBenchRun {
  int64_t generated_tokens = 0;
  double seconds = 0;
  double tokens_per_s = 0;
  double decode_tokens_per_s = 0;  // tokens after each request's first, over the decode phase
  engine::SpeculativeStats stats;  // speculative run only
};

struct SpeculativeBenchReport {
  std::string model;  // the directory, or "self-draft tiny model (...)"
  SpeculativeBenchOptions options;
  SpeculativeBenchRun baseline;
  SpeculativeBenchRun speculative;
  bool greedy = true;
  bool identical_outputs = false;  // greedy only
};

Result<SpeculativeBenchReport> RunSpeculativeBench(const SpeculativeBenchOptions& options,
                                                   std::ostream* log);

void PrintSpeculativeBenchReport(const SpeculativeBenchReport& report, bool json,
                                 std::ostream& out);

}  // namespace spark::bench
