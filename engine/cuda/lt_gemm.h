// LtGemm: the dense GEMMs of the CUDA backend through cuBLASLt.
//
//   Bf16:        y[m, n] (fp32) = x[m, k] (BF16) . W[n, k]^T (BF16), fp32 accumulation.
//   Fp8RowScaled: y[m, n] = (xq[m, k] . Wq[n, k]^T) * x_scale[m] * w_scale[n], e4m3 operands,
//                per-token x per-channel scaling in the epilogue (cuBLASLt OUTER_VEC_32F scale
//                mode on both operands), written as fp32 when cuBLASLt offers that, else as
//                BF16 into `bf16_scratch` ([m, n]) and widened to fp32.
// Row-major operands map onto cuBLASLt's column-major "TN" layout (A = W transposed, B = x).
// The algorithm for each (kind, m, n, k) is looked up once with the heuristic and cached;
// Unimplemented when cuBLASLt offers none (the caller falls back, e.g. to BF16).
//
// Thread safety: one owner thread (the handle and cache are not synchronised).
// Ownership: owns its cuBLASLt handle and workspace.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>

#include "common/status.h"

namespace spark::cuda {

class LtGemm {
 public:
  static Result<std::unique_ptr<LtGemm>> Create(int64_t workspace_bytes);
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  Status Bf16(const __nv_bfloat16* w, const __nv_bfloat16* x, int64_t m, int64_t n, int64_t k,
              float* y, cudaStream_t stream);
  Status Fp8RowScaled(const uint8_t* w, const float* w_scale, const uint8_t* xq,
                      const float* x_scale, int64_t m, int64_t n, int64_t k, float* y,
                      __nv_bfloat16* bf16_scratch, cudaStream_t stream);

 private:
  enum class Kind : int { kBf16, kFp8RowScaled, kFp8RowScaledBf16Out };
  struct Plan;
  LtGemm() = default;
  Result<Plan*> GetPlan(Kind kind, int64_t m, int64_t n, int64_t k);
  Status Run(Plan* plan, const void* a, const void* b, void* d, const float* a_scale,
             const float* b_scale, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  int64_t workspace_bytes_ = 0;
  std::map<std::tuple<int, int64_t, int64_t, int64_t>, std::unique_ptr<Plan>> plans_;
};

}  // namespace spark::cuda
