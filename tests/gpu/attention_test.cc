// Paged attention on the GPU against the CPU backend's PagedAttention (engine/cpu/kernels.h):
// GLM-4.5-Air / GLM-4.7 head layouts per TP size, decode batches of odd size over long contexts
// (with and without the split along the keys), prefill chunks that start inside the cache, and
// every supported head_dim, with BF16 and FP8 E4M3 caches. Inputs are representable in the
// cache's type (and in BF16) so both sides see the same numbers; tolerance 1e-2 absolute on
// outputs of magnitude <= 1 (the GPU rounds its output to BF16).
#include "engine/cuda/attention.h"

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cuda/device_info.h"
#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

struct ChunkSpec {
  int start;
  int len;
};

struct AttnCase {
  const char* name;
  int q_heads, kv_heads, head_dim, block_tokens;
  std::vector<ChunkSpec> chunks;
  int splits;  // 1, or forced split count
  bool fp8_cache = false;
  bool tensor_cores = false;  // AttentionShape::tensor_cores (engine/cuda/attention_mma.h)
  bool even_splits = false;   // split_keys 0: each chunk's keys divided among the splits
};

float RoundBf16(float v) { return __bfloat162float(__float2bfloat16(v)); }
float RoundFp8(float v) { return static_cast<float>(__nv_fp8_e4m3(v)); }

