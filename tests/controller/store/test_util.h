// Helpers shared by the store tests: a temporary directory removed at the end of the test, and a
// ManualClock's wall time in unix milliseconds.
#pragma once

#include <chrono>
#include <string>

#include <gtest/gtest.h>

#include "common/check.h"
#include "common/clock.h"
#include "common/status.h"
#include "tests/common/temp_dir.h"

// Fails the test unless `expr` (a Status or a Result) is OK.
#define STORE_ASSERT_OK(expr)                                                              \
  do {                                                                                     \
    const auto& store_status_ = (expr);                                                    \
    ASSERT_TRUE(store_status_.ok()) << ::spark::store::testing::StatusText(store_status_); \
  } while (0)

// Declares/assigns `lhs` from the Result `expr`, failing the test on an error.
#define STORE_ASSERT_OK_AND_ASSIGN(lhs, expr) \
  STORE_ASSERT_OK_AND_ASSIGN_IMPL_(SPARK_STATUS_CONCAT_(store_result_, __LINE__), lhs, expr)
#define STORE_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                     \
  ASSERT_TRUE(tmp.ok()) << tmp.status().ToString();      \
  lhs = std::move(tmp).value()

namespace spark::store::testing {

inline std::string StatusText(const Status& status) { return status.ToString(); }
template <typename T>
std::string StatusText(const Result<T>& result) {
  return result.status().ToString();
}

using ::spark::testing::TempDir;

inline int64_t WallMs(const Clock& clock) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(clock.WallNow().time_since_epoch())
      .count();
}

}  // namespace spark::store::testing
