// MoE tile selection and workspace sizing (engine/cuda/moe_config.h) on the host: for every batch
// size, under the full Hopper shared memory and under GB10's 101,376-byte limit, the launch that a
// forward makes fits the workspace sized by MoeScratchFor, keeps the heuristic's split-K, and
// covers the rows the permutation pads for real routings; bad plans fail with a clear status.
#include "engine/cuda/moe_config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace spark::cuda {
namespace {

constexpr int64_t kHopperSmemBytes = 232448;  // opt-in shared memory per block, H100/H200
constexpr int64_t kGb10SmemBytes = 101376;

struct Shape {
  const char* name;
  int experts, hidden, inter, top_k;
};

const Shape kShapes[] = {
    {"tiny", 8, 256, 128, 2},         {"tiny_grouped", 16, 128, 256, 4},
    {"glm45air", 128, 4096, 1408, 8}, {"glm45air_tp2", 128, 4096, 704, 8},
    {"glm47_tp4", 160, 5120, 384, 8},
};

std::vector<MoeWeightFormat> Formats(const Shape& s) {
  std::vector<MoeWeightFormat> f = {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel};
  if (s.hidden % 128 == 0 && s.inter % 128 == 0) f.push_back(MoeWeightFormat::kFp8Block);
  return f;
}

// Rows and row blocks the permutation pads `ids` to with `block_m`-row tiles (as PermuteKernel).
std::pair<int64_t, int64_t> PaddedRows(const std::vector<int>& ids, int experts, int block_m) {
  std::vector<int64_t> count(static_cast<size_t>(experts), 0);
  for (int e : ids) ++count[static_cast<size_t>(e)];
  int64_t rows = 0;
  for (int64_t c : count) rows += (c + block_m - 1) / block_m * block_m;
  return {rows, rows / block_m};
}

TEST(MoeConfigTest, EveryBatchSizeFitsTheWorkspaceWithAndWithoutTheGb10Cap) {
  std::mt19937 rng(5);
  for (const Shape& s : kShapes) {
    for (int64_t max_tokens : {int64_t{512}, int64_t{4096}}) {
      const MoeScratchSizes any_table =
          MoeScratchFor(s.experts, s.hidden, s.inter, s.top_k, max_tokens);
      for (int64_t limit : {kHopperSmemBytes, kGb10SmemBytes}) {
        for (int sms : {132, 48}) {
          Result<MoeConfigTable> table = MoeConfigTable::ForLimit(limit, sms);
          ASSERT_TRUE(table.ok()) << table.status().ToString();
          for (MoeWeightFormat format : Formats(s)) {
            SCOPED_TRACE(std::string(s.name) + " " + MoeWeightFormatName(format) + " limit " +
                         std::to_string(limit) + " sms " + std::to_string(sms) + " max_tokens " +
                         std::to_string(max_tokens));
            const MoeScratchSizes scratch =
                table->ScratchFor(format, s.experts, s.hidden, s.inter, s.top_k, max_tokens);
            // Rows do not depend on the table; split-K partials at least the default.
            EXPECT_EQ(scratch.max_rows, any_table.max_rows);
            EXPECT_EQ(scratch.max_mblocks, any_table.max_mblocks);
            EXPECT_GE(scratch.split_partial_floats, any_table.split_partial_floats);
            if (format == MoeWeightFormat::kFp8PerChannel && limit == kGb10SmemBytes) {
              std::printf(
                  "[moe-scratch] %s T<=%lld, %d SMs: %lld rows, %.1f MiB split-K partials\n",
                  s.name, static_cast<long long>(max_tokens), sms,
                  static_cast<long long>(scratch.max_rows),
                  static_cast<double>(scratch.split_partial_floats) * 4 / (1 << 20));
            }
            for (int64_t tokens = 1; tokens <= max_tokens; tokens += tokens < 600 ? 1 : 37) {
              Result<MoeLaunch> plan =
                  table->PlanLaunch(format, s.experts, s.hidden, s.inter, s.top_k, tokens, scratch);
              ASSERT_TRUE(plan.ok()) << "T=" << tokens << ": " << plan.status().ToString();
              const int64_t pairs = tokens * s.top_k;
              const int bm = table->BlockMFor(format, pairs, s.experts);
              ASSERT_EQ(plan->gate_up.block_m, bm) << "T=" << tokens;
              ASSERT_EQ(plan->down.block_m, bm) << "T=" << tokens;
              ASSERT_LE(plan->gate_up.SmemBytes(), limit);
              ASSERT_LE(plan->down.SmemBytes(), limit);
              ASSERT_LE(plan->rows, scratch.max_rows) << "T=" << tokens;
              ASSERT_LE(plan->mblocks, scratch.max_mblocks) << "T=" << tokens;
              ASSERT_EQ(plan->rows, plan->mblocks * bm);
              // The workspace never cuts the split-K the heuristic asked for.
              const MoeTileConfig want_gu = table->Select(format, MoeGemm::kGateUp, pairs,
                                                          s.experts, 2 * s.inter, s.hidden, 8);
              const MoeTileConfig want_dn =
                  table->Select(format, MoeGemm::kDown, pairs, s.experts, s.hidden, s.inter, 8);
              ASSERT_EQ(plan->gate_up.split_k, want_gu.split_k) << "T=" << tokens;
              ASSERT_EQ(plan->down.split_k, want_dn.split_k) << "T=" << tokens;
              // Routings: all pairs on few experts, spread evenly, random.
              if (tokens % 61 == 1 || tokens == max_tokens) {
                for (int kind = 0; kind < 3; ++kind) {
                  std::vector<int> ids(static_cast<size_t>(pairs));
                  for (int64_t p = 0; p < pairs; ++p) {
                    const int64_t t = p / s.top_k, j = p % s.top_k;
                    ids[static_cast<size_t>(p)] =
                        kind == 0   ? static_cast<int>(j)
                        : kind == 1 ? static_cast<int>((t * s.top_k + j) % s.experts)
                                    : static_cast<int>(rng() % s.experts);
                  }
                  const auto [rows, blocks] = PaddedRows(ids, s.experts, bm);
                  ASSERT_LE(rows, plan->rows) << "T=" << tokens << " routing " << kind;
                  ASSERT_LE(blocks, plan->mblocks) << "T=" << tokens << " routing " << kind;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(MoeConfigTest, ScratchCoversEveryCompiledTileHeight) {
  const Shape& s = kShapes[2];
  const int64_t tokens = 300;
  const MoeScratchSizes scratch = MoeScratchFor(s.experts, s.hidden, s.inter, s.top_k, tokens);
  const int64_t pairs = tokens * s.top_k;
  std::vector<int> heights = {kMoeGroupedBlockM};  // the expert-grouped kernels' groups
  for (const MoeKernelVariant& v : MoeKernelVariants()) heights.push_back(v.block_m);
  for (const int block_m : heights) {
    const int64_t mblocks = (pairs + block_m - 1) / block_m + std::min<int64_t>(s.experts, pairs);
    EXPECT_EQ(MoeMaxMblocks(pairs, s.experts, block_m), mblocks) << block_m;
    EXPECT_LE(mblocks, scratch.max_mblocks) << block_m;
    EXPECT_LE(mblocks * block_m, scratch.max_rows) << block_m;
  }
  // Exactly the worst case over the heights (8-row groups, 128-row padding here).
  EXPECT_EQ(scratch.max_mblocks, (pairs + 7) / 8 + s.experts);
  EXPECT_EQ(scratch.max_rows, ((pairs + 127) / 128 + s.experts) * 128);
  EXPECT_EQ(scratch.split_partial_floats, int64_t{4} << 20);
  EXPECT_GT(scratch.split_counters, 0);
}

TEST(MoeConfigTest, PlansTheWorkspaceCannotHoldOrInvalidConfigsFailClearly) {
  const Shape& s = kShapes[2];
  Result<MoeConfigTable> capped = MoeConfigTable::ForLimit(kGb10SmemBytes, 48);
  Result<MoeConfigTable> full = MoeConfigTable::ForLimit(kHopperSmemBytes, 132);
  ASSERT_TRUE(capped.ok() && full.ok());
  const MoeWeightFormat f = MoeWeightFormat::kFp8PerChannel;

  // A workspace for 4 tokens cannot take 600.
  const MoeScratchSizes small = MoeScratchFor(s.experts, s.hidden, s.inter, s.top_k, 4);
  Result<MoeLaunch> plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 600, small);
  ASSERT_FALSE(plan.ok());
  EXPECT_EQ(plan.status().code(), StatusCode::kOutOfRange);
  EXPECT_NE(plan.status().message().find("600 tokens"), std::string::npos)
      << plan.status().message();

  const MoeScratchSizes scratch = MoeScratchFor(s.experts, s.hidden, s.inter, s.top_k, 600);
  // Forced configs: both or neither, a shared block_m, within the table's limit.
  std::vector<MoeTileConfig> fits = capped->Candidates(f);
  ASSERT_FALSE(fits.empty());
  const MoeTileConfig* m16 = nullptr;
  const MoeTileConfig* m32 = nullptr;
  for (const MoeTileConfig& c : fits) {
    if (c.block_m == 16 && m16 == nullptr) m16 = &c;
    if (c.block_m == 32 && m32 == nullptr) m32 = &c;
  }
  ASSERT_TRUE(m16 != nullptr && m32 != nullptr);
  plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 600, scratch, m16, m32);
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(plan.status().message().find("block_m"), std::string::npos);
  plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 600, scratch, m16, nullptr);
  EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
  plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 600, scratch, m32, m32);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->rows, plan->mblocks * 32);
  int above = 0;
  for (const MoeTileConfig& c : full->Candidates(f)) {
    if (c.SmemBytes() <= kGb10SmemBytes) continue;
    ++above;
    plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 600, scratch, &c, &c);
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument) << c.ToString();
    EXPECT_NE(plan.status().message().find("shared memory"), std::string::npos);
  }
  EXPECT_GT(above, 0);

  // Split-K is lowered to what the partial-tile scratch holds, never dropped below 1.
  MoeScratchSizes tight = scratch;
  tight.split_partial_floats = 0;
  MoeTileConfig split = *m16;
  split.split_k = 8;
  plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 1, tight, &split, &split);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(plan->gate_up.split_k, 1);
  EXPECT_EQ(plan->down.split_k, 1);
  plan = capped->PlanLaunch(f, s.experts, s.hidden, s.inter, s.top_k, 1, scratch, &split, &split);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->gate_up.split_k, 8);
}

TEST(MoeConfigTest, GemvTilingAcceptsTheCompiledSplitsOnly) {
  Result<MoeConfigTable> table = MoeConfigTable::ForLimit(kHopperSmemBytes, 132);
  ASSERT_TRUE(table.ok());
  EXPECT_EQ(table->gemv_tiling().gate_up_k_splits, 0);
  EXPECT_EQ(table->gemv_tiling().down_outputs, 0);
  EXPECT_EQ(table->gemv_tiling().down_vectors, 0);
  for (const int k : {0, 1, 2, 4, 8}) {
    for (const int d : {0, 4, 8, 16}) {
      for (const int v : {0, 1, 2, 3, 4}) {
        EXPECT_TRUE(table->SetGemvTiling(MoeGemvTiling{k, d, v}).ok()) << k << " " << d << " " << v;
        EXPECT_EQ(table->gemv_tiling().gate_up_k_splits, k);
        EXPECT_EQ(table->gemv_tiling().down_outputs, d);
        EXPECT_EQ(table->gemv_tiling().down_vectors, v);
      }
    }
  }
  const Status bad_k = table->SetGemvTiling(MoeGemvTiling{3, 8});
  EXPECT_EQ(bad_k.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_k.message().find("use 1, 2, 4 or 8"), std::string::npos) << bad_k.message();
  const Status bad_d = table->SetGemvTiling(MoeGemvTiling{2, 32});
  EXPECT_EQ(bad_d.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_d.message().find("use 4, 8 or 16"), std::string::npos) << bad_d.message();
  const Status bad_sweep = table->SetGemvTiling(MoeGemvTiling{2, 8, 1, 0, 2});
  EXPECT_EQ(bad_sweep.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_sweep.message().find("use 0 (row-group blocks) or 1 (row sweep)"),
            std::string::npos)
      << bad_sweep.message();
  EXPECT_TRUE(table->SetGemvTiling(MoeGemvTiling{8, 16, 4, 0, 1}).ok());
  EXPECT_EQ(table->gemv_tiling().gate_up_sweep, 1);
  const Status bad_v = table->SetGemvTiling(MoeGemvTiling{2, 8, 5});
  EXPECT_EQ(bad_v.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_v.message().find("use 1, 2, 3, or 4"), std::string::npos) << bad_v.message();
  // A rejected tiling leaves the previous one in place.
  EXPECT_EQ(table->gemv_tiling().gate_up_k_splits, 8);
  EXPECT_EQ(table->gemv_tiling().down_outputs, 16);
  EXPECT_EQ(table->gemv_tiling().down_vectors, 4);
  for (const int q : {0, kMoeGemvHardwareConvert, kMoeGemvHalfMma, kMoeGemvScaledBits}) {
    EXPECT_TRUE(table->SetGemvTiling(MoeGemvTiling{1, 8, 1, q}).ok()) << q;
    EXPECT_EQ(table->gemv_tiling().fp8_dequant, q);
  }
  const Status bad_q = table->SetGemvTiling(MoeGemvTiling{1, 8, 1, 4});
  EXPECT_EQ(bad_q.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad_q.message().find("3 (f16 tensor-core fragments)"), std::string::npos)
      << bad_q.message();
  EXPECT_EQ(table->gemv_tiling().fp8_dequant, kMoeGemvScaledBits);
}

// The heuristic's measured preferences (H100 candidate sweep): 16-row tiles up to 16 rows per
// expert, 32-row tiles above; the deepest pipeline of up to 3 stages within 42 KiB first, so the
// 256-byte-K 16-row gate/up tile and the 32-row tile run 2 stages, the 128-byte-K 16-row tile 3;
// the same under GB10's cap.
TEST(MoeConfigTest, HeuristicPrefersResidentBlocksOverDeepPipelines) {
  const Shape& glm47 = kShapes[4];
  for (const int64_t cap : {kHopperSmemBytes, kGb10SmemBytes}) {
    Result<MoeConfigTable> table = MoeConfigTable::ForLimit(cap, 132);
    ASSERT_TRUE(table.ok());
    const MoeWeightFormat f = MoeWeightFormat::kFp8PerChannel;
    const int64_t h = glm47.hidden, im = glm47.inter;
    // 256 tokens: 12.8 rows per expert.
    const int64_t pairs_256 = 256 * glm47.top_k;
    EXPECT_EQ(table->BlockMFor(f, pairs_256, glm47.experts), 16);
    const MoeTileConfig gu =
        table->Select(f, MoeGemm::kGateUp, pairs_256, glm47.experts, 2 * im, h, 8);
    EXPECT_EQ(gu.block_n, 64);
    EXPECT_EQ(gu.block_k_bytes, 256);
    EXPECT_EQ(gu.stages, 2) << gu.ToString();
    const MoeTileConfig dn = table->Select(f, MoeGemm::kDown, pairs_256, glm47.experts, h, im, 8);
    EXPECT_EQ(dn.block_k_bytes, 128);
    EXPECT_EQ(dn.stages, 3) << dn.ToString();
    EXPECT_LE(dn.SmemBytes(), 42 * 1024);
    // 1,024 tokens: 51 rows per expert.
    const int64_t pairs_1024 = 1024 * glm47.top_k;
    EXPECT_EQ(table->BlockMFor(f, pairs_1024, glm47.experts), 32);
    const MoeTileConfig big =
        table->Select(f, MoeGemm::kGateUp, pairs_1024, glm47.experts, 2 * im, h, 8);
    EXPECT_EQ(big.block_m, 32);
    EXPECT_EQ(big.stages, 2) << big.ToString();
    // 64-row tiles (no variant within 42 KiB) keep their 3-stage pipeline.
    const int64_t pairs_64rows = int64_t{200} * glm47.experts;
    EXPECT_EQ(table->BlockMFor(f, pairs_64rows, glm47.experts), 64);
    EXPECT_EQ(table->Select(f, MoeGemm::kGateUp, pairs_64rows, glm47.experts, 2 * im, h, 8).stages,
              3);
  }
}

TEST(MoeConfigTest, TableWithoutRoomForAnyConfigIsRejected) {
  EXPECT_EQ(MoeConfigTable::ForLimit(0, 132).status().code(), StatusCode::kInvalidArgument);
  Result<MoeConfigTable> tiny = MoeConfigTable::ForLimit(16 * 1024, 132);
  ASSERT_FALSE(tiny.ok());
  EXPECT_NE(tiny.status().message().find("no MoE tile config fits 16384 bytes"), std::string::npos)
      << tiny.status().message();
}

}  // namespace
}  // namespace spark::cuda
