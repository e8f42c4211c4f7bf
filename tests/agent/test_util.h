// Small helpers shared by the agent tests: TempDir (from tests/common/temp_dir.h), files and
// executable scripts, a tiny model directory, and process liveness from /proc.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "agent/shard_files.h"
#include "tests/common/temp_dir.h"

namespace spark::agent::testing {

// A fake spark-shard. It logs its arguments and environment, then behaves by the deployment named
// in its assignment path ($2): exit3 (30 log lines, exit 3), exit0, ignoreterm (ignores SIGTERM),
// ready (copies ready.status from its own directory to $SPARK_SHARD_STATUS_FILE, then sleeps),
// anything else sleeps until SIGTERM and exits 0. "ready" in the log: SIGTERM is handled.
inline constexpr char kFakeShardScript[] = R"(echo "fake-shard args: $*"
echo "env NCCL_NVLS_ENABLE=$NCCL_NVLS_ENABLE NCCL_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME"
echo "env SPARK_SHARD_STATUS_FILE=$SPARK_SHARD_STATUS_FILE"
echo "env SPARK_MOE_TUNING_FILE=$SPARK_MOE_TUNING_FILE"
echo "env NOTIFY_SOCKET=${NOTIFY_SOCKET:-unset}"
case "$2" in
  */exit3-*) i=1; while [ $i -le 30 ]; do echo "log line $i"; i=$((i+1)); done; exit 3 ;;
  */exit0-*) exit 0 ;;
  */ready-*) cp "$(dirname "$0")/ready.status" "$SPARK_SHARD_STATUS_FILE"
             trap 'exit 0' TERM; sleep 1000 & wait ;;
  */ignoreterm-*) trap '' TERM; echo ready; while :; do sleep 0.05; done ;;
  *) trap 'exit 0' TERM; echo ready; sleep 1000 & wait ;;
esac
)";

using ::spark::testing::TempDir;

inline void WriteFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << content;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

inline std::string WriteScript(const std::string& path, const std::string& body) {
  WriteFile(path, "#!/bin/sh\n" + body);
  ::chmod(path.c_str(), 0755);
  return path;
}

// A directory that passes the model_path preflight, with tokenizer files.
inline std::string MakeModelDir(const std::string& path) {
  WriteFile(path + "/config.json", "{\"model_type\": \"glm4_moe\"}\n");
  WriteFile(path + "/tokenizer.json", "{\"version\": \"1.0\"}\n");
  WriteFile(path + "/tokenizer_config.json", "{}\n");
  WriteFile(path + "/model.safetensors", std::string(1024, '\0'));
  return path;
}

// True while /proc/<pid> exists and is not a zombie.
inline bool ProcessAlive(pid_t pid) {
  Result<char> state = ProcessState(pid);
  return state.ok() && *state != 'Z' && *state != 'X';
}

inline bool WaitUntil(const std::function<bool()>& condition, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return condition();
}

}  // namespace spark::agent::testing
