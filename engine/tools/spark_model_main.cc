// spark-model: offline tools for checkpoints (tiny, inspect, quantize, logits, generate, ...).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>

#include "engine/tools/command.h"

namespace spark::tools {

std::vector<RegisteredCommand>& Commands() {
  static std::vector<RegisteredCommand> commands;
  return commands;
}

CommandRegistration::CommandRegistration(std::string name, CommandSetup setup) {
  Commands().push_back({std::move(name), std::move(setup)});
}

}  // namespace spark::tools

int main(int argc, char** argv) {
  CLI::App app{"spark-model: build, inspect and run model checkpoints"};
  app.require_subcommand(1);
  auto& commands = spark::tools::Commands();
  std::sort(commands.begin(), commands.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  std::function<int()> run;
  for (auto& c : commands) {
    std::function<int()> fn = c.setup(app);
    app.get_subcommand(c.name)->callback([&run, fn] { run = fn; });
  }
  CLI11_PARSE(app, argc, argv);
  return run ? run() : 2;
}
