// Helpers shared by the engine/model tests: a self-deleting temporary directory and full-tensor
// reads from a checkpoint.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "tests/common/temp_dir.h"

namespace spark::engine::testing {

using ::spark::testing::TempDir;

inline std::vector<float> ReadFloat(const Checkpoint& ckpt, const std::string& name) {
  Result<TensorView> view = ckpt.Get(name);
  EXPECT_TRUE(view.ok()) << view.status().ToString();
  if (!view.ok()) return {};
  return ToFloatVector(*view);
}

inline std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void WriteFile(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

}  // namespace spark::engine::testing
