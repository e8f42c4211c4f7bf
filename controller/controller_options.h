// spark-controller's command line and config file.
//
//   spark-controller [--config FILE] [--http-listen HOST:PORT] [--agent-listen tcp://HOST:PORT]
//                    [--db PATH] [--insecure | --keys DIR] [--heartbeat-ms N] [...]
//   spark-controller keygen --keys DIR [--force]
//
// The config file (TOML) holds the same settings; flags override it. Keys: http_listen,
// agent_listen, db, insecure, keys, api_token, api_keys_file, admin_key_file, heartbeat_ms,
// missed_heartbeats, rendezvous_timeout_ms, load_timeout_ms, first_generation_timeout_ms,
// spawn_timeout_ms, stop_grace_ms, adopt_timeout_ms, backoff_initial_ms, backoff_max_ms,
// restart_budget, restart_window_s, shard_controller_address, port_file, log.level, log.sink, and
// the inference API's openai.max_body_bytes, openai.max_messages, openai.max_tokens_limit,
// openai.default_max_tokens, openai.max_n, openai.model_wait_ms, openai.worker_threads.
//
// Thread safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "common/config.h"
#include "common/log.h"
#include "common/status.h"
#include "controller/controller.h"
#include "controller/openai_api.h"

namespace spark::controller {

struct DaemonOptions {
  ControllerOptions controller;
  std::string http_listen = "0.0.0.0:8080";
  std::string db_path = "/var/lib/spark/controller.db";
  std::string api_token;       // legacy: one key accepted as admin and inference key; empty: none
  std::string api_keys_file;   // inference keys (/v1/*, /metrics); empty: open
  std::string admin_key_file;  // admin keys (/api/v1/*); empty: open
  OpenAiOptions openai;
  // When set, the bound ports are written there as JSON once listening (tests, scripts).
  std::string port_file;
  LogLevel log_level = LogLevel::kInfo;
  LogSinkKind log_sink = LogSinkKind::kAuto;
};

struct DaemonCommand {
  enum Kind { kRun, kHelp, kKeygen };
  Kind kind = kRun;
  DaemonOptions options;
  std::string help_text;
  std::string keygen_dir;
  bool keygen_force = false;
};

const ConfigSchema& ControllerConfigSchema();

// args[0] is the program name. InvalidArgument says what is wrong and how to fix it.
Result<DaemonCommand> ParseControllerCommandLine(const std::vector<std::string>& args);

// "HOST:PORT" (IPv6 as "[::1]:PORT") split into host and port.
Result<std::pair<std::string, uint16_t>> ParseHostPort(const std::string& text);

}  // namespace spark::controller