double RunCase(const AttnCase& c, bool print_time) {
  const bool check = !print_time;  // timing runs skip the CPU reference
  std::mt19937 rng(c.head_dim * 131 + c.q_heads);
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  const int hd = c.head_dim;
  const int group = c.q_heads / c.kv_heads;
  const int bt = c.block_tokens;
  int total = 0;
  int num_blocks = 0;
  int max_blocks = 1;
  int max_ctx = 0;
  for (const ChunkSpec& ch : c.chunks) {
    total += ch.len;
    const int ctx = ch.start + ch.len;
    max_ctx = std::max(max_ctx, ctx);
    const int nb = (ctx + bt - 1) / bt;
    num_blocks += nb;
    max_blocks = std::max(max_blocks, nb);
  }
  // Shuffled block ids: sequences own scattered blocks.
  std::vector<int32_t> perm(static_cast<size_t>(num_blocks));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);

  const int64_t block_elems = int64_t{c.kv_heads} * bt * hd;
  std::vector<__nv_bfloat16> kc(static_cast<size_t>(num_blocks * block_elems));
  std::vector<__nv_bfloat16> vc(kc.size());
  std::vector<__nv_fp8_e4m3> kc8(kc.size()), vc8(kc.size());
  auto round_kv = [&](float v) { return c.fp8_cache ? RoundFp8(v) : RoundBf16(v); };
  std::vector<float> q(static_cast<size_t>(int64_t{total} * c.q_heads * hd));
  for (float& v : q) v = RoundBf16(dist(rng));
  std::vector<__nv_bfloat16> qb(q.size());
  for (size_t i = 0; i < q.size(); ++i) qb[i] = __float2bfloat16(q[i]);

  std::vector<int32_t> tables(c.chunks.size() * max_blocks, 0), start, len, offset;
  std::vector<int2> tiles;
  std::vector<float> want(q.size());
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  int next_block = 0;
  int tok = 0;
  for (size_t i = 0; i < c.chunks.size(); ++i) {
    const ChunkSpec& ch = c.chunks[i];
    const int ctx = ch.start + ch.len;
    const int nb = (ctx + bt - 1) / bt;
    // CPU cache of this sequence: [nb * bt][kv_heads][hd].
    std::vector<float> kf(static_cast<size_t>(nb) * bt * c.kv_heads * hd, 0.f);
    std::vector<float> vf(kf.size(), 0.f);
    for (int b = 0; b < nb; ++b)
      tables[i * max_blocks + b] = perm[static_cast<size_t>(next_block + b)];
    for (int p = 0; p < ctx; ++p) {
      const int blk = tables[i * max_blocks + p / bt];
      for (int g = 0; g < c.kv_heads; ++g) {
        for (int d = 0; d < hd; ++d) {
          const float kv = round_kv(dist(rng));
          const float vv = round_kv(dist(rng));
          kf[(static_cast<size_t>(p) * c.kv_heads + g) * hd + d] = kv;
          vf[(static_cast<size_t>(p) * c.kv_heads + g) * hd + d] = vv;
          const int64_t at = ((int64_t{blk} * c.kv_heads + g) * bt + p % bt) * hd + d;
          kc[static_cast<size_t>(at)] = __float2bfloat16(kv);
          vc[static_cast<size_t>(at)] = __float2bfloat16(vv);
          kc8[static_cast<size_t>(at)] = __nv_fp8_e4m3(kv);
          vc8[static_cast<size_t>(at)] = __nv_fp8_e4m3(vv);
        }
      }
    }
    next_block += nb;
    std::vector<const float*> kb(nb), vb(nb);
    for (int b = 0; b < nb; ++b) {
      kb[b] = kf.data() + static_cast<size_t>(b) * bt * c.kv_heads * hd;
      vb[b] = vf.data() + static_cast<size_t>(b) * bt * c.kv_heads * hd;
    }
    engine::PagedKvView view{kb.data(), vb.data(), bt, c.kv_heads, hd};
    if (check)
      engine::PagedAttention(q.data() + static_cast<size_t>(tok) * c.q_heads * hd, ch.len, ch.start,
                             c.q_heads, view, scale,
                             want.data() + static_cast<size_t>(tok) * c.q_heads * hd, nullptr);
    start.push_back(ch.start);
    len.push_back(ch.len);
    offset.push_back(tok);
    for (int r = 0; r < ch.len * group; r += kAttentionRowsPerTile) {
      tiles.push_back(make_int2(static_cast<int>(i), r));
    }
    tok += ch.len;
  }

  DeviceBuffer<__nv_bfloat16> dq(qb), dk(kc), dv(vc);
  DeviceBuffer<__nv_fp8_e4m3> dk8(kc8), dv8(vc8);
  DeviceBuffer<__nv_bfloat16> dout(static_cast<int64_t>(q.size()));
  DeviceBuffer<int32_t> dtables(tables), dstart(start), dlen(len), doffset(offset);
  DeviceBuffer<int2> dtiles(tiles);
  int split_keys = c.splits > 1 ? ((max_ctx + c.splits - 1) / c.splits + 31) / 32 * 32 : 0;
  const int splits = c.splits > 1 ? (max_ctx + split_keys - 1) / split_keys : 1;
  if (c.even_splits) split_keys = 0;
  DeviceBuffer<float> po(static_cast<int64_t>(splits) * total * c.q_heads * hd);
  DeviceBuffer<float> pml(static_cast<int64_t>(splits) * total * c.q_heads * 2);
  AttentionBatch batch;
  batch.start = dstart.get();
  batch.len = dlen.get();
  batch.offset = doffset.get();
  batch.block_tables = dtables.get();
  batch.max_blocks = max_blocks;
  batch.tiles = dtiles.get();
  batch.num_tiles = static_cast<int>(tiles.size());
  batch.total_tokens = total;
  AttentionShape shape{c.q_heads, c.kv_heads, hd, bt, scale};
  shape.cache_dtype = c.fp8_cache ? KvCacheDtype::kFp8E4m3 : KvCacheDtype::kBf16;
  shape.tensor_cores = c.tensor_cores;
  const void* kdev = c.fp8_cache ? static_cast<const void*>(dk8.get()) : dk.get();
  const void* vdev = c.fp8_cache ? static_cast<const void*>(dv8.get()) : dv.get();
  auto launch = [&] {
    return PagedAttention(dq.get(), kdev, vdev, batch, shape, splits, split_keys, po.get(),
                          pml.get(), dout.get(), 232448, nullptr);
  };
  EXPECT_EQ(launch(), cudaSuccess);
  std::vector<__nv_bfloat16> got = dout.Download();
  double max_diff = 0.0;
  for (size_t i = 0; check && i < want.size(); ++i) {
    max_diff =
        std::max(max_diff, std::fabs(static_cast<double>(__bfloat162float(got[i])) - want[i]));
  }
  if (print_time) {
    cudaEvent_t a, b;
    cudaEventCreate(&a);
    cudaEventCreate(&b);
    cudaEventRecord(a);
    for (int i = 0; i < 20; ++i) launch();
    cudaEventRecord(b);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    double kv_bytes = 0;
    for (const ChunkSpec& ch : c.chunks) {
      kv_bytes += 2.0 * (ch.start + ch.len) * c.kv_heads * hd * (c.fp8_cache ? 1 : 2);
    }
    const double us = ms * 1000.0 / 20;
    std::printf("[attention] %s: %.1f us per call (splits %d), KV read %.0f GB/s\n", c.name, us,
                splits, kv_bytes / (us * 1e3));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
  }
  return max_diff;
}

