// Invariant checks and the one checking macro for system calls.
//
// SPARK_CHECK(cond) << "context";   aborts with file:line and the message when cond is false.
//   For broken invariants only, never for bad input (return a Status for that).
// SPARK_SYSCALL(expr)               evaluates a POSIX call returning -1 on error; on failure it
//   yields a Status naming the statement, file, line and errno text (use with
//   SPARK_RETURN_IF_ERROR or check .ok()).
//
// Thread safety: all macros are safe from any thread.
#pragma once

#include <cerrno>
#include <sstream>
#include <string>

#include "common/status.h"

namespace spark::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* expr);
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

Status SyscallError(const char* expr, const char* file, int line, int err);

}  // namespace spark::internal

#define SPARK_CHECK(cond) \
  if (cond) {             \
  } else                  \
    ::spark::internal::CheckFailure(__FILE__, __LINE__, #cond).stream()

#define SPARK_CHECK_EQ(a, b) SPARK_CHECK((a) == (b)) << (a) << " vs " << (b) << " "
#define SPARK_CHECK_LT(a, b) SPARK_CHECK((a) < (b)) << (a) << " vs " << (b) << " "
#define SPARK_CHECK_LE(a, b) SPARK_CHECK((a) <= (b)) << (a) << " vs " << (b) << " "

// Evaluates to ::spark::Status: OK when `expr` did not return -1.
#define SPARK_SYSCALL(expr)                                                                     \
  ([&]() -> ::spark::Status {                                                                   \
    if ((expr) == -1) return ::spark::internal::SyscallError(#expr, __FILE__, __LINE__, errno); \
    return ::spark::Status();                                                                   \
  }())
