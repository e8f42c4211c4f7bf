// Split-K GEMV for small batches (decode): y[m, n] = sum_k x[m, k] * W[n, k] (+ bias[n]) for
// m < rows <= 16, BF16 activations, BF16 or FP8 (per-channel / block) weights, fp32
// accumulation, fp32 output. BF16 and several rows: weights dequantised element by element
// (float(q) * scale, like the CPU); one row of FP8: sum_k float(q) * x per 16-element vector,
// times the block scale per vector or the channel scale per output (equal up to rounding).
//
// Each warp streams one weight row in 16-byte vectors (four rows at a time for one row of FP8
// activations, sharing the activation conversions); the K dimension is split over
// `k_splits` blocks whose partial sums go to `partial` ([k_splits, rows, out] fp32) and are
// summed in a fixed order by a second kernel, so results are deterministic. With k_splits == 1
// no partial buffer is needed. Requirements: in % 16 == 0 (FP8) / in % 8 == 0 (BF16), 16-byte
// aligned x and weights; block FP8 needs block_k % 16 == 0.
// Raw device pointers; stream-ordered; callers own all buffers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "engine/cuda/device_linear.h"

namespace spark::cuda {

constexpr int kGemvMaxRows = 16;

// How the one-row FP8 kernel turns E4M3 weights into floats: the hardware conversion
// (E4M3x2 -> half2 -> float2) or integer bit placement (Fp8x4ScaledFloats in device_math.cuh,
// sums scaled back by 2^120). Both give float(q) exactly; the sums differ only where partial sums
// fall below fp32's normal range. The conversion is the default: bit placement measured 10-35%
// slower on an H100 (2026-12-07).
enum class Fp8Dequant { kConvert, kScaledBits };
constexpr Fp8Dequant kGemvFp8DequantDefault = Fp8Dequant::kConvert;

// Chooses the K split for a weight on a device with `sms` multiprocessors and `rows` activation
// rows.
int GemvKSplits(const DeviceLinear& w, int sms, int rows);

// Thread blocks of the kernel that Gemv launches for `w` and `rows` that fit on one
// multiprocessor at once (registers, threads); 0 when the occupancy query fails.
int GemvResidentBlocksPerSm(const DeviceLinear& w, int rows,
                            Fp8Dequant dequant = kGemvFp8DequantDefault);

// Thread blocks Gemv launches for `w`, `rows` and `k_splits` (the K chunk rounded as Gemv does).
int64_t GemvBlocks(const DeviceLinear& w, int rows, int k_splits);

// True when the GEMV kernel supports this weight's shape and layout.
bool GemvSupports(const DeviceLinear& w);

// `counters` (optional, `num_counters` ints, zero on entry and left zero): with them the
// one-row FP8 kernel sums its K splits itself (the last block of each output range, in split
// order: the same result) instead of a second kernel.
cudaError_t Gemv(const DeviceLinear& w, const __nv_bfloat16* x, int rows, const float* bias,
                 int k_splits, float* partial, float* y, cudaStream_t stream,
                 int32_t* counters = nullptr, int64_t num_counters = 0,
                 Fp8Dequant dequant = kGemvFp8DequantDefault);

}  // namespace spark::cuda
