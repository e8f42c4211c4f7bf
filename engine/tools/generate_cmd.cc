// spark-model generate DIR (--prompt TEXT | --ids 5,17,...) [--max-tokens N] [--temperature T]
//                          [--top-k K] [--top-p P] [--min-p P] [--seed S] [--ignore-eos]
//                          [--tp N] [--backend cpu|cuda] [--threads N] [--dummy] [--json]
//                          [--spec-steps N [--spec-topk K] [--spec-draft-tokens D]]
// Generates one continuation. --prompt needs DIR/tokenizer.json; --ids does not (the text is
// then decoded only when a tokenizer is present). Without --json the text streams to stdout as
// it is generated (token ids when there is no tokenizer). With --json one object is printed:
//   {"ids": [generated ids], "text": "...", "finish_reason": "stop|length", "prompt_tokens": n,
//    "prefill_ms": x, "decode_ms": y, "decode_tokens_per_s": z}
// plus, with --spec-steps N > 0 (speculative decoding with the checkpoint's MTP layer, loaded
// for it; docs/speculative-decoding.md), "speculative": {"steps", "topk", "draft_tokens",
// "verify_steps", "drafted_tokens", "accepted_tokens", "acceptance_length", "draft_ms",
// "verify_ms"}; without --json that summary goes to stderr.
// Temperature defaults to 0 (greedy): the same command gives the same output.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "engine/runtime/offline.h"
#include "engine/text/detokenizer.h"
#include "engine/text/tokenizer.h"
#include "engine/tools/command.h"
#include "engine/tools/model_engine.h"

