// Tensor-core dot products of FP8 E4M3 weight rows with one activation vector, for the one-token
// GEMVs (engine/cuda/gemv.cu, engine/cuda/moe_gemv.cu).
//
// The CUDA-core GEMVs spend about three instructions per weight byte on conversions and FMAs
// (E4M3x2 -> half2, half -> float, one FMA per weight), more than an H100 can issue at its memory
// bandwidth. Here the weights go E4M3x2 -> f16x2 (one hardware conversion per two weights)
// straight into mma.sync m16n8k16 A fragments and the tensor cores form and sum the products in
// fp32: one conversion per two weights and one mma per 256.
//
// Activations: a block stages its slice of x in shared memory as f16 times 2^e, e chosen so the
// largest magnitude lands in [2^14, 2^15) (StageScaledHalf); every BF16 value within 2^29 of that
// largest one is exact in f16, the products of two f16 are exact in fp32, so the sums equal the
// CUDA-core kernels' up to fp32 summation order. Multiply the sums by the returned 2^-e.
//
// Layout: a warp takes 16 weight rows in 64-element steps. Lane (g, q) = (lane / 4, lane % 4)
// loads 16 bytes of rows g and g + 8 at K offset 16q of the step (LoadStep); the four mmas of a
// step use a permutation of K within the step that the activation fragment (16 f16 at offset
// 16q, the same for every g) follows. Column 0 of the product is the dot product: lane 4g holds
// rows g (c[0]) and g + 8 (c[2]); the other columns repeat it and are ignored.
//
// Device-only inline functions; no state. Shared memory is the caller's.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "engine/cuda/device_math.cuh"

namespace spark::cuda::fp8_mma {

constexpr int kStepElems = 64;  // K elements of a row one warp step covers (4 lanes x 16)
constexpr int kRows = 16;       // weight rows of one warp

// Largest |v| of eight BF16 values (raw) folded into amax.
__device__ __forceinline__ float AbsMax8(const uint4& raw, float amax) {
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(b[e]);
    amax = fmaxf(amax, fmaxf(fabsf(f.x), fabsf(f.y)));
  }
  return amax;
}

// The staging exponent e for a largest magnitude amax: amax * 2^e in [2^14, 2^15); 0 for zero or
// a non-finite amax.
__device__ __forceinline__ int StagingExponent(float amax) {
  if (!(amax > 0.f) || !isfinite(amax)) return 0;
  int e2 = 0;
  frexpf(amax, &e2);  // amax = m * 2^e2, m in [0.5, 1)
  return min(max(15 - e2, -126), 126);
}

// Eight BF16 values (raw, in place) -> f16(v * scale).
__device__ __forceinline__ void ScaleToHalf8(uint4& raw, float scale) {
  const __nv_bfloat162* b = reinterpret_cast<const __nv_bfloat162*>(&raw);
  uint32_t h[4];
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const float2 f = __bfloat1622float2(b[e]);
    const __half2 v = __floats2half2_rn(f.x * scale, f.y * scale);
    h[e] = *reinterpret_cast<const uint32_t*>(&v);
  }
  raw = make_uint4(h[0], h[1], h[2], h[3]);
}

// xs[c] = raw BF16 chunks c = first, first + stride, ... of x (through L2: callers may stage an
// input completed two launches back before their programmatic wait); returns their largest
// magnitude.
__device__ __forceinline__ float CopyChunks(const __nv_bfloat16* __restrict__ x, int chunks,
                                            int first, int stride, __half* __restrict__ xs) {
  const uint4* src = reinterpret_cast<const uint4*>(x);
  uint4* dst = reinterpret_cast<uint4*>(xs);
  float amax = 0.f;
  for (int c = first; c < chunks; c += stride) {
    const uint4 raw = __ldcg(src + c);
    dst[c] = raw;  // BF16 bits for now; the same thread converts them (ConvertChunks)
    amax = AbsMax8(raw, amax);
  }
  return amax;
}

// The chunks CopyChunks copied, converted in place to f16 times 2^exponent; returns 2^-exponent.
__device__ __forceinline__ float ConvertChunks(int chunks, int first, int stride, int exponent,
                                               __half* __restrict__ xs) {
  uint4* dst = reinterpret_cast<uint4*>(xs);
  const float scale = ldexpf(1.f, exponent);
  for (int c = first; c < chunks; c += stride) {
    uint4 raw = dst[c];
    ScaleToHalf8(raw, scale);
    dst[c] = raw;
  }
  return ldexpf(1.f, -exponent);
}

