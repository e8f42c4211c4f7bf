// The tuners' statistics (engine/cuda/tuning_stats.h), host only.
#include "engine/cuda/tuning_stats.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

namespace spark::cuda {
namespace {

TEST(TuningStatsTest, MedianIsTheMiddleRunWhateverTheOrder) {
  EXPECT_EQ(Median({}), 0.0);
  EXPECT_EQ(Median({7.0}), 7.0);
  EXPECT_EQ(Median({9.0, 1.0, 5.0}), 5.0);
  EXPECT_EQ(Median({4.0, 1.0, 3.0, 2.0}), 3.0);         // the upper middle of an even count
  EXPECT_EQ(Median({100.0, 2.0, 2.0, 2.0, 1.0}), 2.0);  // an outlier does not move it
}

TEST(TuningStatsTest, RelativeErrorIsTheL2DistanceOverTheReferenceNorm) {
  const std::vector<float> want = {3.f, 4.f};  // norm 5
  EXPECT_EQ(RelativeError(want, want), 0.0);
  EXPECT_NEAR(RelativeError({3.f, 4.5f}, want), 0.1, 1e-12);
  EXPECT_NEAR(RelativeError({-3.f, -4.f}, want), 2.0, 1e-12);
  EXPECT_TRUE(std::isinf(RelativeError({3.f, std::numeric_limits<float>::quiet_NaN()}, want)));
  EXPECT_TRUE(std::isinf(RelativeError({std::numeric_limits<float>::infinity(), 4.f}, want)));
  // A zero reference: any difference is huge, none is zero.
  EXPECT_EQ(RelativeError({0.f, 0.f}, {0.f, 0.f}), 0.0);
  EXPECT_GT(RelativeError({1e-3f, 0.f}, {0.f, 0.f}), 1e6);
}

}  // namespace
}  // namespace spark::cuda
