// Tuned configs in the MoE tile table (engine/cuda/moe_config.h), host only: a tuned gate/up
// config decides the bucket's block_m (the permutation's padding), so a tuned pair whose block_m
// differs from the heuristic's is what a forward launches; other buckets keep the heuristic.
#include <gtest/gtest.h>

#include "engine/cuda/moe_config.h"

namespace spark::cuda {
namespace {

constexpr int kExperts = 128, kHidden = 4096, kInter = 1408, kTopK = 8;  // GLM-4.5-Air, tp 1
constexpr MoeWeightFormat kFormat = MoeWeightFormat::kFp8PerChannel;

MoeTileConfig Tile(int block_m, int block_n, int block_k_bytes, int warps, int stages,
                   int split_k) {
  const auto& variants = MoeKernelVariants();
  for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
    const MoeKernelVariant& k = variants[v];
    if (k.block_m == block_m && k.block_n == block_n && k.block_k_bytes == block_k_bytes &&
        k.warps == warps) {
      return {v, block_m, block_n, block_k_bytes, warps, stages, split_k};
    }
  }
  ADD_FAILURE() << "no compiled tile m" << block_m << "n" << block_n;
  return {};
}

bool Same(const MoeTileConfig& a, const MoeTileConfig& b) {
  return a.kernel == b.kernel && a.stages == b.stages && a.split_k == b.split_k;
}

TEST(MoeTunedTableTest, TunedBlockMOverridesTheHeuristicForItsBucketOnly) {
  Result<MoeConfigTable> table = MoeConfigTable::ForLimit(232448, 132);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  const int64_t pairs = 64 * kTopK;  // 4 rows per expert: the heuristic pads to 16
  ASSERT_EQ(table->BlockMFor(kFormat, pairs, kExperts), 16);
  const MoeTileConfig gate_up = Tile(64, 128, 128, 4, 4, 1);
  const MoeTileConfig down = Tile(64, 256, 128, 8, 3, 1);
  ASSERT_TRUE(table->SetTuned(kFormat, MoeGemm::kGateUp, pairs, gate_up).ok());
  ASSERT_TRUE(table->SetTuned(kFormat, MoeGemm::kDown, pairs, down).ok());

  EXPECT_EQ(table->BlockMFor(kFormat, pairs, kExperts), 64);
  // Same bucket (pairs 257..512).
  EXPECT_EQ(table->BlockMFor(kFormat, 40 * kTopK, kExperts), 64);
  EXPECT_TRUE(Same(
      table->Select(kFormat, MoeGemm::kGateUp, pairs, kExperts, 2 * kInter, kHidden, 8), gate_up));
  EXPECT_TRUE(
      Same(table->Select(kFormat, MoeGemm::kDown, pairs, kExperts, kHidden, kInter, 8), down));
  // Another bucket and another format keep the heuristic.
  EXPECT_EQ(table->BlockMFor(kFormat, 128 * kTopK, kExperts), 16);
  EXPECT_EQ(table->BlockMFor(MoeWeightFormat::kBf16, pairs, kExperts), 16);

  // The launch a forward plans uses the tuned pair and fits a workspace for any block_m.
  const MoeScratchSizes scratch = MoeScratchFor(kExperts, kHidden, kInter, kTopK, 2048);
  Result<MoeLaunch> launch =
      table->PlanLaunch(kFormat, kExperts, kHidden, kInter, kTopK, 64, scratch);
  ASSERT_TRUE(launch.ok()) << launch.status().ToString();
  EXPECT_TRUE(Same(launch->gate_up, gate_up));
  EXPECT_TRUE(Same(launch->down, down));
  EXPECT_EQ(launch->gate_up.block_m, 64);

  // A tuned down config of another block_m than the bucket's gate/up is not used.
  ASSERT_TRUE(table->SetTuned(kFormat, MoeGemm::kDown, pairs, Tile(16, 64, 128, 4, 3, 1)).ok());
  EXPECT_EQ(table->Select(kFormat, MoeGemm::kDown, pairs, kExperts, kHidden, kInter, 8).block_m,
            64);
}

TEST(MoeTunedTableTest, ConfigsAboveTheLimitAreRefused) {
  Result<MoeConfigTable> table = MoeConfigTable::ForLimit(101376, 48);  // GB10
  ASSERT_TRUE(table.ok());
  const Status st = table->SetTuned(kFormat, MoeGemm::kGateUp, 8, Tile(64, 128, 128, 4, 5, 1));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("101376"), std::string::npos) << st.message();
  EXPECT_EQ(table->BlockMFor(kFormat, 8, kExperts), 16);
}