namespace spark::tools {
namespace {

struct GenerateArgs {
  std::string model_dir;
  std::string prompt;
  std::string ids;
  int64_t max_tokens = 32;
  float temperature = 0.0f;
  int top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  std::optional<uint64_t> seed;
  bool ignore_eos = false;
  int tp = 1;
  std::string backend = "cpu";
  int threads = 0;
  bool dummy = false;
  bool json = false;
  engine::SpeculativeOptions speculative;
};

int Fail(const Status& s) {
  std::fprintf(stderr, "spark-model generate: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kUnimplemented ? 2 : 1;
}

// JSON string literal of UTF-8 text.
std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

int RunGenerate(const GenerateArgs& args) {
  if (args.prompt.empty() == args.ids.empty()) {
    return Fail(InvalidArgument("give exactly one of --prompt TEXT or --ids 5,17,..."));
  }
  const std::filesystem::path tokenizer_path =
      std::filesystem::path(args.model_dir) / "tokenizer.json";
  std::unique_ptr<engine::Tokenizer> tokenizer;
  if (!args.prompt.empty() || std::filesystem::exists(tokenizer_path)) {
    auto loaded = engine::Tokenizer::FromFile(tokenizer_path);
    if (!loaded.ok()) {
      return Fail(
          loaded.status().WithContext("--prompt needs the model's tokenizer.json (or pass --ids)"));
    }
    tokenizer = std::move(loaded).value();
  }
  std::vector<int32_t> prompt;
  if (!args.prompt.empty()) {
    prompt = tokenizer->Encode(args.prompt);
    if (prompt.empty()) return Fail(InvalidArgument("--prompt encodes to no tokens"));
  } else {
    auto ids = engine::ParseTokenIds(args.ids);
    if (!ids.ok()) return Fail(ids.status());
    prompt = std::move(ids).value();
  }

  engine::SamplingParams params;
  params.max_tokens = args.max_tokens;
  params.temperature = args.temperature;
  params.top_k = args.top_k;
  params.top_p = args.top_p;
  params.min_p = args.min_p;
  params.seed = args.seed;
  params.ignore_eos = args.ignore_eos;
  Status valid = params.Validate();
  if (!valid.ok()) return Fail(valid);
  auto speculative = engine::ResolveSpeculativeOptions(args.speculative);
  if (!speculative.ok()) {
    return Fail(
        speculative.status().WithContext("--spec-steps / --spec-topk / --spec-draft-tokens"));
  }

  engine::OfflineEngineOptions options;
  options.backend = args.backend;
  options.tp_size = args.tp;
  options.threads = args.threads;
  options.dummy_weights = args.dummy;
  options.load_mtp = speculative->enabled();
  auto group = OpenModelEngine(args.model_dir, options);
  if (!group.ok()) return Fail(group.status());

  // Streams text (or ids without a tokenizer) unless --json.
  std::optional<engine::Detokenizer> stream;
  if (tokenizer && !args.json) stream.emplace(tokenizer.get(), /*skip_special=*/true);
  auto on_token = [&](int32_t id) {
    if (args.json) return;
    if (stream) {
      auto piece = stream->Feed(id);
      if (piece.ok()) std::fputs(piece->c_str(), stdout);
    } else {
      std::printf("%d ", id);
    }
    std::fflush(stdout);
  };
  auto result =
      engine::GenerateOffline((*group)->backend(), prompt, params, on_token, *speculative);
  Status shutdown = (*group)->Shutdown();
  if (!result.ok()) return Fail(result.status());
  if (!shutdown.ok()) return Fail(shutdown);

  const engine::SpeculativeStats& spec = result->speculative;
  char spec_json[512] = "";
  if (speculative->enabled()) {
    std::snprintf(spec_json, sizeof(spec_json),
                  ",\"speculative\":{\"steps\":%d,\"topk\":%d,\"draft_tokens\":%d,"
                  "\"verify_steps\":%lld,\"drafted_tokens\":%lld,\"accepted_tokens\":%lld,"
                  "\"acceptance_length\":%.4f,\"draft_ms\":%.3f,\"verify_ms\":%.3f}",
                  speculative->steps, speculative->topk, speculative->draft_tokens,
                  static_cast<long long>(spec.verify_steps),
                  static_cast<long long>(spec.drafted_tokens),
                  static_cast<long long>(spec.accepted_tokens), spec.AcceptanceLength(),
                  spec.draft_ms, spec.verify_ms);
  }
  if (!args.json) {
    if (stream) std::fputs(stream->Flush().c_str(), stdout);
    std::fputs("\n", stdout);
    if (speculative->enabled()) {
      std::fprintf(stderr,
                   "speculative: acceptance length %.3f (%lld of %lld draft tokens accepted in "
                   "%lld verify steps), draft %.1f ms, verify %.1f ms\n",
                   spec.AcceptanceLength(), static_cast<long long>(spec.accepted_tokens),
                   static_cast<long long>(spec.drafted_tokens),
                   static_cast<long long>(spec.verify_steps), spec.draft_ms, spec.verify_ms);
    }
    return 0;
  }
  std::string text_json = "null";
  if (tokenizer) {
    auto text = tokenizer->Decode(result->ids, /*skip_special=*/true);
    if (!text.ok()) return Fail(text.status());
    text_json = JsonString(*text);
  }
  std::string ids_json = "[";
  for (size_t i = 0; i < result->ids.size(); ++i) {
    if (i > 0) ids_json += ",";
    ids_json += std::to_string(result->ids[i]);
  }
  ids_json += "]";
  std::printf(
      "{\"ids\":%s,\"text\":%s,\"finish_reason\":\"%s\",\"prompt_tokens\":%lld,"
      "\"prefill_ms\":%.3f,\"decode_ms\":%.3f,\"decode_tokens_per_s\":%.3f%s}\n",
      ids_json.c_str(), text_json.c_str(),
      std::string(engine::FinishReasonName(result->finish)).c_str(),
      static_cast<long long>(result->prompt_tokens), result->prefill_ms, result->decode_ms,
      result->decode_tokens_per_s(), spec_json);
  return 0;
}

SPARK_MODEL_COMMAND(kGenerateCommand, "generate", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<GenerateArgs>();
  CLI::App* cmd = app.add_subcommand("generate", "generate a continuation of a prompt");
  cmd->add_option("DIR", args->model_dir, "model directory (config.json, *.safetensors)")
      ->required();
  auto* prompt = cmd->add_option("--prompt", args->prompt, "prompt text (needs tokenizer.json)");
  auto* ids = cmd->add_option("--ids", args->ids, "prompt token ids, comma-separated");
  prompt->excludes(ids);
  ids->excludes(prompt);
  cmd->add_option("--max-tokens", args->max_tokens, "tokens to generate at most")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--temperature", args->temperature, "0 = greedy")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--top-k", args->top_k, "0 = off")->capture_default_str();
  cmd->add_option("--top-p", args->top_p, "1 = off")->capture_default_str();
  cmd->add_option("--min-p", args->min_p, "0 = off")->capture_default_str();
  cmd->add_option("--seed", args->seed, "sampling seed (default: random)");
  cmd->add_flag("--ignore-eos", args->ignore_eos, "do not stop at EOS tokens");
  cmd->add_option("--tp", args->tp, "tensor-parallel ranks (threads of this process)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--backend", args->backend,
                  "cpu, or cuda (rank r on GPU r; builds with the CUDA backend)")
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "kernel threads per rank (0 = cores / tp)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--dummy", args->dummy, "random weights from config.json (load_format=dummy)");
  cmd->add_flag("--json", args->json, "print one JSON object with ids, text and timings");
  cmd->add_option("--spec-steps", args->speculative.steps,
                  "speculative decoding with the checkpoint's MTP layer: draft depth (0 = off)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--spec-topk", args->speculative.topk,
                  "draft branching per step (1 = a chain; > 1 = a tree)")
      ->capture_default_str();
  cmd->add_option("--spec-draft-tokens", args->speculative.draft_tokens,
                  "tree nodes verified per step, root included (topk 1: steps + 1)")
      ->capture_default_str();
  return [args] { return RunGenerate(*args); };
});

}  // namespace
}  // namespace spark::tools
