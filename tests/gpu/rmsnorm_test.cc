#include "engine/cuda/rmsnorm.h"

#include <cuda_bf16.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "engine/cuda/cuda_check.h"

namespace spark::cuda {
namespace {

float Round(float v) { return __bfloat162float(__float2bfloat16(v)); }

TEST(RmsNormTest, MatchesHostReferenceWithResidual) {
  for (int hidden : {64, 4096, 5120}) {
    const int rows = 7;
    std::mt19937 rng(hidden);
    std::normal_distribution<float> dist(0.f, 1.f);
    std::vector<__nv_bfloat16> x(rows * hidden), res(rows * hidden), w(hidden);
    for (auto& v : x) v = __float2bfloat16(dist(rng));
    for (auto& v : res) v = __float2bfloat16(dist(rng));
    for (auto& v : w) v = __float2bfloat16(1.f + 0.1f * dist(rng));

    __nv_bfloat16 *dx, *dres, *dw, *dout;
    const size_t n = x.size() * sizeof(__nv_bfloat16);
    SPARK_CUDA_CHECK(cudaMalloc(&dx, n));
    SPARK_CUDA_CHECK(cudaMalloc(&dres, n));
    SPARK_CUDA_CHECK(cudaMalloc(&dout, n));
    SPARK_CUDA_CHECK(cudaMalloc(&dw, hidden * sizeof(__nv_bfloat16)));
    SPARK_CUDA_CHECK(cudaMemcpy(dx, x.data(), n, cudaMemcpyHostToDevice));
    SPARK_CUDA_CHECK(cudaMemcpy(dres, res.data(), n, cudaMemcpyHostToDevice));
    SPARK_CUDA_CHECK(cudaMemcpy(dw, w.data(), hidden * 2, cudaMemcpyHostToDevice));
    ASSERT_EQ(RmsNormResidual(dx, dres, dw, dout, rows, hidden, 1e-5f, nullptr), cudaSuccess);
    std::vector<__nv_bfloat16> out(x.size()), res_out(x.size());
    SPARK_CUDA_CHECK(cudaMemcpy(out.data(), dout, n, cudaMemcpyDeviceToHost));
    SPARK_CUDA_CHECK(cudaMemcpy(res_out.data(), dres, n, cudaMemcpyDeviceToHost));

    for (int r = 0; r < rows; ++r) {
      double ss = 0;
      std::vector<float> sum(hidden);
      for (int i = 0; i < hidden; ++i) {
        sum[i] = Round(__bfloat162float(x[r * hidden + i]) + __bfloat162float(res[r * hidden + i]));
        ss += double(sum[i]) * sum[i];
      }
      const float inv = 1.f / std::sqrt(float(ss / hidden) + 1e-5f);
      for (int i = 0; i < hidden; ++i) {
        ASSERT_EQ(__bfloat162float(res_out[r * hidden + i]), sum[i]);
        const float want = Round(__bfloat162float(w[i]) * Round(sum[i] * inv));
        ASSERT_NEAR(__bfloat162float(out[r * hidden + i]), want, 1e-2f * std::fabs(want) + 1e-3f)
            << "row " << r << " col " << i;
      }
    }
    cudaFree(dx);
    cudaFree(dres);
    cudaFree(dout);
    cudaFree(dw);
  }
}

}  // namespace
}  // namespace spark::cuda
