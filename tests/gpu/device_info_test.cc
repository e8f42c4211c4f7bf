#include "engine/cuda/device_info.h"

#include <gtest/gtest.h>

namespace spark::cuda {
namespace {

TEST(DeviceInfoTest, ReportsEveryVisibleDevice) {
  auto devices = QueryAllDevices();
  ASSERT_TRUE(devices.ok()) << devices.status().ToString();
  ASSERT_FALSE(devices->empty());
  for (const DeviceInfo& d : *devices) {
    EXPECT_FALSE(d.name.empty());
    EXPECT_GE(d.cc_major, 9) << d.name;
    EXPECT_GT(d.total_memory_bytes, int64_t{1} << 30);
    EXPECT_GT(d.free_memory_bytes, 0);
    EXPECT_LE(d.free_memory_bytes, d.total_memory_bytes);
    EXPECT_GE(d.smem_optin_per_block_bytes, 101376);
    EXPECT_EQ(d.EffectiveSmemPerBlock(101376), 101376);
    EXPECT_EQ(d.EffectiveSmemPerBlock(0), d.smem_optin_per_block_bytes);
  }
}

}  // namespace
}  // namespace spark::cuda
