// TempDir: a fresh, uniquely named directory under std::filesystem::temp_directory_path() for a
// test, removed with everything in it when the TempDir is destroyed. Creation failure (mkdtemp)
// aborts the test binary with a message; removal errors are ignored (the destructor never throws).
//
// Thread safety: a TempDir is immutable after construction; its const accessors may be called from
// any thread. Files inside it are the caller's business.
// Ownership: a TempDir owns its directory tree; it is neither copyable nor movable, so exactly one
// object removes the tree.
#pragma once

#include <stdlib.h>

#include <cerrno>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

#include "common/check.h"

namespace spark::testing {

class TempDir {
 public:
  // Creates <temp dir>/<prefix>-XXXXXX (XXXXXX made unique by mkdtemp).
  explicit TempDir(std::string_view prefix = "spark-test") {
    std::string pattern =
        (std::filesystem::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
    const char* made = ::mkdtemp(pattern.data());
    const int error = errno;
    SPARK_CHECK(made != nullptr) << "mkdtemp failed for " << pattern << ": "
                                 << std::generic_category().message(error);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The directory itself.
  const std::filesystem::path& path() const { return path_; }
  // path() / name.
  std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
  // path() / name as a string.
  std::string File(std::string_view name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

}  // namespace spark::testing
