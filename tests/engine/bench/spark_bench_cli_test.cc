// Runs the spark-bench binary: `engine` on the tiny checkpoint (table and JSON output) and its
// usage errors.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <string>

namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;  // stdout and stderr
};

RunResult SparkBench(const std::string& args) {
  const std::string cmd = std::string(SPARK_BENCH_BIN) + " " + args + " 2>&1";
  RunResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n = 0;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

const std::string kModel =
    (std::filesystem::path(SPARK_SOURCE_DIR) / "tests" / "data" / "models" / "glm_base").string();

TEST(SparkBenchCliTest, EngineOnTheTinyCheckpoint) {
  RunResult r = SparkBench("engine --model " + kModel +
                           " --batch-sizes 1,2 --input-len 8 --output-len 3 --threads 1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  EXPECT_NE(r.out.find("3 layers, bf16"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("roofline ms"), std::string::npos) << r.out;
  RunResult j = SparkBench("engine --model " + kModel +
                           " --batch-sizes 2 --input-len 8 --output-len 3 --threads 1 --json "
                           "--peak-bandwidth-gbs 5");
  ASSERT_EQ(j.exit_code, 0) << j.out;
  EXPECT_NE(j.out.find("\"batch\":2,"), std::string::npos) << j.out;
  EXPECT_NE(j.out.find("\"peak_gbs\":5.0"), std::string::npos) << j.out;
}

TEST(SparkBenchCliTest, UsageErrorsNameTheFix) {
  RunResult no_model = SparkBench("engine");
  EXPECT_EQ(no_model.exit_code, 1);
  EXPECT_NE(no_model.out.find("--model"), std::string::npos) << no_model.out;
  RunResult bad_sizes = SparkBench("engine --model " + kModel + " --batch-sizes 1,x");
  EXPECT_EQ(bad_sizes.exit_code, 2);
  EXPECT_NE(bad_sizes.out.find("--batch-sizes"), std::string::npos) << bad_sizes.out;
  RunResult no_sub = SparkBench("");
  EXPECT_NE(no_sub.exit_code, 0);
}

}  // namespace
