#include "common/check.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace spark::internal {

CheckFailure::CheckFailure(const char* file, int line, const char* expr) {
  stream_ << file << ":" << line << ": check failed: " << expr << " ";
}

CheckFailure::~CheckFailure() {
  std::fprintf(stderr, "FATAL: %s\n", stream_.str().c_str());
  std::fflush(stderr);
  std::abort();
}

Status SyscallError(const char* expr, const char* file, int line, int err) {
  std::string m = std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  std::strerror(err);
  return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kInternal, std::move(m));
}

}  // namespace spark::internal
