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

// How the one-row FP8 kernel turns E4M3 weights into products: the hardware conversion
// (E4M3x2 -> half2 -> float2, FMAs on the CUDA cores), integer bit placement (Fp8x4ScaledFloats
// in device_math.cuh, sums scaled back by 2^120), or kHalfMma: E4M3x2 -> f16x2 into mma.sync
// fragments, the activations staged as f16 times a power of two, fp32 sums on the tensor cores
// (engine/cuda/fp8_mma_dot.cuh; weights with K % 64 == 0, block scales of whole 64-element
// steps and 16 rows, else the conversion kernel runs). All give float(q) * x exactly and differ
// only in fp32 summation order (and where partial sums leave fp32's normal range). Bit placement
// measured 10-35% slower than the conversion on an H100 (2026-12-07).
// kConvertSweep: the hardware conversion with whole rows per block and the row groups swept by a
// persistent grid (blocks read one compact stretch of the weights at a time; no K splits, K up
// to 16,384), else kConvert.
enum class Fp8Dequant { kConvert, kScaledBits, kHalfMma, kConvertSweep };
constexpr Fp8Dequant kGemvFp8DequantDefault = Fp8Dequant::kConvert;

// Chooses the K split for a weight on a device with `sms` multiprocessors and `rows` activation
// rows.
int GemvKSplits(const DeviceLinear& w, int sms, int rows,
                Fp8Dequant dequant = kGemvFp8DequantDefault);

// Warps per 16-row group of the tensor-core kernel (Fp8Dequant::kHalfMma) by default: 8, one
// group per block (H100, 2026-12-07, weights in registers: the fastest at three of the four
// GLM-4.5-Air / GLM-4.7 tp=4 q/k/v and o shapes, within 4% at the fourth).
constexpr int kGemvMmaSlicesDefault = 8;

// Thread blocks of the kernel that Gemv launches for `w` and `rows` that fit on one
// multiprocessor at once (registers, threads); 0 when the occupancy query fails.
int GemvResidentBlocksPerSm(const DeviceLinear& w, int rows,
                            Fp8Dequant dequant = kGemvFp8DequantDefault);

// Thread blocks Gemv launches for `w`, `rows` and `k_splits` (the K chunk rounded as Gemv does).
int64_t GemvBlocks(const DeviceLinear& w, int rows, int k_splits,
                   Fp8Dequant dequant = kGemvFp8DequantDefault, int mma_slices = 0);

// True when the GEMV kernel supports this weight's shape and layout.
bool GemvSupports(const DeviceLinear& w);

// `counters` (optional, `num_counters` ints, zero on entry and left zero): with them the
// one-row FP8 kernel sums its K splits itself (the last block of each output range, in split
// order: the same result) instead of a second kernel. `mma_slices` (1, 2, 4 or 8; 0 =
// kGemvMmaSlicesDefault) sets the tensor-core kernel's warps per row group, `mma_stages` (4, 6 or
// 8; 0 = 6) the depth of its per-warp weight ring in shared memory (steps of 1 KB per warp in
// flight).
cudaError_t Gemv(const DeviceLinear& w, const __nv_bfloat16* x, int rows, const float* bias,
                 int k_splits, float* partial, float* y, cudaStream_t stream,
                 int32_t* counters = nullptr, int64_t num_counters = 0,
                 Fp8Dequant dequant = kGemvFp8DequantDefault, int mma_slices = 0,
                 int mma_stages = 0);

}  // namespace spark::cuda
