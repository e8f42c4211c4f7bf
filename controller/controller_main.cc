// spark-controller: the control-plane daemon (controller/controller.h, controller/rest_api.h).
// Exit codes: 0 clean shutdown (SIGTERM or SIGINT) or a finished subcommand, 2 bad command line,
// 78 (EX_CONFIG) configuration, key or database problem (systemd should not restart into the
// same error), 1 any other failure.
#include <signal.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/clock.h"
#include "common/log.h"
#include "common/zmq.h"
#include "controller/api_keys.h"
#include "controller/controller.h"
#include "controller/controller_options.h"
#include "controller/http/server.h"
#include "controller/openai_api.h"
#include "controller/rest_api.h"
#include "controller/store/store.h"

namespace {

constexpr int kExitUsage = 2;
constexpr int kExitConfig = 78;

int Keygen(const std::string& dir, bool force) {
  namespace fs = std::filesystem;
  const fs::path secret = fs::path(dir) / "controller.key";
  const fs::path public_key = fs::path(dir) / "controller.pub";
  std::error_code ec;
  if (fs::exists(secret, ec) && !force) {
    std::cerr << "spark-controller: " << secret.string()
              << " exists; pass --force to replace it (agents then need the new controller.pub)\n";
    return kExitConfig;
  }
  fs::create_directories(fs::path(dir) / "trusted", ec);
  spark::Result<spark::CurveKeyPair> keys = spark::GenerateCurveKeyPair();
  if (!keys.ok()) {
    std::cerr << "spark-controller: " << keys.status().ToString() << "\n";
    return 1;
  }
  spark::Status st = spark::WriteCurveSecretKeyFile(secret, *keys);
  if (st.ok()) st = spark::WriteCurvePublicKeyFile(public_key, keys->public_key);
  if (!st.ok()) {
    std::cerr << "spark-controller: " << st.ToString() << "\n";
    return 1;
  }
  std::cout << "wrote " << secret.string() << " and " << public_key.string()
            << ".\nCopy controller.pub to every agent's key directory, and each agent's agent.pub "
               "to "
            << (fs::path(dir) / "trusted").string() << "/<node>.pub\n";
  return 0;
}

int Run(const spark::controller::DaemonOptions& options) {
  using namespace spark;
  using namespace spark::controller;
  InitLogging(options.log_sink, options.log_level);
  if (options.controller.insecure) {
    SPARK_LOG(WARN) << "running with --insecure: the agent plane is neither authenticated nor "
                       "encrypted";
  }

  // SIGTERM/SIGINT are taken with sigtimedwait; blocked before any thread starts so that every
  // thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  if (pthread_sigmask(SIG_BLOCK, &signals, nullptr) != 0) {
    std::cerr << "spark-controller: cannot block SIGTERM/SIGINT\n";
    return 1;
  }

  store::StoreOptions store_options;
  store_options.path = options.db_path;
  Result<std::unique_ptr<store::Store>> store = store::Store::Open(store_options, RealClock::Get());
  if (!store.ok()) {
    std::cerr << "spark-controller: " << store.status().message() << "\n";
    return kExitConfig;
  }

  ApiAuth auth;
  std::vector<std::string> legacy_keys;
  if (!options.api_token.empty()) legacy_keys.push_back(options.api_token);
  auto load_keys = [&](const std::string& path, ApiKeySet* out) -> bool {
    std::vector<std::string> keys = legacy_keys;
    if (!path.empty()) {
      Result<ApiKeySet> loaded = ApiKeySet::LoadFile(path);
      if (!loaded.ok()) {
        std::cerr << "spark-controller: " << loaded.status().message() << "\n";
        return false;
      }
      *out = std::move(*loaded);
      if (!legacy_keys.empty()) SPARK_LOG(WARN) << "--api-token is ignored next to a key file";
      return true;
    }
    *out = ApiKeySet::FromKeys(keys);
    return true;
  };
  if (!load_keys(options.api_keys_file, &auth.inference_keys) ||
      !load_keys(options.admin_key_file, &auth.admin_keys)) {
    return kExitConfig;
  }
  if (auth.inference_keys.empty()) {
    SPARK_LOG(WARN) << "no --api-keys-file: the inference API (/v1/*) is open to anyone who can "
                       "reach it";
  }
  if (auth.admin_keys.empty()) {
    SPARK_LOG(WARN) << "no --admin-key-file: the lifecycle API (/api/v1/*) is open to anyone who "
                       "can reach it";
  }

  auto controller = std::make_unique<Controller>(options.controller, **store, RealClock::Get());
  if (Status st = controller->Start(); !st.ok()) {
    std::cerr << "spark-controller: " << st.message() << "\n";
    return kExitConfig;
  }

  Result<std::pair<std::string, uint16_t>> http_address = ParseHostPort(options.http_listen);
  http::HttpServerOptions server_options;
  server_options.host = http_address->first;
  server_options.port = http_address->second;
  server_options.io_threads = 4;
  server_options.max_body_bytes =
      std::max<size_t>(server_options.max_body_bytes, options.openai.limits.max_body_bytes);
  // Declared before the server: destroyed after it stops, and after the controller is stopped.
  OpenAiService openai(*controller, options.openai, auth);
  http::HttpServer server(server_options);
  Status routes = AddRestRoutes(server, *controller, **store, auth);
  if (routes.ok()) routes = openai.AddRoutes(server);
  if (Status st = routes; !st.ok()) {
    std::cerr << "spark-controller: " << st.ToString() << "\n";
    return 1;
  }
  if (Status st = server.Start(); !st.ok()) {
    std::cerr << "spark-controller: " << st.message() << "\n";
    return kExitConfig;
  }
  SPARK_LOG(INFO)
          .With("http_port", server.port())
          .With("agent_endpoint", controller->agent_endpoint())
      << "spark-controller is serving";
  if (!options.port_file.empty()) {
    const std::string tmp = options.port_file + ".tmp";
    {
      std::ofstream out(tmp);
      out << nlohmann::json{{"http_port", server.port()},
                            {"agent_endpoint", controller->agent_endpoint()},
                            {"pid", getpid()}}
                 .dump()
          << "\n";
    }
    std::filesystem::rename(tmp, options.port_file);
  }
  sd_notify(0, ("READY=1\nSTATUS=serving on port " + std::to_string(server.port())).c_str());

  uint64_t watchdog_usec = 0;
  const bool watchdog = sd_watchdog_enabled(0, &watchdog_usec) > 0;
  while (true) {
    timespec wait{0, 500 * 1000 * 1000};
    const int signal = sigtimedwait(&signals, nullptr, &wait);
    if (signal == SIGTERM || signal == SIGINT) {
      SPARK_LOG(INFO).With("signal", signal) << "shutting down";
      break;
    }
    if (watchdog && controller->Responsive(std::chrono::seconds(5))) sd_notify(0, "WATCHDOG=1");
  }
  sd_notify(0, "STOPPING=1");
  server.Stop();
  controller->Stop();
  controller.reset();
  store->reset();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv, argv + argc);
  spark::Result<spark::controller::DaemonCommand> command =
      spark::controller::ParseControllerCommandLine(args);
  if (!command.ok()) {
    std::cerr << "spark-controller: " << command.status().message() << "\n";
    return kExitUsage;
  }
  switch (command->kind) {
    case spark::controller::DaemonCommand::kHelp:
      std::cout << command->help_text;
      return 0;
    case spark::controller::DaemonCommand::kKeygen:
      return Keygen(command->keygen_dir, command->keygen_force);
    case spark::controller::DaemonCommand::kRun:
      return Run(command->options);
  }
  return 1;
}
