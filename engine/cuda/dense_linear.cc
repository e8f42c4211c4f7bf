#include "engine/cuda/dense_linear.h"

#include <algorithm>
#include <string>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/fp8_convert.h"
#include "engine/cuda/gemv.h"

namespace spark::cuda {
namespace {

constexpr int64_t kLtWorkspaceBytes = int64_t{32} << 20;
constexpr int64_t kGemvPartialBytes = int64_t{64} << 20;
// GEMV output blocks whose K splits reduce in the kernel (32 outputs each: 262,144 outputs).
constexpr int64_t kGemvCounters = 8192;

}  // namespace

const char* LinearPathName(LinearPath path) {
  switch (path) {
    case LinearPath::kGemv:
      return "gemv";
    case LinearPath::kLtBf16:
      return "cublaslt_bf16";
    case LinearPath::kLtFp8:
      return "cublaslt_fp8_outer_vec";
    case LinearPath::kDequantLtBf16:
      return "dequant_cublaslt_bf16";
    case LinearPath::kGemvSlices:
      return "gemv_slices";
    case LinearPath::kCount:
      break;
  }
  return "?";
}

Result<std::unique_ptr<DenseLinear>> DenseLinear::Create(const DenseLinearLimits& limits) {
  std::unique_ptr<DenseLinear> d(new DenseLinear());
  d->limits_ = limits;
  d->limits_.gemv_max_rows = std::clamp(limits.gemv_max_rows, 0, kGemvMaxRows);
  SPARK_ASSIGN_OR_RETURN(d->lt_, LtGemm::Create(kLtWorkspaceBytes));
  d->workspace_bytes_ = kLtWorkspaceBytes;
  d->gemv_partial_floats_ = kGemvPartialBytes / 4;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&d->gemv_partial_, kGemvPartialBytes));
  d->workspace_bytes_ += kGemvPartialBytes;
  SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&d->gemv_counters_, kGemvCounters * sizeof(int32_t)));
  SPARK_CUDA_RETURN_IF_ERROR(cudaMemset(d->gemv_counters_, 0, kGemvCounters * sizeof(int32_t)));
  d->workspace_bytes_ += kGemvCounters * sizeof(int32_t);
  if (limits.max_fp8_weight_elems > 0) {
    const int64_t q_bytes = limits.max_rows * limits.max_in;
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMalloc(&d->x_q_, static_cast<size_t>(std::max<int64_t>(q_bytes, 16))));
    SPARK_CUDA_RETURN_IF_ERROR(
        cudaMalloc(&d->x_scale_, static_cast<size_t>(std::max<int64_t>(limits.max_rows, 1)) * 4));
    const int64_t deq = limits.max_fp8_weight_elems * 2;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&d->dequant_, static_cast<size_t>(deq)));
    const int64_t out_bytes = limits.max_rows * std::max<int64_t>(limits.max_fp8_out, 1) * 2;
    SPARK_CUDA_RETURN_IF_ERROR(cudaMalloc(&d->fp8_out_, static_cast<size_t>(out_bytes)));
    d->workspace_bytes_ += q_bytes + limits.max_rows * 4 + deq + out_bytes;
  }
  return d;
}

DenseLinear::~DenseLinear() {
  if (gemv_partial_) cudaFree(gemv_partial_);
  if (gemv_counters_) cudaFree(gemv_counters_);
  if (x_q_) cudaFree(x_q_);
  if (x_scale_) cudaFree(x_scale_);
  if (dequant_) cudaFree(dequant_);
  if (fp8_out_) cudaFree(fp8_out_);
}

void DenseLinear::SetGemvDequant(const DeviceLinear& w, Fp8Dequant dequant) {
  for (ShapeDequant& e : gemv_dequant_) {
    if (SameLayout(e.layout, w)) {
      e.dequant = dequant;
      return;
    }
  }
  DeviceLinear layout = w;
  layout.data = nullptr;  // only the layout is kept
  layout.scale = nullptr;
  gemv_dequant_.push_back({layout, dequant});
}

Fp8Dequant DenseLinear::GemvDequantFor(const DeviceLinear& w) const {
  for (const ShapeDequant& e : gemv_dequant_) {
    if (SameLayout(e.layout, w)) return e.dequant;
  }
  return limits_.gemv_fp8_dequant;
}