TEST(PagedAttentionTest, MatchesCpuOverShapesAndBatches) {
  std::vector<std::string> names;
  names.reserve(16);
  std::vector<ChunkSpec> decode7 = {{0, 1},   {16, 1},   {99, 1},  {512, 1},
                                    {999, 1}, {2046, 1}, {4099, 1}};
  std::vector<AttnCase> cases = {
      {"air_tp1_decode7", 96, 8, 128, 16, decode7, 1},
      {"air_tp1_decode7_split8", 96, 8, 128, 16, decode7, 8},
      {"air_tp2_decode7_split4", 48, 4, 128, 16, decode7, 4},
      {"glm47_tp8_prefill", 12, 1, 128, 16, {{0, 300}, {200, 77}}, 1},
      {"glm47_tp8_mixed", 12, 1, 128, 16, {{0, 33}, {500, 1}, {64, 17}}, 1},
      {"glm47_tp8_long_decode_split16", 12, 1, 128, 16, {{8191, 1}, {3000, 1}, {5, 1}}, 16},
      {"hd16", 4, 2, 16, 16, {{0, 40}, {9, 3}}, 1},
      {"hd32_block8", 4, 2, 32, 8, {{0, 40}, {9, 3}}, 1},
      {"hd64_split3", 4, 2, 64, 16, {{0, 1}, {700, 1}}, 3},
      {"hd256_mha", 2, 2, 256, 16, {{0, 20}, {31, 2}}, 1},
      {"fp8_air_tp1_decode7_split8", 96, 8, 128, 16, decode7, 8, true},
      {"fp8_glm47_tp8_mixed", 12, 1, 128, 16, {{0, 33}, {500, 1}, {64, 17}}, 1, true},
      {"fp8_hd64_split3", 4, 2, 64, 16, {{0, 1}, {700, 1}}, 3, true},
      {"even_air_tp1_decode7_split8", 96, 8, 128, 16, decode7, 8, false, false, true},
  };
  // The tensor-core kernel on every case it serves (head_dim 128, BF16 and FP8 caches); P is
  // rounded to BF16 before P V, within the same tolerance.
  const size_t simt_cases = cases.size();
  for (size_t i = 0; i < simt_cases; ++i) {
    if (cases[i].head_dim != 128) continue;
    AttnCase tc = cases[i];
    tc.tensor_cores = true;
    names.push_back(std::string("tc_") + cases[i].name);
    cases.push_back(tc);
  }
  for (size_t i = simt_cases; i < cases.size(); ++i) cases[i].name = names[i - simt_cases].c_str();
  const char* quick = std::getenv("SPARK_GPU_QUICK");
  for (const AttnCase& c : cases) {
    if (quick != nullptr && *quick == '1' && std::string(c.name).find("air") != std::string::npos)
      continue;
    const double diff = RunCase(c, false);
    std::printf("[attention] %-32s max |gpu - cpu| = %.3g\n", c.name, diff);
    EXPECT_LE(diff, 1e-2) << c.name;
  }
}

TEST(PagedAttentionTest, Timings) {
  if (const char* q = std::getenv("SPARK_GPU_QUICK"); q != nullptr && *q == '1') {
    GTEST_SKIP() << "timings skipped in quick mode";
  }
  std::vector<ChunkSpec> decode32;
  for (int i = 0; i < 32; ++i) decode32.push_back({4095, 1});
  RunCase({"air_tp1_decode32_ctx4096", 96, 8, 128, 16, decode32, 1}, true);
  RunCase({"air_tp1_decode1_ctx32768_split32", 96, 8, 128, 16, {{32767, 1}}, 32}, true);
  RunCase({"fp8_air_tp1_decode32_ctx4096", 96, 8, 128, 16, decode32, 1, true}, true);
  RunCase({"fp8_air_tp1_decode1_ctx32768_split32", 96, 8, 128, 16, {{32767, 1}}, 32, true}, true);
  RunCase({"air_tp1_decode1_ctx32768_nosplit", 96, 8, 128, 16, {{32767, 1}}, 1}, true);
  RunCase({"air_tp1_prefill2048", 96, 8, 128, 16, {{0, 2048}}, 1}, true);
  RunCase({"tc_air_tp1_decode32_ctx4096", 96, 8, 128, 16, decode32, 1, false, true}, true);
  RunCase({"tc_air_tp1_decode1_ctx32768_split32", 96, 8, 128, 16, {{32767, 1}}, 32, false, true},
          true);
  RunCase({"tc_air_tp1_prefill2048", 96, 8, 128, 16, {{0, 2048}}, 1, false, true}, true);
  RunCase({"tc_fp8_air_tp1_decode32_ctx4096", 96, 8, 128, 16, decode32, 1, true, true}, true);
  RunCase({"tc_fp8_air_tp1_decode1_ctx32768_split32", 96, 8, 128, 16, {{32767, 1}}, 32, true, true},
          true);
}

TEST(PagedAttentionTest, RejectsSharedMemoryAboveTheCap) {
  AttentionBatch batch;
  batch.num_tiles = 1;
  AttentionShape shape{2, 2, 256, 16, 1.f};
  EXPECT_EQ(PagedAttention(nullptr, nullptr, nullptr, batch, shape, 1, 0, nullptr, nullptr, nullptr,
                           AttentionSmemBytes(256) - 1, nullptr),
            cudaErrorInvalidConfiguration);
  EXPECT_LE(AttentionSmemBytes(128), 101376);  // fits GB10
}

}  // namespace
}  // namespace spark::cuda
