// spark-model inspect DIR [--tp N] [--json]
// Architecture, parameter counts, dtypes, quantisation and per-rank memory of a checkpoint.
#include <cstdio>
#include <string>

#include "engine/model/inspect.h"
#include "engine/tools/command.h"

namespace spark::tools {
namespace {

struct InspectArgs {
  std::string dir;
  int tp = 1;
  bool json = false;
};

int RunInspect(const InspectArgs& args) {
  if (args.tp < 1) {
    std::fprintf(stderr, "spark-model inspect: --tp must be >= 1, got %d\n", args.tp);
    return 2;
  }
  Result<engine::CheckpointSummary> summary = engine::InspectCheckpoint(args.dir, args.tp);
  if (!summary.ok()) {
    std::fprintf(stderr, "spark-model inspect: %s\n", summary.status().ToString().c_str());
    return 1;
  }
  const std::string text =
      args.json ? engine::SummaryJson(*summary) : engine::SummaryText(*summary);
  std::fputs(text.c_str(), stdout);
  return 0;
}

SPARK_MODEL_COMMAND(kInspectCommand, "inspect", [](CLI::App& app) -> std::function<int()> {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand("inspect", "summarise a checkpoint directory");
  cmd->add_option("DIR", args->dir, "checkpoint directory")->required();
  cmd->add_option("--tp", args->tp, "tensor-parallel size for the per-rank memory")
      ->capture_default_str();
  cmd->add_flag("--json", args->json, "print one JSON object");
  return [args] { return RunInspect(*args); };
});

}  // namespace
}  // namespace spark::tools
