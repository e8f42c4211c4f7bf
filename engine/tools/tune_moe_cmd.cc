// spark-model tune-moe (--config NAME|PATH | --model DIR) [--tp N] [--format F]
//                      [--smem-cap-bytes N] [--batches 1,2,4,...] [--max-batch-tokens N]
//                      [--out FILE] [--import FILE]... [--no-tune] [--no-verify] [--iters N]
//                      [--device N] [--max-seconds S]
// Offline MoE autotuning (docs/moe-tuning.md): times the fused MoE GEMM tile configs that fit
// the device's shared memory (or --smem-cap-bytes) on the model's expert shapes at tp ranks, per
// power-of-two batch bucket, and merges the best into the cache file (--out, default
// $SPARK_MOE_TUNING_FILE or ./moe_tuning.json; the agent's is <state-dir>/moe_tuning.json).
// --import maps SGLang/vLLM fused_moe config files to the nearest compiled tiles first. Then,
// unless
// --no-verify, it runs the serving path with the heuristic table and the tuned one per bucket,
// prints both GEMM times and checks that the tuned configs are what launched (exit 1 if not).
// Needs the CUDA build and a GPU; the CPU build says so.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/config.h"
#include "engine/runtime/moe_tuning_cache.h"
#include "engine/tools/command.h"
#if defined(SPARK_HAVE_CUDA)
#include <cuda_runtime.h>

#include <chrono>

#include "engine/cuda/device_info.h"
#include "engine/cuda/moe_tuner.h"
#endif

