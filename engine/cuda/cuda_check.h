// The one checking macro for CUDA runtime calls.
//
// SPARK_CUDA_RETURN_IF_ERROR(expr): evaluates a cudaError_t expression; on failure returns a
//   spark::Status naming the statement, file, line and CUDA's error string.
// SPARK_CUDA_CHECK(expr): the same for broken invariants (aborts).
// SPARK_CUBLAS_RETURN_IF_ERROR(expr): the same for cublasStatus_t (cuBLASLt calls).
// SPARK_NCCL_RETURN_IF_ERROR(expr): the same for ncclResult_t (NCCL calls; ncclInProgress is not
//   an error: non-blocking communicators return it while an operation is still being set up).
// Kernels themselves return cudaError_t (raw pointers + stream); these macros are for callers.
//
// Thread safety: stateless.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <nccl.h>

#include <string>

#include "common/check.h"
#include "common/status.h"

namespace spark::cuda {

inline Status CudaError(cudaError_t err, const char* expr, const char* file, int line) {
  return Internal(std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

inline Status CublasError(cublasStatus_t err, const char* expr, const char* file, int line) {
  return Internal(std::string(expr) + " failed at " + file + ":" + std::to_string(line) + ": " +
                  cublasLtGetStatusName(err) + ": " + cublasLtGetStatusString(err));
}

inline Status NcclError(ncclResult_t err, const char* expr, const char* file, int line) {
  return Internal(std::string(expr) + " failed at " + file + ":" + std::to_string(line) +
                  ": NCCL: " + ncclGetErrorString(err));
}

}  // namespace spark::cuda

#define SPARK_CUDA_RETURN_IF_ERROR(expr)                                           \
  do {                                                                             \
    cudaError_t spark_cuda_err_ = (expr);                                          \
    if (spark_cuda_err_ != cudaSuccess)                                            \
      return ::spark::cuda::CudaError(spark_cuda_err_, #expr, __FILE__, __LINE__); \
  } while (0)

#define SPARK_CUDA_CHECK(expr)                                   \
  do {                                                           \
    cudaError_t spark_cuda_err_ = (expr);                        \
    SPARK_CHECK(spark_cuda_err_ == cudaSuccess)                  \
        << #expr << ": " << cudaGetErrorString(spark_cuda_err_); \
  } while (0)

#define SPARK_CUBLAS_RETURN_IF_ERROR(expr)                                            \
  do {                                                                                \
    cublasStatus_t spark_cublas_st_ = (expr);                                         \
    if (spark_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                    \
      return ::spark::cuda::CublasError(spark_cublas_st_, #expr, __FILE__, __LINE__); \
  } while (0)

#define SPARK_NCCL_RETURN_IF_ERROR(expr)                                           \
  do {                                                                             \
    ncclResult_t spark_nccl_res_ = (expr);                                         \
    if (spark_nccl_res_ != ncclSuccess && spark_nccl_res_ != ncclInProgress)       \
      return ::spark::cuda::NcclError(spark_nccl_res_, #expr, __FILE__, __LINE__); \
  } while (0)
