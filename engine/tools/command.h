// Subcommand registry of the spark-model tool. Each *_cmd.cc file registers its subcommand
// with a static SPARK_MODEL_COMMAND(...) object; main() builds the CLI11 app from the registry.
//
// Thread safety: registration happens during static initialisation only.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace spark::tools {

// Adds the subcommand to `app`; returns the function to run when it is chosen (exit code).
using CommandSetup = std::function<std::function<int()>(CLI::App& app)>;

struct CommandRegistration {
  CommandRegistration(std::string name, CommandSetup setup);
};

struct RegisteredCommand {
  std::string name;
  CommandSetup setup;
};
std::vector<RegisteredCommand>& Commands();

}  // namespace spark::tools

#define SPARK_MODEL_COMMAND(var, name, setup) \
  static ::spark::tools::CommandRegistration var(name, setup)
