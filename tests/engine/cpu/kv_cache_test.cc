#include "engine/cpu/kv_cache.h"

#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

namespace spark::engine {
namespace {

KvCacheShape Shape() {
  KvCacheShape s;
  s.num_layers = 2;
  s.kv_heads = 2;
  s.head_dim = 4;
  s.block_tokens = 4;
  return s;
}

// One block = 2 layers * (K + V) * 4 tokens * 2 heads * 4 dims * 4 bytes = 512 bytes.
constexpr int64_t kBlockBytes = 512;

std::unique_ptr<CpuKvCache> MakeCache(int64_t blocks) {
  auto cache = CpuKvCache::Create(Shape(), blocks * kBlockBytes + kBlockBytes / 2);
  EXPECT_TRUE(cache.ok()) << cache.status().ToString();
  return std::move(cache).value();
}

// A value unique to (layer, seq, pos, element) to detect any aliasing between slots.
float Tag(int layer, uint64_t seq, int64_t pos, int i, bool value) {
  return static_cast<float>(layer * 1000000 + seq * 10000 + pos * 20 + i + (value ? 10 : 0));
}

void Fill(CpuKvCache* cache, uint64_t seq, int64_t from, int64_t to) {
  for (int l = 0; l < 2; ++l) {
    for (int64_t p = from; p < to; ++p) {
      float* k = cache->KeySlot(l, seq, p);
      float* v = cache->ValueSlot(l, seq, p);
      for (int i = 0; i < 8; ++i) {
        k[i] = Tag(l, seq, p, i, false);
        v[i] = Tag(l, seq, p, i, true);
      }
    }
  }
}

// Checks the Fill tags of positions [0, length); the sequence caches `cached` tokens (-1: length).
void ExpectContents(CpuKvCache* cache, uint64_t seq, int64_t length, int64_t cached = -1) {
  for (int l = 0; l < 2; ++l) {
    std::vector<const float*> kb, vb;
    PagedKvView view = cache->View(l, seq, &kb, &vb);
    ASSERT_EQ(static_cast<int64_t>(kb.size()), ((cached < 0 ? length : cached) + 3) / 4);
    for (int64_t p = 0; p < length; ++p) {
      const float* k = view.k_blocks[p / 4] + (p % 4) * 8;
      const float* v = view.v_blocks[p / 4] + (p % 4) * 8;
      for (int i = 0; i < 8; ++i) {
        ASSERT_EQ(k[i], Tag(l, seq, p, i, false)) << "seq " << seq << " pos " << p;
        ASSERT_EQ(v[i], Tag(l, seq, p, i, true)) << "seq " << seq << " pos " << p;
      }
    }
  }
}

TEST(CpuKvCacheTest, CapacityFromByteBudget) {
  auto cache = MakeCache(10);
  EXPECT_EQ(cache->block_bytes(), kBlockBytes);
  EXPECT_EQ(cache->num_blocks(), 10);
  EXPECT_EQ(cache->CapacityTokens(), 40);
  EXPECT_EQ(cache->FreeTokens(), 40);
}

TEST(CpuKvCacheTest, RejectsTooSmallBudgetAndBadShape) {
  auto small = CpuKvCache::Create(Shape(), kBlockBytes - 1);
  ASSERT_FALSE(small.ok());
  EXPECT_EQ(small.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(small.status().message().find("512"), std::string::npos) << small.status().message();
  KvCacheShape bad = Shape();
  bad.block_tokens = 0;
  EXPECT_FALSE(CpuKvCache::Create(bad, 1 << 20).ok());
}

TEST(CpuKvCacheTest, GrowAllocatesWholeBlocks) {
  auto cache = MakeCache(10);
  EXPECT_EQ(cache->BlocksToGrow(1, 5), 2);
  ASSERT_TRUE(cache->Grow(1, 5).ok());
  EXPECT_EQ(cache->Length(1), 5);
  EXPECT_EQ(cache->free_blocks(), 8);
  EXPECT_EQ(cache->BlocksToGrow(1, 8), 0);
  ASSERT_TRUE(cache->Grow(1, 8).ok());
  EXPECT_EQ(cache->free_blocks(), 8);
  ASSERT_TRUE(cache->Grow(1, 9).ok());
  EXPECT_EQ(cache->free_blocks(), 7);
  EXPECT_EQ(cache->Grow(1, 3).code(), StatusCode::kInvalidArgument);
}

TEST(CpuKvCacheTest, ExhaustionChangesNothing) {
  auto cache = MakeCache(3);
  ASSERT_TRUE(cache->Grow(1, 8).ok());
  Status st = cache->Grow(2, 5);
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
  EXPECT_NE(st.message().find("kv_cache_bytes"), std::string::npos) << st.message();
  EXPECT_EQ(cache->Length(2), 0);
  EXPECT_EQ(cache->free_blocks(), 1);
  ASSERT_TRUE(cache->Grow(2, 4).ok());
  EXPECT_EQ(cache->free_blocks(), 0);
  EXPECT_EQ(cache->Grow(1, 9).code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->Length(1), 8);
}

TEST(CpuKvCacheTest, ManySequencesInterleavedKeepTheirData) {
  auto cache = MakeCache(64);
  std::map<uint64_t, int64_t> lengths;
  // Sequences grow one token at a time in round-robin order, so their blocks interleave.
  for (int step = 0; step < 13; ++step) {
    for (uint64_t seq = 100; seq < 110; ++seq) {
      const int64_t len = lengths[seq];
      const int64_t grow = 1 + static_cast<int64_t>(seq % 3);
      if (cache->BlocksToGrow(seq, len + grow) > cache->free_blocks()) continue;
      ASSERT_TRUE(cache->Grow(seq, len + grow).ok());
      Fill(cache.get(), seq, len, len + grow);
      lengths[seq] = len + grow;
    }
  }
  int64_t used = 0;
  for (auto [seq, len] : lengths) {
    ExpectContents(cache.get(), seq, len);
    used += (len + 3) / 4;
  }
  EXPECT_EQ(cache->free_blocks(), 64 - used);
  // Every block is owned by one sequence only.
  std::set<const float*> blocks;
  for (auto [seq, len] : lengths) {
    std::vector<const float*> kb, vb;
    cache->View(0, seq, &kb, &vb);
    for (const float* b : kb) EXPECT_TRUE(blocks.insert(b).second);
  }
}

TEST(CpuKvCacheTest, ReleaseReturnsBlocksForReuse) {
  auto cache = MakeCache(6);
  ASSERT_TRUE(cache->Grow(1, 12).ok());
  ASSERT_TRUE(cache->Grow(2, 12).ok());
  Fill(cache.get(), 2, 0, 12);
  EXPECT_EQ(cache->FreeTokens(), 0);
  EXPECT_EQ(cache->Grow(3, 1).code(), StatusCode::kResourceExhausted);
  cache->Release(1);
  cache->Release(1);    // twice: ignored
  cache->Release(999);  // unknown: ignored
  EXPECT_EQ(cache->Length(1), 0);
  EXPECT_EQ(cache->FreeTokens(), 12);
  ASSERT_TRUE(cache->Grow(3, 12).ok());
  Fill(cache.get(), 3, 0, 12);
  ExpectContents(cache.get(), 2, 12);
  ExpectContents(cache.get(), 3, 12);
  // A released id starts from scratch.
  ASSERT_TRUE(cache->Grow(1, 0).ok());
  EXPECT_EQ(cache->Length(1), 0);
}

TEST(CpuKvCacheTest, TruncateFreesTrailingBlocks) {
  auto cache = MakeCache(8);
  ASSERT_TRUE(cache->Grow(1, 14).ok());
  Fill(cache.get(), 1, 0, 14);
  EXPECT_EQ(cache->free_blocks(), 4);
  ASSERT_TRUE(cache->Truncate(1, 9).ok());
  EXPECT_EQ(cache->Length(1), 9);
  EXPECT_EQ(cache->free_blocks(), 5);
  ExpectContents(cache.get(), 1, 9);
  EXPECT_EQ(cache->Truncate(1, 10).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->Truncate(1, -1).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(cache->Truncate(1, 0).ok());
  EXPECT_EQ(cache->free_blocks(), 8);
}

TEST(CpuKvCacheTest, KeepEntriesMovesTheKeptSlotsDownAndFreesTheRest) {
  auto cache = MakeCache(8);
  ASSERT_TRUE(cache->Grow(1, 15).ok());
  Fill(cache.get(), 1, 0, 15);
  ASSERT_TRUE(cache->Grow(2, 5).ok());
  Fill(cache.get(), 2, 0, 5);
  EXPECT_EQ(cache->free_blocks(), 2);
  // Keep [0, 6) and slots 6 + {0, 3, 7} -> positions 6, 7, 8.
  ASSERT_TRUE(cache->KeepEntries(1, 6, {0, 3, 7}).ok());
  EXPECT_EQ(cache->Length(1), 9);
  EXPECT_EQ(cache->free_blocks(), 3);
  ExpectContents(cache.get(), 1, 6, 9);
  ExpectContents(cache.get(), 2, 5);
  const int64_t from[] = {6, 9, 13};
  for (int l = 0; l < 2; ++l) {
    for (int i = 0; i < 3; ++i) {
      const float* k = cache->KeySlot(l, 1, 6 + i);
      const float* v = cache->ValueSlot(l, 1, 6 + i);
      for (int e = 0; e < 8; ++e) {
        EXPECT_EQ(k[e], Tag(l, 1, from[i], e, false)) << l << " " << i;
        EXPECT_EQ(v[e], Tag(l, 1, from[i], e, true)) << l << " " << i;
      }
    }
  }
  // Bad indices change nothing.
  for (const auto& keep : std::vector<std::vector<int32_t>>{{1, 1}, {2, 0}, {3}, {-1}}) {
    EXPECT_EQ(cache->KeepEntries(1, 6, keep).code(), StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(cache->KeepEntries(1, 10, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->KeepEntries(1, -1, {}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->Length(1), 9);
  ExpectContents(cache.get(), 1, 6, 9);
  // Keeping every entry in place is a no-op; keep {} truncates.
  ASSERT_TRUE(cache->KeepEntries(2, 2, {0, 1, 2}).ok());
  ExpectContents(cache.get(), 2, 5);
  ASSERT_TRUE(cache->KeepEntries(2, 0, {}).ok());
  EXPECT_EQ(cache->Length(2), 0);
  EXPECT_EQ(cache->free_blocks(), 5);
}

}  // namespace
}  // namespace spark::engine
