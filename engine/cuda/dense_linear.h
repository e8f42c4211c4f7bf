// DenseLinear: y[rows, out] (fp32) = x[rows, in] (BF16) . W^T for the backend's dense layers,
// choosing the kernel per batch size and weight format (thresholds from measurements on an
// H200: cuBLASLt BF16 streams ~3.7 TB/s already at M = 1..16, the GEMV as much at M = 1 only;
// the GEMV beats cuBLASLt FP8 at M = 1):
//   BF16,            rows <= gemv_bf16_rows   own split-K GEMV
//   BF16,            larger                   cuBLASLt BF16
//   FP8 per-channel, rows <= gemv_fp8_rows    own split-K GEMV (exact dequantisation)
//   FP8 per-channel, larger                   per-token FP8 quantisation of x + cuBLASLt FP8
//                                             with OUTER_VEC scales (fp8_activations, when the
//                                             device has an algorithm)
//   FP8 block / no FP8 algorithm: rows <= gemv_max_rows the GEMV, else the weight dequantised
//                                             to BF16 in a scratch buffer + cuBLASLt BF16
// and, when cuBLASLt has no algorithm at all for a shape, the GEMV over 16-row slices.
//
// Thread safety: one owner thread. Ownership: owns its workspaces and the cuBLASLt handle.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/cuda/device_linear.h"
#include "engine/cuda/gemv.h"
#include "engine/cuda/lt_gemm.h"

namespace spark::cuda {

struct DenseLinearLimits {
  int64_t max_rows = 0;              // rows of one call
  int64_t max_in = 0;                // largest `in` of any weight
  int64_t max_out = 0;               // largest `out`
  int64_t max_fp8_weight_elems = 0;  // largest FP8 weight (out * in), 0 when none
  int sms = 1;                       // multiprocessors of the device
  int64_t max_fp8_out = 0;           // largest `out` of an FP8 weight
  int gemv_max_rows = 16;
  int gemv_bf16_rows = 0;
  int gemv_fp8_rows = 1;
  bool fp8_activations = true;
  Fp8Dequant gemv_fp8_dequant = kGemvFp8DequantDefault;  // the one-row FP8 GEMV's (gemv.h)
};

enum class LinearPath : int { kGemv, kLtBf16, kLtFp8, kDequantLtBf16, kGemvSlices, kCount };
const char* LinearPathName(LinearPath path);

class DenseLinear {
 public:
  static Result<std::unique_ptr<DenseLinear>> Create(const DenseLinearLimits& limits);
  ~DenseLinear();
  DenseLinear(const DenseLinear&) = delete;
  DenseLinear& operator=(const DenseLinear&) = delete;

  Status Run(const DeviceLinear& w, const __nv_bfloat16* x, int64_t rows, float* y,
             cudaStream_t stream);
  // The path the last Run took, and how often each path ran.
  LinearPath last_path() const { return last_path_; }
  int64_t path_count(LinearPath path) const { return counts_[static_cast<int>(path)]; }
  int64_t workspace_bytes() const { return workspace_bytes_; }

  // The one-row FP8 GEMV's dequantisation for weights of `w`'s shape and scaling (out, in, scale
  // kind and block): set by the dense GEMV tuner (engine/cuda/dense_gemv_tuner.h), else
  // limits.gemv_fp8_dequant. Not while a Run is in flight on another thread.
  void SetGemvDequant(const DeviceLinear& w, Fp8Dequant dequant);
  Fp8Dequant GemvDequantFor(const DeviceLinear& w) const;
  // Why the last cuBLASLt FP8 attempt fell back (empty when it ran or was not tried).
  const std::string& fp8_fallback_reason() const { return fp8_fallback_reason_; }

 private:
  struct ShapeDequant {
    DeviceLinear layout;  // type, shape and scaling (no pointers)
    Fp8Dequant dequant;
  };
  DenseLinear() = default;
  Status RunGemv(const DeviceLinear& w, const __nv_bfloat16* x, int64_t rows, float* y,
                 cudaStream_t stream);

  DenseLinearLimits limits_;
  std::unique_ptr<LtGemm> lt_;
  float* gemv_partial_ = nullptr;
  int32_t* gemv_counters_ = nullptr;  // split arrivals per GEMV output block (zero when idle)
  int64_t gemv_partial_floats_ = 0;
  uint8_t* x_q_ = nullptr;
  float* x_scale_ = nullptr;
  __nv_bfloat16* dequant_ = nullptr;
  __nv_bfloat16* fp8_out_ = nullptr;  // BF16 output of cuBLASLt FP8 when fp32 is not offered
  int64_t workspace_bytes_ = 0;
  LinearPath last_path_ = LinearPath::kGemv;
  std::string fp8_fallback_reason_;
  std::vector<ShapeDequant> gemv_dequant_;  // a few entries: one per tuned weight shape
  int64_t counts_[static_cast<int>(LinearPath::kCount)] = {};
};

}  // namespace spark::cuda
