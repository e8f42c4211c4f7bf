// Runs the built spark-model binary (SPARK_BINARY_DIR/engine/tools/spark-model) for the tests of
// its commands: the command line is `spark-model ARGS`, the result its exit code and its stdout
// and stderr together.
//
// Thread safety: reentrant (one child process per call). Ownership: none.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace spark::engine::testing {

inline const char* const kSparkModelBinary = SPARK_BINARY_DIR "/engine/tools/spark-model";

struct RunResult {
  int exit_code = -1;  // -1 when the process could not start or did not exit normally
  std::string output;  // stdout and stderr
};

inline RunResult RunTool(const std::string& args) {
  RunResult r;
  const std::string cmd = std::string(kSparkModelBinary) + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace spark::engine::testing
