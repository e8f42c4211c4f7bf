// spark-model quantize IN_DIR OUT_DIR --scheme fp8-channel|fp8-block
//                      [--format compressed-tensors|deepseek] [--block N]
// Rewrites a BF16/F32 checkpoint as FP8 E4M3 (engine/model/quantize.h).
#include <cstdio>
#include <string>

#include "engine/model/quantize.h"
#include "engine/tools/command.h"

namespace spark::tools {
namespace {

struct QuantizeArgs {
  std::string in_dir;
  std::string out_dir;
  std::string scheme;
  std::string format = "compressed-tensors";
  int block = 128;
};

int RunQuantize(const QuantizeArgs& args) {
  engine::QuantizeOptions options;
  if (args.scheme == "fp8-channel") {
    options.scheme = engine::Fp8Scheme::kPerChannel;
  } else if (args.scheme == "fp8-block") {
    options.scheme = engine::Fp8Scheme::kBlock;
  } else {
    std::fprintf(stderr,
                 "spark-model quantize: --scheme %s is not supported; use fp8-channel or "
                 "fp8-block\n",
                 args.scheme.c_str());
    return 2;
  }
  if (args.format == "compressed-tensors") {
    options.format = engine::Fp8Format::kCompressedTensors;
  } else if (args.format == "deepseek") {
    options.format = engine::Fp8Format::kDeepSeek;
  } else {
    std::fprintf(stderr,
                 "spark-model quantize: --format %s is not supported; use compressed-tensors or "
                 "deepseek\n",
                 args.format.c_str());
    return 2;
  }
  options.block_size = args.block;
  Status s = engine::QuantizeCheckpoint(args.in_dir, args.out_dir, options);
  if (!s.ok()) {
    std::fprintf(stderr, "spark-model quantize: %s\n", s.ToString().c_str());
    return 1;
  }
  std::printf("quantised %s -> %s (%s, %s)\n", args.in_dir.c_str(), args.out_dir.c_str(),
              args.scheme.c_str(), args.format.c_str());
  return 0;
}

SPARK_MODEL_COMMAND(kQuantizeCommand, "quantize", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<QuantizeArgs>();
  CLI::App* cmd = app.add_subcommand("quantize", "quantise a BF16 checkpoint to FP8 (E4M3)");
  cmd->add_option("IN_DIR", args->in_dir, "input checkpoint directory")->required();
  cmd->add_option("OUT_DIR", args->out_dir, "output directory")->required();
  cmd->add_option("--scheme", args->scheme, "fp8-channel | fp8-block")->required();
  cmd->add_option("--format", args->format, "compressed-tensors | deepseek")->capture_default_str();
  cmd->add_option("--block", args->block, "block size for fp8-block")->capture_default_str();
  return [args] { return RunQuantize(*args); };
});

}  // namespace
}  // namespace spark::tools
