// How the L2 prefetch cuts ranges into chunks (engine/cuda/l2_prefetch_plan.h), host only: the
// same arithmetic the kernel runs, checked byte by byte.
#include "engine/cuda/l2_prefetch_plan.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace spark::cuda {
namespace {

// Marks every byte the plan's chunks cover (as the kernel walks them: chunk c of every c).
std::vector<int> Covered(const L2PrefetchPlan& plan, const uint8_t* base, size_t size) {
  std::vector<int> hits(size, 0);
  for (int64_t c = 0; c < plan.chunks(); ++c) {
    const L2Chunk chunk = L2PrefetchChunkAt(plan, c);
    EXPECT_GT(chunk.bytes, 0);
    EXPECT_LE(chunk.bytes, kL2PrefetchChunkBytes);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(chunk.data) % 16, 0u);
    EXPECT_EQ(chunk.bytes % 16, 0);
    for (int64_t b = 0; b < chunk.bytes; ++b) ++hits[static_cast<size_t>(chunk.data - base + b)];
  }
  return hits;
}

TEST(L2PrefetchPlanTest, EveryWhole16ByteUnitOfEveryRangeIsRequestedOnce) {
  alignas(16) static uint8_t memory[3 * kL2PrefetchChunkBytes + 4096];
  const uint8_t* base = memory;
  for (int64_t start : {0, 1, 15, 16, 17, 4095}) {
    for (int64_t bytes :
         {int64_t{0}, int64_t{15}, int64_t{16}, int64_t{31}, int64_t{33}, kL2PrefetchChunkBytes,
          kL2PrefetchChunkBytes + 16, 2 * kL2PrefetchChunkBytes + 7}) {
      L2Range r{base + start, bytes};
      L2PrefetchPlan plan;
      ASSERT_TRUE(PlanL2Prefetch(&r, 1, &plan));
      const int64_t first = (start + 15) / 16 * 16, last = (start + bytes) / 16 * 16;
      const std::vector<int> hits = Covered(plan, base, sizeof(memory));
      for (int64_t i = 0; i < static_cast<int64_t>(sizeof(memory)); ++i) {
        ASSERT_EQ(hits[static_cast<size_t>(i)], i >= first && i < last ? 1 : 0)
            << "start " << start << " bytes " << bytes << " byte " << i;
      }
      EXPECT_EQ(plan.count, last > first ? 1 : 0);
    }
  }
}

TEST(L2PrefetchPlanTest, RangesAreNumberedInOrderAndEmptyOnesDropped) {
  alignas(16) static uint8_t memory[4 * kL2PrefetchChunkBytes];
  const uint8_t* base = memory;
  const L2Range ranges[] = {{base, kL2PrefetchChunkBytes + 32},
                            {nullptr, 4096},
                            {base + 100, 8},  // no whole 16-byte unit
                            {base + 2 * kL2PrefetchChunkBytes, 2 * kL2PrefetchChunkBytes}};
  L2PrefetchPlan plan;
  ASSERT_TRUE(PlanL2Prefetch(ranges, 4, &plan));
  ASSERT_EQ(plan.count, 2);
  EXPECT_EQ(plan.first_chunk[1], 2);  // a whole chunk and 32 bytes
  EXPECT_EQ(plan.chunks(), 4);
  EXPECT_EQ(L2PrefetchChunkAt(plan, 1).data, base + kL2PrefetchChunkBytes);
  EXPECT_EQ(L2PrefetchChunkAt(plan, 1).bytes, 32);
  EXPECT_EQ(L2PrefetchChunkAt(plan, 2).data, base + 2 * kL2PrefetchChunkBytes);
  EXPECT_EQ(L2PrefetchChunkAt(plan, 3).bytes, kL2PrefetchChunkBytes);
  const std::vector<int> hits = Covered(plan, base, sizeof(memory));
  int64_t covered = 0;
  for (int h : hits) covered += h;
  EXPECT_EQ(covered, kL2PrefetchChunkBytes + 32 + 2 * kL2PrefetchChunkBytes);
}

TEST(L2PrefetchPlanTest, BadArgumentsAreRefused) {
  alignas(16) static uint8_t memory[64];
  L2PrefetchPlan plan;
  const L2Range negative{memory, -16};
  EXPECT_FALSE(PlanL2Prefetch(&negative, 1, &plan));
  EXPECT_EQ(plan.count, 0);
  EXPECT_FALSE(PlanL2Prefetch(nullptr, 1, &plan));
  EXPECT_FALSE(PlanL2Prefetch(&negative, -1, &plan));
  const L2Range five[5] = {};
  EXPECT_FALSE(PlanL2Prefetch(five, 5, &plan));
  EXPECT_TRUE(PlanL2Prefetch(five, 4, &plan));  // four empty ranges: nothing to do
  EXPECT_EQ(plan.chunks(), 0);
  EXPECT_TRUE(PlanL2Prefetch(nullptr, 0, &plan));
}

}  // namespace
}  // namespace spark::cuda