// Block-wide: xs[i] = f16(x[i] * 2^e) for i < count (count % 8 == 0; x and xs 16-byte aligned),
// with e such that max |x| * 2^e is in [2^14, 2^15) (0 for an all-zero or non-finite x, which
// then propagates as in fp32). Returns 2^-e. Every thread of the block calls it; `scratch` is
// 32 floats of shared memory; ends with a barrier, after which xs is ready. x is read through L2
// (never a stale L1 line), so a kernel may stage an input completed two launches back before its
// programmatic wait.
__device__ __forceinline__ float StageScaledHalf(const __nv_bfloat16* __restrict__ x, int count,
                                                 __half* __restrict__ xs, float* scratch) {
  const int chunks = count / 8;
  float amax = WarpMax(CopyChunks(x, chunks, threadIdx.x, blockDim.x, xs));
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  if (lane == 0) scratch[warp] = amax;
  __syncthreads();
  amax = WarpMax(lane < static_cast<int>(blockDim.x >> 5) ? scratch[lane] : 0.f);
  const float unscale = ConvertChunks(chunks, threadIdx.x, blockDim.x, StagingExponent(amax), xs);
  __syncthreads();
  return unscale;
}

// Warp-wide StageScaledHalf of one vector (its own exponent), without a barrier: the caller syncs
// before other warps read xs. Returns 2^-e in every lane.
__device__ __forceinline__ float StageScaledHalfWarp(const __nv_bfloat16* __restrict__ x, int count,
                                                     __half* __restrict__ xs) {
  const int lane = threadIdx.x & 31;
  const int chunks = count / 8;
  const float amax = WarpMax(CopyChunks(x, chunks, lane, 32, xs));
  return ConvertChunks(chunks, lane, 32, StagingExponent(amax), xs);
}

// The 32 weight bytes one lane takes of a step: rows g and g + 8.
struct StepBytes {
  uint4 lo;  // row g
  uint4 hi;  // row g + 8
};

// Loads the step at element `k` of rows g (`row_g`) and g + 8 (`row_g8`) for this lane.
__device__ __forceinline__ StepBytes LoadStep(const uint8_t* row_g, const uint8_t* row_g8,
                                              int64_t k) {
  const int q = threadIdx.x & 3;
  return {__ldg(reinterpret_cast<const uint4*>(row_g + k + 16 * q)),
          __ldg(reinterpret_cast<const uint4*>(row_g8 + k + 16 * q))};
}

// Bytes of one warp's ring slot: 32 lanes x the 32 bytes of a step.
constexpr int kSlotBytes = 32 * 32;

// Copies the step at element `k` of rows g and g + 8 for this lane into its 32 bytes of a ring
// slot (`slot`: the slot's shared address + 32 * lane) with cp.async, bypassing the registers
// and L1 (the caller commits and waits; weights only, so it may run before the programmatic
// wait).
__device__ __forceinline__ void CopyStepAsync(uint32_t slot, const uint8_t* row_g,
                                              const uint8_t* row_g8, int64_t k) {
  const int q = threadIdx.x & 3;
  // "memory": the compiler must not move this lane's earlier reads of the slot below the copy.
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(slot), "l"(row_g + k + 16 * q)
               : "memory");
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(slot + 16),
               "l"(row_g8 + k + 16 * q)
               : "memory");
}

// This lane's step from its 32 bytes of a ring slot (after the copy's group completed).
__device__ __forceinline__ StepBytes ReadStep(const uint8_t* slot) {
  return {*reinterpret_cast<const uint4*>(slot), *reinterpret_cast<const uint4*>(slot + 16)};
}

// A warp's ring of kStages steps in shared memory (kStages * kSlotBytes bytes at `warp_ring`,
// 16-byte aligned), filled by cp.async: Push copies a step (or nothing) as one commit group, Pop
// waits for the oldest group and returns this lane's step. Use: kStages - 1 Pushes, then per step
// one Push (of the step kStages - 1 ahead, or nothing) before its Pop; each Pop frees the slot the
// next Push fills. One group per Push keeps the wait count fixed.
template <int kStages>
class StepRing {
 public:
  __device__ explicit StepRing(uint8_t* warp_ring)
      : lane_bytes_(warp_ring + 32 * (threadIdx.x & 31)),
        addr_(static_cast<uint32_t>(__cvta_generic_to_shared(lane_bytes_))) {}

  __device__ void Push(const uint8_t* row_g, const uint8_t* row_g8, int64_t k) {
    CopyStepAsync(addr_ + tail_ * kSlotBytes, row_g, row_g8, k);
    PushEmpty();
  }
  __device__ void PushEmpty() {
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    tail_ = tail_ == kStages - 1 ? 0 : tail_ + 1;
  }
  __device__ StepBytes Pop() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kStages - 1) : "memory");
    const StepBytes bytes = ReadStep(lane_bytes_ + head_ * kSlotBytes);
    head_ = head_ == kStages - 1 ? 0 : head_ + 1;
    return bytes;
  }
  // Waits for every copy (before the ring's memory is reused or the block exits).
  __device__ void Drain() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

 private:
  uint8_t* lane_bytes_;
  uint32_t addr_;
  int head_ = 0;
  int tail_ = 0;
};

