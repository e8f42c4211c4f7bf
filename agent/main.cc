// spark-agent: the per-node daemon (see agent/agent.h). Exit codes: 0 clean shutdown (SIGTERM or
// SIGINT) or a finished subcommand, 2 bad command line, 78 (EX_CONFIG) configuration or key
// problem (systemd should not restart into the same error), 1 any other failure.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "agent/agent.h"
#include "agent/agent_options.h"
#include "agent/keys.h"
#include "agent/node_facts.h"
#include "agent/notifier.h"
#include "common/fd.h"
#include "common/log.h"
#include "common/process.h"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitConfig = 78;

int RunAgent(const spark::agent::AgentOptions& options) {
  using namespace spark;
  using namespace spark::agent;
  InitLogging(options.log_sink, options.log_level);

  std::optional<AgentKeys> keys;
  if (options.insecure) {
    SPARK_LOG(WARN) << "running with --insecure: the agent plane is neither authenticated nor "
                       "encrypted";
  } else {
    Result<AgentKeys> loaded = LoadAgentKeys(ResolveKeysDir(options));
    if (!loaded.ok()) {
      std::cerr << "spark-agent: refusing to start: " << loaded.status().message() << "\n";
      return kExitConfig;
    }
    keys = std::move(*loaded);
  }

  Result<NodeFacts> facts = CollectNodeFacts(options);
  if (!facts.ok()) {
    std::cerr << "spark-agent: " << facts.status().message() << "\n";
    return kExitConfig;
  }

  // SIGTERM/SIGINT arrive through a signalfd polled by the agent loop. Blocked before any thread
  // starts, so every thread inherits the mask; children get a clean mask from the launcher.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0) {
    std::cerr << "spark-agent: cannot block SIGTERM/SIGINT\n";
    return 1;
  }
  UniqueFd signal_fd(signalfd(-1, &signals, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!signal_fd.valid()) {
    std::cerr << "spark-agent: signalfd failed\n";
    return 1;
  }

  RealProcessLauncher launcher;
  SystemdNotifier notifier;
  AgentDependencies dependencies;
  dependencies.launcher = &launcher;
  dependencies.notifier = &notifier;
  Result<std::unique_ptr<Agent>> agent =
      Agent::Create(options, std::move(*facts), std::move(keys), dependencies);
  if (!agent.ok()) {
    std::cerr << "spark-agent: " << agent.status().message() << "\n";
    return kExitConfig;
  }
  (*agent)->AddShutdownFd(signal_fd.get());
  const Status run = (*agent)->Run();
  if (!run.ok()) {
    std::cerr << "spark-agent: " << run.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace spark::agent;
  std::vector<std::string> args(argv, argv + argc);
  spark::Result<AgentCommand> command = ParseAgentCommandLine(args);
  if (!command.ok()) {
    std::cerr << "spark-agent: " << command.status().message() << "\n";
    return command.status().code() == spark::StatusCode::kInvalidArgument &&
                   command.status().message().find("see spark-agent --help") != std::string::npos
               ? kExitUsage
               : kExitConfig;
  }
  switch (command->kind) {
    case AgentCommand::kHelp:
      std::cout << command->help_text;
      return 0;
    case AgentCommand::kKeygen: {
      spark::Result<std::string> key =
          GenerateAgentKeys(command->keygen_dir, command->keygen_force);
      if (!key.ok()) {
        std::cerr << "spark-agent keygen: " << key.status().message() << "\n";
        return 1;
      }
      std::cout << KeygenInstructions(command->keygen_dir, *key);
      return 0;
    }
    case AgentCommand::kRun:
      return RunAgent(command->options);
  }
  return 1;
}