Status DenseLinear::RunGemv(const DeviceLinear& w, const __nv_bfloat16* x, int64_t rows, float* y,
                            cudaStream_t stream) {
  const Fp8Dequant dequant = GemvDequantFor(w);
  int splits = GemvKSplits(w, limits_.sms, static_cast<int>(rows), dequant);
  const int64_t per_split = rows * w.out;
  splits = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(splits, gemv_partial_floats_ / std::max<int64_t>(per_split, 1))));
  SPARK_CUDA_RETURN_IF_ERROR(Gemv(w, x, static_cast<int>(rows), nullptr, splits, gemv_partial_, y,
                                  stream, gemv_counters_, kGemvCounters, dequant));
  return Status::Ok();
}

Status DenseLinear::Run(const DeviceLinear& w, const __nv_bfloat16* x, int64_t rows, float* y,
                        cudaStream_t stream) {
  if (rows <= 0 || w.out == 0) return Status::Ok();
  if (rows > limits_.max_rows || w.in > limits_.max_in) {
    return InvalidArgument("dense linear of " + std::to_string(rows) + " rows x in " +
                           std::to_string(w.in) + " exceeds the workspace (" +
                           std::to_string(limits_.max_rows) + " rows, in " +
                           std::to_string(limits_.max_in) + ")");
  }
  const bool gemv_ok = GemvSupports(w);
  auto done = [&](LinearPath path) {
    last_path_ = path;
    ++counts_[static_cast<int>(path)];
    return Status::Ok();
  };
  const int preferred = w.type == WeightType::kBF16
                            ? limits_.gemv_bf16_rows
                            : (w.scale_kind == WeightScale::kPerChannel && limits_.fp8_activations
                                   ? limits_.gemv_fp8_rows
                                   : limits_.gemv_max_rows);
  if (rows <= std::min(preferred, kGemvMaxRows) && gemv_ok) {
    SPARK_RETURN_IF_ERROR(RunGemv(w, x, rows, y, stream));
    return done(LinearPath::kGemv);
  }
  Status st = Unimplemented("no cuBLASLt path");
  if (w.type == WeightType::kBF16) {
    st = lt_->Bf16(static_cast<const __nv_bfloat16*>(w.data), x, rows, w.out, w.in, y, stream);
    if (st.ok()) return done(LinearPath::kLtBf16);
  } else {
    if (limits_.fp8_activations && w.scale_kind == WeightScale::kPerChannel && x_q_ != nullptr) {
      SPARK_CUDA_RETURN_IF_ERROR(QuantizePerToken(x, rows, w.in, x_q_, x_scale_, stream));
      st = lt_->Fp8RowScaled(static_cast<const uint8_t*>(w.data), w.scale, x_q_, x_scale_, rows,
                             w.out, w.in, y, w.out <= limits_.max_fp8_out ? fp8_out_ : nullptr,
                             stream);
      if (st.ok()) return done(LinearPath::kLtFp8);
      if (st.code() != StatusCode::kUnimplemented) return st;
      fp8_fallback_reason_ = st.message();
    }
    if (rows <= limits_.gemv_max_rows && gemv_ok) {
      SPARK_RETURN_IF_ERROR(RunGemv(w, x, rows, y, stream));
      return done(LinearPath::kGemv);
    }
    if (dequant_ != nullptr && w.out * w.in <= limits_.max_fp8_weight_elems) {
      SPARK_CUDA_RETURN_IF_ERROR(DequantizeWeight(w, dequant_, stream));
      st = lt_->Bf16(dequant_, x, rows, w.out, w.in, y, stream);
      if (st.ok()) return done(LinearPath::kDequantLtBf16);
    }
  }
  if (st.code() != StatusCode::kUnimplemented) return st;
  if (!gemv_ok) {
    return Unimplemented("dense linear [" + std::to_string(w.out) + ", " + std::to_string(w.in) +
                         "] with " + std::to_string(rows) +
                         " rows: no cuBLASLt algorithm and the GEMV kernel needs in % 16 == 0 (" +
                         st.message() + ")");
  }
  for (int64_t r = 0; r < rows; r += kGemvMaxRows) {
    const int64_t n = std::min<int64_t>(kGemvMaxRows, rows - r);
    SPARK_RETURN_IF_ERROR(RunGemv(w, x + r * w.in, n, y + r * w.out, stream));
  }
  return done(LinearPath::kGemvSlices);
}

}  // namespace spark::cuda
