// spark-shard --assignment FILE --controller tcp://HOST:PORT [--node NAME]
//             (--keys DIR | --insecure) [--advertise-host HOST] [--step-timeout-ms N]
//             [--log-level LEVEL] [--log-sink auto|stderr|journald]
// One tensor-parallel rank of a deployment, started by spark-agent. See engine/shard/shard.h for
// what it does and the exit codes.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "agent/shard_status_file.h"
#include "common/log.h"
#include "engine/shard/shard.h"

int main(int argc, char** argv) {
  spark::shard::ShardArgs args;
  std::string assignment;
  std::string keys;
  std::string log_level = "info";
  std::string log_sink = "auto";
  char host[256] = {};
  if (gethostname(host, sizeof(host) - 1) == 0) args.node_name = host;

  CLI::App app{
      "spark-shard: one tensor-parallel rank of a spark deployment (started by spark-agent)"};
  app.add_option("--assignment", assignment, "serialized spark.v1.ShardAssignment file")
      ->required();
  app.add_option("--controller", args.controller_endpoint,
                 "controller agent-plane endpoint, tcp://HOST:PORT")
      ->required();
  app.add_option("--node", args.node_name, "node name (default: hostname)");
  auto* keys_opt = app.add_option("--keys", keys, "directory with agent.key and controller.pub");
  auto* insecure = app.add_flag("--insecure", args.insecure, "no CURVE (whole cluster insecure)");
  keys_opt->excludes(insecure);
  insecure->excludes(keys_opt);
  app.add_option("--advertise-host", args.advertise_host,
                 "address peers and the controller reach this shard on (default: the local "
                 "address toward the controller)");
  app.add_option("--step-timeout-ms", args.step_timeout_ms,
                 "watchdog deadline of one step or collective (default: engine option "
                 "step_timeout_ms or 30000)")
      ->check(CLI::Range(int64_t{100}, int64_t{86400000}));
  app.add_option("--log-level", log_level, "debug, info, warn or error")->capture_default_str();
  app.add_option("--log-sink", log_sink, "auto, stderr or journald")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : spark::shard::kExitUsage;
  }
  if (!args.insecure && keys.empty()) {
    std::fprintf(stderr,
                 "spark-shard: pass --keys DIR (agent.key and controller.pub, as `spark-agent "
                 "keygen` writes them) or --insecure\n");
    return spark::shard::kExitUsage;
  }
  args.assignment_path = assignment;
  args.keys_dir = keys;
  if (const char* status_file = std::getenv(spark::agent::kShardStatusFileEnv);
      status_file != nullptr) {
    args.status_file = status_file;
  }

  auto level = spark::ParseLogLevel(log_level);
  auto sink = spark::ParseLogSinkKind(log_sink);
  if (!level.ok() || !sink.ok()) {
    std::fprintf(stderr, "spark-shard: %s\n",
                 (!level.ok() ? level.status() : sink.status()).message().c_str());
    return spark::shard::kExitUsage;
  }
  spark::InitLogging(*sink, *level);
  return spark::shard::RunShard(args);
}
