// Embedding lookup, the fp32-residual RMSNorm (with row selection) and SiLU * up on the GPU
// against the CPU backend's kernels (engine/cpu/kernels.h), at GLM-4.5-Air / GLM-4.7 widths and
// odd row counts. BF16 outputs: tolerance 1e-2 * max(1, |ref|); fp32 outputs 1e-5 relative.
#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "engine/cpu/kernels.h"
#include "engine/cuda/activation.h"
#include "engine/cuda/embedding.h"
#include "engine/cuda/rmsnorm.h"
#include "engine/model/dtype.h"
#include "tests/gpu/device_buffer.h"

namespace spark::cuda {
namespace {

TEST(SmallKernelsTest, RmsNormF32MatchesCpu) {
  for (int hidden : {64, 4096, 5120}) {
    for (int rows : {1, 7, 33}) {
      std::mt19937 rng(hidden + rows);
      std::normal_distribution<float> dist(0.f, 1.f);
      std::vector<float> res(static_cast<size_t>(rows) * hidden), add(res.size()), w(hidden);
      for (float& v : res) v = dist(rng);
      for (float& v : add) v = dist(rng);
      for (float& v : w) v = 1.f + 0.1f * dist(rng);
      std::vector<float> sum(res.size()), want(res.size());
      for (size_t i = 0; i < res.size(); ++i) sum[i] = res[i] + add[i];
      engine::RmsNorm(sum.data(), rows, hidden, w.data(), 1e-5f, want.data());
      DeviceBuffer<float> dres(res), dadd(add), dw(w), df32(static_cast<int64_t>(res.size()));
      DeviceBuffer<__nv_bfloat16> dout(static_cast<int64_t>(res.size()));
      ASSERT_EQ(RmsNormF32(dadd.get(), dres.get(), dw.get(), dout.get(), df32.get(), rows, hidden,
                           1e-5f, nullptr, nullptr),
                cudaSuccess);
      std::vector<float> r = dres.Download(), f = df32.Download();
      std::vector<__nv_bfloat16> o = dout.Download();
      for (size_t i = 0; i < res.size(); ++i) {
        ASSERT_EQ(r[i], sum[i]);
        ASSERT_NEAR(f[i], want[i], 1e-5 * std::max(1.f, std::fabs(want[i])));
        ASSERT_NEAR(__bfloat162float(o[i]), want[i], 1e-2 * std::max(1.f, std::fabs(want[i])));
      }
      // Row selection: rows 0 and rows-1 only, no add.
      std::vector<int32_t> sel = {rows - 1, 0};
      DeviceBuffer<int32_t> dsel(sel);
      DeviceBuffer<__nv_bfloat16> dsel_out(2 * hidden);
      ASSERT_EQ(RmsNormF32(nullptr, dres.get(), dw.get(), dsel_out.get(), nullptr, 2, hidden, 1e-5f,
                           dsel.get(), nullptr),
                cudaSuccess);
      std::vector<__nv_bfloat16> so = dsel_out.Download();
      for (int i = 0; i < hidden; ++i) {
        const float a = want[static_cast<size_t>(rows - 1) * hidden + i];
        ASSERT_NEAR(__bfloat162float(so[static_cast<size_t>(i)]), a,
                    1e-2 * std::max(1.f, std::fabs(a)));
        const float b = want[static_cast<size_t>(i)];
        ASSERT_NEAR(__bfloat162float(so[static_cast<size_t>(hidden + i)]), b,
                    1e-2 * std::max(1.f, std::fabs(b)));
      }
    }
  }
}

TEST(SmallKernelsTest, EmbeddingMatchesCpu) {
  const int64_t vocab = 1000, hidden = 4096;
  std::mt19937 rng(3);
  std::normal_distribution<float> dist(0.f, 1.f);
  engine::LinearWeight table;
  table.dtype = engine::DType::kBF16;
  table.out = vocab;
  table.in = hidden;
  table.data.resize(static_cast<size_t>(vocab * hidden * 2));
  std::vector<__nv_bfloat16> tb(static_cast<size_t>(vocab * hidden));
  for (size_t i = 0; i < tb.size(); ++i) {
    const uint16_t b = engine::FloatToBf16(dist(rng));
    std::memcpy(table.data.data() + i * 2, &b, 2);
    tb[i] = __float2bfloat16(engine::Bf16ToFloat(b));
  }
  std::vector<int32_t> ids = {0, 999, 17, 17, 500};
  std::vector<float> want(ids.size() * hidden);
  engine::EmbeddingLookup(table, ids.data(), static_cast<int64_t>(ids.size()), want.data());
  DeviceBuffer<__nv_bfloat16> dt(tb);
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<float> dout(static_cast<int64_t>(want.size()));
  ASSERT_EQ(EmbeddingLookup(dt.get(), hidden, dids.get(), static_cast<int64_t>(ids.size()),
                            dout.get(), nullptr),
            cudaSuccess);
  EXPECT_EQ(dout.Download(), want);
}

TEST(SmallKernelsTest, SiluMulMatchesCpu) {
  for (int64_t inter : {32, 1408, 1536, 10944}) {
    const int64_t rows = 5;
    std::mt19937 rng(static_cast<uint32_t>(inter));
    std::normal_distribution<float> dist(0.f, 2.f);
    std::vector<float> gu(static_cast<size_t>(rows * 2 * inter));
    for (float& v : gu) v = dist(rng);
    std::vector<float> g(static_cast<size_t>(rows * inter)), u(g.size()), want(g.size());
    for (int64_t m = 0; m < rows; ++m) {
      for (int64_t i = 0; i < inter; ++i) {
        g[static_cast<size_t>(m * inter + i)] = gu[static_cast<size_t>(m * 2 * inter + i)];
        u[static_cast<size_t>(m * inter + i)] = gu[static_cast<size_t>(m * 2 * inter + inter + i)];
      }
    }
    engine::SiluMul(g.data(), u.data(), rows * inter, want.data());
    DeviceBuffer<float> dgu(gu);
    DeviceBuffer<__nv_bfloat16> dout(rows * inter);
    ASSERT_EQ(SiluMul(dgu.get(), rows, inter, dout.get(), nullptr), cudaSuccess);
    std::vector<__nv_bfloat16> got = dout.Download();
    for (size_t i = 0; i < want.size(); ++i) {
      ASSERT_NEAR(__bfloat162float(got[i]), want[i], 1e-2 * std::max(1.f, std::fabs(want[i])));
    }
  }
}

}  // namespace
}  // namespace spark::cuda
