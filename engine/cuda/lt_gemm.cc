#include "engine/cuda/lt_gemm.h"

#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp8_convert.h"

namespace spark::cuda {

struct LtGemm::Plan {
  bool supported = false;
  std::string why;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};

  ~Plan() {
    if (desc) cublasLtMatmulDescDestroy(desc);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (d) cublasLtMatrixLayoutDestroy(d);
  }
};

Result<std::unique_ptr<LtGemm>> LtGemm::Create(int64_t workspace_bytes) {
  std::unique_ptr<LtGemm> gemm(new LtGemm());
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtCreate(&gemm->handle_));
  if (workspace_bytes > 0) {
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&gemm->workspace_, static_cast<size_t>(workspace_bytes)));
    gemm->workspace_bytes_ = workspace_bytes;
  }
  return gemm;
}

LtGemm::~LtGemm() {
  plans_.clear();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

Result<LtGemm::Plan*> LtGemm::GetPlan(Kind kind, int64_t m, int64_t n, int64_t k) {
  auto key = std::make_tuple(static_cast<int>(kind), m, n, k);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second.get();
  auto plan = std::make_unique<Plan>();
  const bool fp8 = kind != Kind::kBf16;
  const cudaDataType_t out_type = kind == Kind::kFp8RowScaledBf16Out ? CUDA_R_16BF : CUDA_R_32F;
  const cudaDataType_t in_type = fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  SPARK_CUBLAS_RETURN_IF_ERROR(
      cublasLtMatmulDescCreate(&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t trans_a = CUBLAS_OP_T;
  const cublasOperation_t trans_b = CUBLAS_OP_N;
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
      plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  if (fp8) {
    const cublasLtMatmulMatrixScale_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
    // The heuristic may inspect the scale pointers: give it aligned placeholders (the real
    // vectors are set per call).
    const void* placeholder = workspace_;
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &placeholder, sizeof(placeholder)));
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &placeholder, sizeof(placeholder)));
  }
  // Column-major views: A = W^T stored [k, n] (ld k), B = x^T stored [k, m] (ld k),
  // D = y^T stored [n, m] (ld n).
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->a, in_type, k, n, k));
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->b, in_type, k, m, k));
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatrixLayoutCreate(&plan->d, out_type, n, m, n));
  cublasLtMatmulPreference_t pref = nullptr;
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulPreferenceCreate(&pref));
  uint64_t ws = static_cast<uint64_t>(workspace_bytes_);
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasLtMatmulAlgoGetHeuristic(handle_, plan->desc, plan->a, plan->b, plan->d, plan->d,
                                        pref, 1, &result, &found);
  }
  cublasLtMatmulPreferenceDestroy(pref);
  if (st == CUBLAS_STATUS_SUCCESS && found > 0) {
    plan->supported = true;
    plan->algo = result.algo;
  } else {
    plan->why = st != CUBLAS_STATUS_SUCCESS ? cublasLtGetStatusString(st) : "no algorithm";
  }
  Plan* raw = plan.get();
  plans_.emplace(key, std::move(plan));
  return raw;
}

Status LtGemm::Run(Plan* plan, const void* a, const void* b, void* d, const float* a_scale,
                   const float* b_scale, cudaStream_t stream) {
  if (a_scale != nullptr) {
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
    SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmulDescSetAttribute(
        plan->desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
  }
  const float alpha = 1.f;
  const float beta = 0.f;
  SPARK_CUBLAS_RETURN_IF_ERROR(cublasLtMatmul(
      handle_, plan->desc, &alpha, a, plan->a, b, plan->b, &beta, d, plan->d, d, plan->d,
      &plan->algo, workspace_, static_cast<size_t>(workspace_bytes_), stream));
  return Status::Ok();
}

Status LtGemm::Bf16(const __nv_bfloat16* w, const __nv_bfloat16* x, int64_t m, int64_t n, int64_t k,
                    float* y, cudaStream_t stream) {
  SPARK_ASSIGN_OR_RETURN(Plan * plan, GetPlan(Kind::kBf16, m, n, k));
  if (!plan->supported) {
    return Unimplemented("cuBLASLt BF16 GEMM m=" + std::to_string(m) + " n=" + std::to_string(n) +
                         " k=" + std::to_string(k) + ": " + plan->why);
  }
  return Run(plan, w, x, y, nullptr, nullptr, stream);
}

Status LtGemm::Fp8RowScaled(const uint8_t* w, const float* w_scale, const uint8_t* xq,
                            const float* x_scale, int64_t m, int64_t n, int64_t k, float* y,
                            __nv_bfloat16* bf16_scratch, cudaStream_t stream) {
  SPARK_ASSIGN_OR_RETURN(Plan * plan, GetPlan(Kind::kFp8RowScaled, m, n, k));
  if (plan->supported) return Run(plan, w, xq, y, w_scale, x_scale, stream);
  SPARK_ASSIGN_OR_RETURN(Plan * bf16_plan, GetPlan(Kind::kFp8RowScaledBf16Out, m, n, k));
  if (!bf16_plan->supported || bf16_scratch == nullptr) {
    return Unimplemented("cuBLASLt FP8 per-channel x per-token GEMM m=" + std::to_string(m) +
                         " n=" + std::to_string(n) + " k=" + std::to_string(k) +
                         ": fp32 output: " + plan->why + "; bf16 output: " + bf16_plan->why);
  }
  SPARK_RETURN_IF_ERROR(Run(bf16_plan, w, xq, bf16_scratch, w_scale, x_scale, stream));
  SPARK_CUDA_RETURN_IF_ERROR(Bf16ToF32(bf16_scratch, m * n, y, stream));
  return Status::Ok();
}

}  // namespace spark::cuda
