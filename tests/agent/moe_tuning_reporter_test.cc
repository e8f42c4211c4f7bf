#include "agent/moe_tuning_reporter.h"

#include <gtest/gtest.h>

#include <fstream>

#include "engine/runtime/moe_tuning_cache.h"
#include "tests/agent/test_util.h"

namespace spark::agent {
namespace {

engine::MoeTuningRecord Record(int64_t batch) {
  engine::MoeTuningRecord r;
  r.device = {"NVIDIA H200", 9, 0, 232448};
  r.format = "bf16";
  r.gemm = "down";
  r.experts = 160;
  r.n = 5120;
  r.k = 384;
  r.top_k = 8;
  r.batch = batch;
  r.config = {16, 64, 128, 4, 3, 2};
  r.measured_us = 12.5;
  r.tuned_unix_ms = 5;
  r.source = "tuner";
  return r;
}

TEST(MoeTuningReporterTest, ReportsOnceAfterEachChangeOrReset) {
  testing::TempDir dir;
  const std::string file = dir.File("moe_tuning.json");
  MoeTuningReporter reporter(file);
  EXPECT_FALSE(reporter.Poll("n1").has_value());  // no file yet

  ASSERT_TRUE(engine::UpdateMoeTuningFile(file, {Record(1)}).ok());
  std::optional<spark::v1::MoeTuningReport> report = reporter.Poll("n1");
  ASSERT_TRUE(report.has_value());
  EXPECT_EQ(report->node_name(), "n1");
  ASSERT_EQ(report->records_size(), 1);
  Result<engine::MoeTuningRecord> r = engine::MoeTuningRecordFromProto(report->records(0));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, Record(1));
  EXPECT_FALSE(reporter.Poll("n1").has_value());  // unchanged

  reporter.Reset();  // a new registration
  ASSERT_TRUE(reporter.Poll("n1").has_value());

  ASSERT_TRUE(engine::UpdateMoeTuningFile(file, {Record(2)}).ok());
  report = reporter.Poll("n1");
  ASSERT_TRUE(report.has_value());
  EXPECT_EQ(report->records_size(), 2);

  // A broken file is not reported (and not retried until it changes).
  std::ofstream(file) << "{\"format\": \"spark-moe-tuning\", \"version\": 7, \"records\": []}";
  EXPECT_FALSE(reporter.Poll("n1").has_value());
  EXPECT_FALSE(reporter.Poll("n1").has_value());
}

}  // namespace
}  // namespace spark::agent