namespace spark::tools {
namespace {

struct TuneMoeArgs {
  std::string config;
  std::string model_dir;
  int tp = 1;
  std::string format;
  int64_t smem_cap_bytes = 0;
  bool fuse_shared_experts = true;  // the shape the backend runs by default
  std::string batches;
  int64_t max_batch_tokens = 2048;
  std::string out;
  std::vector<std::string> imports;
  bool no_tune = false;
  bool no_verify = false;
  int iters = 5;
  int device = 0;
  double max_seconds = 600;
};

int Fail(const Status& s) {
  std::fprintf(stderr, "spark-model tune-moe: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kUnimplemented ? 2 : 1;
}

Result<std::string> ReadText(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFound("cannot read " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// --config NAME (built-in) or PATH (a config.json or a checkpoint directory), or --model DIR.
Result<engine::ModelConfig> ResolveConfig(const TuneMoeArgs& args) {
  if (args.config.empty() == args.model_dir.empty()) {
    return InvalidArgument("give exactly one of --config NAME|PATH or --model DIR");
  }
  if (!args.model_dir.empty()) return engine::LoadModelConfig(args.model_dir);
  Result<engine::ModelConfig> builtin = engine::BuiltinConfig(args.config);
  if (builtin.ok()) return builtin;
  std::error_code ec;
  if (std::filesystem::is_directory(args.config, ec)) return engine::LoadModelConfig(args.config);
  if (std::filesystem::is_regular_file(args.config, ec)) {
    SPARK_ASSIGN_OR_RETURN(std::string text, ReadText(args.config));
    Result<engine::ModelConfig> parsed = engine::ParseModelConfig(text);
    if (!parsed.ok()) return parsed.status().WithContext(args.config);
    return parsed;
  }
  return InvalidArgument("--config " + args.config + " is neither a built-in config (" +
                         builtin.status().message() +
                         ") nor a config.json or checkpoint directory");
}

Result<std::vector<int64_t>> ResolveBatches(const TuneMoeArgs& args) {
  if (args.batches.empty()) return engine::MoeBatchBuckets(args.max_batch_tokens);
  std::vector<int64_t> out;
  std::stringstream ss(args.batches);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    const long long b = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || b < 1 || engine::MoeBatchBucket(b) != b) {
      return InvalidArgument("--batches: '" + item +
                             "' is not a power of two >= 1 (configs are kept per power-of-two "
                             "bucket of tokens)");
    }
    out.push_back(b);
  }
  return out;
}

#if defined(SPARK_HAVE_CUDA)

int RunTuneMoe(const TuneMoeArgs& args) {
  Result<engine::ModelConfig> config = ResolveConfig(args);
  if (!config.ok()) return Fail(config.status());
  Result<cuda::MoeShape> shape = cuda::MoeShapeOfModel(*config, args.tp, args.fuse_shared_experts);
  if (!shape.ok()) return Fail(shape.status());
  cuda::MoeWeightFormat format = cuda::MoeWeightFormatOfModel(*config);
  if (!args.format.empty()) {
    Result<cuda::MoeWeightFormat> f = cuda::ParseMoeWeightFormat(args.format);
    if (!f.ok()) return Fail(f.status());
    format = *f;
  }
  if (Status st = shape->Validate(format); !st.ok()) return Fail(st);
  Result<std::vector<int64_t>> batches = ResolveBatches(args);
  if (!batches.ok()) return Fail(batches.status());
  std::string out = args.out;
  if (out.empty()) {
    const char* env = std::getenv(engine::kMoeTuningFileEnv);
    out = env != nullptr && *env != '\0' ? env : engine::kMoeTuningFileName;
  }

  Result<cuda::DeviceInfo> device = cuda::QueryDevice(args.device);
  if (!device.ok()) {
    return Fail(device.status().WithContext("tune-moe needs a GPU (--device " +
                                            std::to_string(args.device) + ")"));
  }
  if (cudaError_t err = cudaSetDevice(args.device); err != cudaSuccess) {
    return Fail(Internal(std::string("cudaSetDevice: ") + cudaGetErrorString(err)));
  }
  Result<cuda::MoeConfigTable> table = cuda::MoeConfigTable::Create(*device, args.smem_cap_bytes);
  if (!table.ok()) return Fail(table.status());
  const engine::MoeDeviceClass device_class = cuda::MoeDeviceClassOf(*device, *table);
  const engine::MoeGemmShape gemm_shape = cuda::MoeGemmShapeOf(*shape, format);
  std::printf("device: %s (sm_%d%d, %d SMs), shared-memory limit %lld bytes per block\n",
              device->name.c_str(), device->cc_major, device->cc_minor, device->multiprocessors,
              static_cast<long long>(table->smem_limit_bytes()));
  std::printf("model: %s, tp %d: E=%d H=%d Im=%d top-%d, %s; %zu batch buckets %lld..%lld\n",
              config->architecture_name.c_str(), args.tp, shape->num_experts, shape->hidden,
              shape->inter, shape->top_k, gemm_shape.format.c_str(), batches->size(),
              static_cast<long long>(batches->front()), static_cast<long long>(batches->back()));

  std::vector<engine::MoeTuningRecord> records;
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  for (const std::string& path : args.imports) {
    Result<std::string> text = ReadText(path);
    if (!text.ok()) return Fail(text.status());
    Result<std::vector<engine::MoeTuningRecord>> imported = engine::ImportSglangMoeConfig(
        std::filesystem::path(path).filename().string(), *text, device_class, gemm_shape,
        cuda::MoeTileShapesFor(format), *batches, now_ms);
    if (!imported.ok()) return Fail(imported.status());
    std::printf("imported %zu records from %s\n", imported->size(), path.c_str());
    records.insert(records.end(), imported->begin(), imported->end());
  }
  if (!args.no_tune) {
    cuda::MoeTunerOptions options;
    options.batches = *batches;
    options.iters = args.iters;
    options.max_seconds = args.max_seconds;
    options.progress = [](const std::string& line) {
      std::printf("  %s\n", line.c_str());
      std::fflush(stdout);
    };
    Result<cuda::MoeTuneResult> tuned = cuda::TuneMoe(*device, *table, *shape, format, options);
    if (!tuned.ok()) return Fail(tuned.status());
    std::printf("tuned %zu buckets in %.1f s (%lld timed forwards)\n",
                batches->size() - tuned->skipped_batches.size(), tuned->seconds,
                static_cast<long long>(tuned->timed_forwards));
    if (!tuned->skipped_batches.empty()) {
      std::printf("warning: %zu buckets not tuned within --max-seconds %.0f\n",
                  tuned->skipped_batches.size(), args.max_seconds);
    }
    records.insert(records.end(), tuned->records.begin(), tuned->records.end());
  }
  if (records.empty()) {
    return Fail(InvalidArgument("nothing to write: --no-tune without --import"));
  }
  Result<int> changed = engine::UpdateMoeTuningFile(out, records);
  if (!changed.ok()) return Fail(changed.status());
  std::printf("wrote %s: %d records changed\n", out.c_str(), *changed);
  if (args.no_verify) return 0;

  // The serving path with the heuristic table and with the tuned one.
  Result<engine::MoeTuningCache> cache = engine::MoeTuningCache::Load(out);
  if (!cache.ok()) return Fail(cache.status());
  Result<std::vector<cuda::MoeTunedChoice>> choices = cuda::MoeTunedChoicesOf(
      cache->ForShape(device_class, gemm_shape, *batches), device_class, *shape, format, *table);
  if (!choices.ok()) return Fail(choices.status());
  Result<cuda::MoeConfigTable> tuned_table =
      cuda::MoeConfigTable::Create(*device, args.smem_cap_bytes);
  if (!tuned_table.ok()) return Fail(tuned_table.status());
  if (Status st = cuda::ApplyMoeTunedChoices(*choices, *tuned_table); !st.ok()) return Fail(st);
  Result<std::vector<cuda::MoeTableComparison>> compared = cuda::CompareMoeTables(
      *table, *tuned_table, *choices, *shape, format, *batches, std::max(args.iters, 5));
  if (!compared.ok()) return Fail(compared.status());
  std::printf("%-6s %12s %12s %8s  %-8s %s\n", "batch", "heuristic_us", "tuned_us", "speedup",
              "launched", "tuned configs (gate_up | down)");
  bool all_launched = true;
  for (const cuda::MoeTableComparison& c : *compared) {
    all_launched = all_launched && c.launched_expected;
    const std::string configs =
        c.gemv ? "GEMV path " + cuda::MoeGemvChoiceOf(c.tuned_gemv).ToString() + " (whole forward)"
               : c.tuned_gate_up.ToString() + " | " + c.tuned_down.ToString();
    std::printf("%-6lld %12.1f %12.1f %7.2fx  %-8s %s\n", static_cast<long long>(c.batch),
                c.heuristic_gemm_us, c.tuned_gemm_us,
                c.tuned_gemm_us > 0 ? c.heuristic_gemm_us / c.tuned_gemm_us : 0.0,
                c.launched_expected ? "tuned" : "OTHER", configs.c_str());
  }
  if (!all_launched) {
    std::fprintf(stderr,
                 "spark-model tune-moe: the serving path did not launch the tuned configs for "
                 "every bucket (rows marked OTHER)\n");
    return 1;
  }
  std::printf("verified: MoeForward launched the tuned configs for all %zu buckets\n",
              compared->size());
  return 0;
}

#else

int RunTuneMoe(const TuneMoeArgs& args) {
  Result<engine::ModelConfig> config = ResolveConfig(args);
  if (!config.ok()) return Fail(config.status());
  Result<std::vector<int64_t>> batches = ResolveBatches(args);
  if (!batches.ok()) return Fail(batches.status());
  return Fail(Unimplemented(
      "not supported yet in this build: tune-moe times CUDA kernels, so it needs spark built "
      "with the CUDA backend (cmake --preset cuda) and a GPU"));
}

#endif

SPARK_MODEL_COMMAND(kTuneMoeCommand, "tune-moe", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<TuneMoeArgs>();
  CLI::App* cmd = app.add_subcommand(
      "tune-moe", "tune the MoE GEMM tile configs of a model on this GPU (CUDA builds)");
  auto* config = cmd->add_option("--config", args->config,
                                 "built-in config (glm-4.5-air, glm-4.7, ...) or a config.json / "
                                 "checkpoint directory");
  auto* model = cmd->add_option("--model", args->model_dir, "checkpoint directory");
  config->excludes(model);
  model->excludes(config);
  cmd->add_option("--tp", args->tp, "tensor-parallel size (experts' Im is split over tp ranks)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  cmd->add_option("--format", args->format,
                  "MoE weights: bf16, fp8-channel, fp8-block (default: the model's)");
  cmd->add_option("--smem-cap-bytes", args->smem_cap_bytes,
                  "shared memory per block to tune for (0 = the device's; 101376 = GB10)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--fuse-shared-experts,!--no-fuse-shared-experts", args->fuse_shared_experts,
                "tune the shape with the shared expert as one more expert slot, as the CUDA "
                "backend runs it by default (fuse_shared_experts)")
      ->capture_default_str();
  cmd->add_option("--batches", args->batches, "token buckets, powers of two (1,2,4,...)");
  cmd->add_option("--max-batch-tokens", args->max_batch_tokens,
                  "without --batches: buckets 1 .. this (the shard's max_batch_tokens)")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  cmd->add_option("--out", args->out,
                  "cache file to merge into (default $SPARK_MOE_TUNING_FILE or ./moe_tuning.json)");
  cmd->add_option("--import", args->imports,
                  "SGLang/vLLM fused_moe config file (E=..,N=..,device_name=...json); repeatable");
  cmd->add_flag("--no-tune", args->no_tune, "only import, do not time");
  cmd->add_flag("--no-verify", args->no_verify, "skip the heuristic-vs-tuned check");
  cmd->add_option("--iters", args->iters, "timed runs per candidate")
      ->capture_default_str()
      ->check(CLI::Range(1, 100));
  cmd->add_option("--device", args->device, "CUDA device ordinal")->capture_default_str();
  cmd->add_option("--max-seconds", args->max_seconds, "stop tuning new buckets after this long")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  return [args] { return RunTuneMoe(*args); };
});

}  // namespace
}  // namespace spark::tools
