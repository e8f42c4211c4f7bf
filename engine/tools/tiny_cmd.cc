// spark-model tiny OUT_DIR [--arch glm4moe|llama|qwen3moe] [--seed N] [--mtp] [--dtype bf16|f32]
// Writes a tiny random checkpoint with a real byte-level BPE tokenizer (engine/model/tiny_model.h).
#include <cstdio>
#include <string>

#include "engine/model/tiny_model.h"
#include "engine/tools/command.h"

namespace spark::tools {
namespace {

struct TinyArgs {
  std::string out_dir;
  std::string arch = "glm4moe";
  uint64_t seed = 0;
  bool mtp = false;
  std::string dtype = "bf16";
};

int RunTiny(const TinyArgs& args) {
  engine::TinyModelOptions options;
  Result<engine::TinyArch> arch = engine::ParseTinyArch(args.arch);
  if (!arch.ok()) {
    std::fprintf(stderr, "spark-model tiny: %s\n", arch.status().message().c_str());
    return 2;
  }
  options.arch = *arch;
  options.seed = args.seed;
  options.mtp = args.mtp;
  if (args.dtype == "bf16") {
    options.dtype = engine::DType::kBF16;
  } else if (args.dtype == "f32") {
    options.dtype = engine::DType::kF32;
  } else {
    std::fprintf(stderr, "spark-model tiny: --dtype %s is not supported; use bf16 or f32\n",
                 args.dtype.c_str());
    return 2;
  }
  Status s = engine::WriteTinyModel(args.out_dir, options);
  if (!s.ok()) {
    std::fprintf(stderr, "spark-model tiny: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("wrote tiny %s model (%s, seed %llu%s) to %s\n", args.arch.c_str(),
              args.dtype.c_str(), static_cast<unsigned long long>(args.seed),
              args.mtp ? ", with MTP layer" : "", args.out_dir.c_str());
  return 0;
}

SPARK_MODEL_COMMAND(kTinyCommand, "tiny", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<TinyArgs>();
  CLI::App* cmd = app.add_subcommand("tiny", "write a tiny random checkpoint for tests");
  cmd->add_option("OUT_DIR", args->out_dir, "output directory")->required();
  cmd->add_option("--arch", args->arch, "glm4moe | llama | qwen3moe")->capture_default_str();
  cmd->add_option("--seed", args->seed, "random seed")->capture_default_str();
  cmd->add_flag("--mtp", args->mtp, "add an MTP (nextn) layer (glm4moe)");
  cmd->add_option("--dtype", args->dtype, "bf16 | f32")->capture_default_str();
  return [args] { return RunTiny(*args); };
});

}  // namespace
}  // namespace spark::tools