// The two E4M3 pairs of a 32-bit word as f16x2: bytes 0-1 -> lo, 2-3 -> hi (low byte to the low
// half).
__device__ __forceinline__ void E4m3WordToHalf2x2(uint32_t word, uint32_t& lo, uint32_t& hi) {
  asm("{\n"
      "  .reg .b16 l, h;\n"
      "  mov.b32 {l, h}, %2;\n"
      "  cvt.rn.f16x2.e4m3x2 %0, l;\n"
      "  cvt.rn.f16x2.e4m3x2 %1, h;\n"
      "}\n"
      : "=r"(lo), "=r"(hi)
      : "r"(word));
}

// c += (rows g, g + 8 of the step) x (xs_step[0 .. 64)), fp32 sums. xs_step: the activation
// column this lane supplies to the B fragment (column g), in shared memory at the step's first
// element; the same for every lane when there is one activation vector.
__device__ __forceinline__ void MmaStep(const StepBytes& w, const __half* xs_step, float (&c)[4]) {
  const int q = threadIdx.x & 3;
  const uint4 x0 = *reinterpret_cast<const uint4*>(xs_step + 16 * q);
  const uint4 x1 = *reinterpret_cast<const uint4*>(xs_step + 16 * q + 8);
  const uint32_t xb[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
  const uint32_t wl[4] = {w.lo.x, w.lo.y, w.lo.z, w.lo.w};
  const uint32_t wh[4] = {w.hi.x, w.hi.y, w.hi.z, w.hi.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    // Word j holds elements 4j .. 4j+3: (4j, 4j+1) fill K slots 2q, 2q+1 and (4j+2, 4j+3) slots
    // 2q+8, 2q+9 of mma j, as x's pairs xb[2j] and xb[2j+1] do in the B fragment.
    uint32_t a[4];
    E4m3WordToHalf2x2(wl[j], a[0], a[2]);
    E4m3WordToHalf2x2(wh[j], a[1], a[3]);
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(xb[2 * j]), "r"(xb[2 * j + 1]));
  }
}

// A warp's 16 rows streamed over the steps [s_begin, s_end) (step st at element st * kStepElems
// of `row_g` / `row_g8`, this lane's rows g and g + 8) through `ring`: PrimeSteps pushes the first
// kStages - 1 (weights only, so a kernel may prime before its programmatic wait), StreamSteps
// pushes the rest kStages - 1 ahead as it sums: acc += rows x xs[st * kStepElems ..) per step,
// each step's sums times step_scale(st) when kScaled (block scales), then drains the ring.
template <int kStages>
__device__ __forceinline__ void PushStep(StepRing<kStages>& ring, const uint8_t* row_g,
                                         const uint8_t* row_g8, int st, int s_end) {
  if (st < s_end) {
    ring.Push(row_g, row_g8, int64_t{st} * kStepElems);
  } else {
    ring.PushEmpty();
  }
}

template <int kStages>
__device__ __forceinline__ void PrimeSteps(StepRing<kStages>& ring, const uint8_t* row_g,
                                           const uint8_t* row_g8, int s_begin, int s_end) {
#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) PushStep(ring, row_g, row_g8, s_begin + i, s_end);
}

template <bool kScaled, int kStages, class StepScale>
__device__ __forceinline__ void StreamSteps(StepRing<kStages>& ring, const uint8_t* row_g,
                                            const uint8_t* row_g8, int s_begin, int s_end,
                                            const __half* xs, float (&acc)[4],
                                            StepScale&& step_scale) {
  for (int st = s_begin; st < s_end; ++st) {
    PushStep(ring, row_g, row_g8, st + kStages - 1, s_end);
    const StepBytes bytes = ring.Pop();
    if constexpr (kScaled) {
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      MmaStep(bytes, xs + st * kStepElems, c);
      const float sc = step_scale(st);
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[i] = fmaf(sc, c[i], acc[i]);
    } else {
      MmaStep(bytes, xs + st * kStepElems, acc);
    }
  }
  ring.Drain();
}

// Column 0 of a warp's 16 x 8 product (rows g: v_g, g + 8: v_g8, held by the lanes with
// q == 0) into `rows` (16 floats of shared memory).
__device__ __forceinline__ void StoreColumn0(float* rows, float v_g, float v_g8) {
  const int lane = threadIdx.x & 31;
  if ((lane & 3) == 0) {
    rows[lane >> 2] = v_g;
    rows[(lane >> 2) + 8] = v_g8;
  }
}

}  // namespace spark::cuda::fp8_mma