TEST(MoeTunedTableTest, TunedGemvSplitServesItsBucketOnly) {
  Result<MoeConfigTable> table = MoeConfigTable::ForLimit(232448, 132);
  ASSERT_TRUE(table.ok()) << table.status().ToString();
  MoeGemvTiling base;
  base.gate_up_k_splits = 2;
  ASSERT_TRUE(table->SetGemvTiling(base).ok());
  const MoeGemvTiling tuned{4, 16, 4, kMoeGemvHalfMma, 0};
  ASSERT_TRUE(table->SetTunedGemv(kFormat, 2, tuned).ok());
  EXPECT_TRUE(table->HasTunedGemv());
  // Bucket 2 serves 2 tokens; 1 and 3 tokens are other buckets (1 and 4).
  EXPECT_EQ(table->GemvTilingFor(kFormat, 2).down_vectors, 4);
  EXPECT_EQ(table->GemvTilingFor(kFormat, 2).fp8_dequant, kMoeGemvHalfMma);
  EXPECT_EQ(table->GemvTilingFor(kFormat, 1).gate_up_k_splits, 2);
  EXPECT_EQ(table->GemvTilingFor(kFormat, 3).down_vectors, 0);
  // Another format keeps the table-wide split.
  EXPECT_EQ(table->GemvTilingFor(MoeWeightFormat::kFp8Block, 2).gate_up_k_splits, 2);
  // Setting the bucket again replaces the split.
  MoeGemvTiling again = tuned;
  again.down_vectors = 2;
  ASSERT_TRUE(table->SetTunedGemv(kFormat, 2, again).ok());
  EXPECT_EQ(table->GemvTilingFor(kFormat, 2).down_vectors, 2);
  // Bad splits and batches are refused, and the stored one is kept.
  const Status bad = table->SetTunedGemv(kFormat, 2, MoeGemvTiling{3, 8, 1, 1, 0});
  EXPECT_EQ(bad.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.message().find("K splits 3"), std::string::npos) << bad.message();
  EXPECT_EQ(table->SetTunedGemv(kFormat, 0, tuned).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(table->GemvTilingFor(kFormat, 2).down_vectors, 2);
  table->ClearTuned();
  EXPECT_FALSE(table->HasTunedGemv());
  EXPECT_EQ(table->GemvTilingFor(kFormat, 2).gate_up_k_splits, 2);
}

TEST(MoeTunedTableTest, GemvDequantNamesRoundTrip) {
  for (int q : {kMoeGemvHardwareConvert, kMoeGemvScaledBits, kMoeGemvHalfMma}) {
    Result<int> parsed = ParseMoeGemvDequant(MoeGemvDequantName(q));
    ASSERT_TRUE(parsed.ok()) << q;
    EXPECT_EQ(*parsed, q);
  }
  EXPECT_STREQ(MoeGemvDequantName(0), MoeGemvDequantName(kMoeGemvFp8DequantDefault));
  const Status bad = ParseMoeGemvDequant("fast").status();
  EXPECT_NE(bad.message().find("use convert, scaled_bits or half_mma"), std::string::npos);
}

}  // namespace
}  // namespace spark::cuda
