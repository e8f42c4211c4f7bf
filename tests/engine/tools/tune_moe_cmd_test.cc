// spark-model tune-moe on a build without CUDA: the command exists, checks its arguments and
// says that it needs the CUDA build and a GPU (the GPU run is in the GPU checks).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "tests/engine/tools/run_tool.h"

namespace spark::engine {
namespace {

using ::testing::HasSubstr;

const char* const kBinary = testing::kSparkModelBinary;
using testing::RunResult;
using testing::RunTool;

TEST(TuneMoeCommandTest, CpuBuildChecksArgumentsThenSaysItNeedsCuda) {
#if defined(SPARK_HAVE_CUDA)
  GTEST_SKIP() << "CUDA build: tune-moe runs on the GPU (GPU checks)";
#endif
  ASSERT_TRUE(std::filesystem::exists(kBinary)) << kBinary << " is not built";
  RunResult r = RunTool("tune-moe --config glm-4.5-air --tp 1 --format fp8-channel");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("needs spark built with the CUDA backend (cmake --preset cuda)"));

  r = RunTool("tune-moe --config glm-4.7 --batches 1,2,24");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("'24' is not a power of two"));

  r = RunTool("tune-moe --config glm-9");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("known: glm-4.7, glm-4.6, glm-4.5, glm-4.5-air"));

  r = RunTool("tune-moe");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_THAT(r.output, HasSubstr("give exactly one of --config NAME|PATH or --model DIR"));

  r = RunTool("tune-moe --config glm-4.5-air --model /tmp");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_THAT(r.output, HasSubstr("excludes"));

  r = RunTool("--help");
  EXPECT_THAT(r.output, HasSubstr("tune-moe"));
}

}  // namespace
}  // namespace spark::engine
