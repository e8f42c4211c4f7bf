// spark-model logits DIR --ids 5,17,... --out FILE [--tp N] [--backend cpu|cuda] [--threads N]
//                        [--dummy] [--seed S]
// Runs the prompt as one chunk and writes the logits of every position: float32, little-endian,
// row-major [tokens x vocab], no header. Prints the shape to stdout.
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "engine/runtime/offline.h"
#include "engine/tools/command.h"
#include "engine/tools/model_engine.h"

namespace spark::tools {
namespace {

struct LogitsArgs {
  std::string model_dir;
  std::string ids;
  std::string out;
  int tp = 1;
  std::string backend = "cpu";
  int threads = 0;
  bool dummy = false;
  uint64_t seed = 0;
};

int Fail(const Status& s) {
  std::fprintf(stderr, "spark-model logits: %s\n", s.ToString().c_str());
  return s.code() == StatusCode::kInvalidArgument || s.code() == StatusCode::kUnimplemented ? 2 : 1;
}

int RunLogits(const LogitsArgs& args) {
  Result<std::vector<int32_t>> ids = engine::ParseTokenIds(args.ids);
  if (!ids.ok()) return Fail(ids.status());
  engine::OfflineEngineOptions options;
  options.backend = args.backend;
  options.tp_size = args.tp;
  options.threads = args.threads;
  options.dummy_weights = args.dummy;
  options.dummy_seed = args.seed;
  auto group = OpenModelEngine(args.model_dir, options);
  if (!group.ok()) return Fail(group.status());
  const int64_t vocab = (*group)->config().vocab_size;
  Result<std::vector<float>> logits = engine::PromptLogits((*group)->backend(), *ids);
  Status shutdown = (*group)->Shutdown();
  if (!logits.ok()) return Fail(logits.status());
  if (!shutdown.ok()) return Fail(shutdown);

  std::ofstream out(args.out, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(logits->data()),
            static_cast<std::streamsize>(logits->size() * sizeof(float)));
  out.close();
  if (!out) {
    return Fail(Unavailable("cannot write '" + args.out +
                            "'; check that its directory exists and is writable"));
  }
  std::printf("wrote logits [%zu x %lld] float32 to %s\n", ids->size(),
              static_cast<long long>(vocab), args.out.c_str());
  return 0;
}

SPARK_MODEL_COMMAND(kLogitsCommand, "logits", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<LogitsArgs>();
  CLI::App* cmd = app.add_subcommand("logits", "write the float32 logits of every prompt position");
  cmd->add_option("DIR", args->model_dir, "model directory (config.json, *.safetensors)")
      ->required();
  cmd->add_option("--ids", args->ids, "prompt token ids, comma-separated (5,17,3)")->required();
  cmd->add_option("--out", args->out, "output file: raw float32 [tokens x vocab]")->required();
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
  cmd->add_option("--seed", args->seed, "seed of --dummy weights")->capture_default_str();
  return [args] { return RunLogits(*args); };
});

}  // namespace
}  // namespace spark::tools
