#include "engine/cuda/moe_grouped.h"

#include <algorithm>

#include "engine/cuda/fp8_mma_dot.cuh"
#include "engine/cuda/kernel_smem.h"
#include "engine/cuda/moe_scale_rows.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda::moe_internal {
namespace {

constexpr int kWarps = 8;
constexpr int kCols = kMoeGroupedCols;
static_assert(kWarps == kCols, "each warp stages one column");
constexpr int kRows = fp8_mma::kRows;
constexpr int kStep = fp8_mma::kStepElems;
constexpr int kUnroll = 4;  // steps (2 x 16 bytes per lane each) in flight
// f16 elements between staged columns beyond K: 16 bytes, so the 8 columns' fragment loads of a
// step fall in different banks.
constexpr int kColumnPad = 8;

constexpr bool IsFp8(MoeWeightFormat f) { return f != MoeWeightFormat::kBf16; }

// Dynamic shared memory of a kernel staging 8 columns of `k` elements.
size_t StagedBytes(int k) { return size_t{kCols} * (k + kColumnPad) * sizeof(__half); }

// grid (ceil(rows / (16 * groups)), mblocks), groups = kWarps / warps_per_group 16-row groups per
// block; the warps_per_group warps of a group take consecutive step ranges of K and their sums
// meet in shared memory in that order. rows / K: 2 Im / H for gate/up (interleaved gate_i, up_i
// rows), H / Im for down. Gate/up waits for the permutation (the preceding kernel) before it
// reads anything; down reads the group's expert (written two launches back) through L2 and issues
// its first weight loads before waiting for gate/up.
template <MoeWeightFormat F, MoeGemm G>
__global__ void __launch_bounds__(kWarps * 32)
    GroupedKernel(MoeGroupedParams p, const __nv_bfloat16* __restrict__ act,
                  const uint8_t* __restrict__ w, const float* __restrict__ scale,
                  __nv_bfloat16* __restrict__ inter_out, float* __restrict__ pair_out) {
  extern __shared__ uint4 grouped_smem[];
  __half* xs = reinterpret_cast<__half*>(grouped_smem);
  __shared__ float part[kWarps][kRows][kCols];
  __shared__ float unscale[kCols];
  __shared__ int32_t col_pair[kCols];
  constexpr bool kUp = G == MoeGemm::kGateUp;
  if constexpr (kUp) PdlBegin();
  const int mb = blockIdx.y;
  if (mb * kCols >= __ldcg(p.num_rows)) return;  // past the groups in use (uniform per block)
  const int rows = kUp ? 2 * p.inter : p.hidden;
  const int k_len = kUp ? p.hidden : p.inter;
  const int stride = k_len + kColumnPad;
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int q = lane & 3;
  const int64_t e = __ldcg(p.mblock_expert + mb);
  const int groups = kWarps / p.warps_per_group;
  const int group = warp % groups;
  const int slice = warp / groups;
  const int block_rows = groups * kRows;
  const int n0 = static_cast<int>(blockIdx.x) * block_rows + group * kRows;
  const int steps = k_len / kStep;
  const int per_slice = (steps + p.warps_per_group - 1) / p.warps_per_group;
  const int s_begin = min(steps, slice * per_slice);
  const int s_end = n0 < rows ? min(steps, s_begin + per_slice) : s_begin;
  // Rows past the end re-read the last row; their sums are never stored.
  const int ng = min(n0 + g, rows - 1);
  const int ng8 = min(n0 + g + 8, rows - 1);
  const uint8_t* base = w + e * rows * k_len;
  const uint8_t* wg = base + int64_t{ng} * k_len;
  const uint8_t* wg8 = base + int64_t{ng8} * k_len;
  // Block scales: rows g and g + 8 share one (for gate/up both gate or both up rows).
  const float* srow = nullptr;
  if constexpr (F == MoeWeightFormat::kFp8Block) {
    srow = kUp ? W13BlockScaleRow(scale, e, ng, p.hidden, p.inter)
               : W2BlockScaleRow(scale, e, ng, p.hidden, p.inter);
  }
  fp8_mma::StepBytes buf[kUnroll];
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    if (s_begin + u < s_end) buf[u] = fp8_mma::LoadStep(wg, wg8, int64_t{s_begin + u} * kStep);
  }
  if constexpr (!kUp) PdlBegin();  // inter comes from gate/up, the preceding kernel
  {
    // Warp c stages column c: the pair's token row of x (gate/up) or its padded inter row (down).
    const int r = mb * kCols + warp;
    const int pair = __ldcg(p.sorted_pairs + r);
    float us = 1.f;
    if (pair >= 0) {
      const __nv_bfloat16* src =
          kUp ? act + int64_t{pair / p.pairs_per_token} * p.hidden : act + int64_t{r} * p.inter;
      us = fp8_mma::StageScaledHalfWarp(src, k_len, xs + warp * stride);
    }
    if (lane == 0) {
      col_pair[warp] = pair;
      unscale[warp] = us;
    }
  }
  __syncthreads();
  const __half* xcol = xs + g * stride;  // this lane's B column
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int s = s_begin; s < s_end; s += kUnroll) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int st = s + u;
      if (st >= s_end) break;
      if constexpr (F == MoeWeightFormat::kFp8Block) {
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        fp8_mma::MmaStep(buf[u], xcol + st * kStep, c);
        const float sc = __ldg(srow + st * kStep / 128);
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[i] = fmaf(sc, c[i], acc[i]);
      } else {
        fp8_mma::MmaStep(buf[u], xcol + st * kStep, acc);
      }
      if (st + kUnroll < s_end) buf[u] = fp8_mma::LoadStep(wg, wg8, int64_t{st + kUnroll} * kStep);
    }
  }
  // Lane (g, q) holds rows g (acc 0, 1) and g + 8 (acc 2, 3) of columns 2q and 2q + 1.
  part[warp][g][2 * q] = acc[0];
  part[warp][g][2 * q + 1] = acc[1];
  part[warp][g + 8][2 * q] = acc[2];
  part[warp][g + 8][2 * q + 1] = acc[3];
  __syncthreads();
  auto sum = [&](int rl, int n) {  // row rl of the block, column n, over the group's warps
    float v = 0.f;
    for (int sl = 0; sl < p.warps_per_group; ++sl) {
      v += part[rl / kRows + sl * groups][rl % kRows][n];
    }
    return v * unscale[n];
  };
  const int row0 = static_cast<int>(blockIdx.x) * block_rows;
  if constexpr (kUp) {
    const int half = block_rows / 2;
    for (int it = threadIdx.x; it < half * kCols; it += blockDim.x) {
      const int n = it / half;
      const int row = row0 + 2 * (it % half);  // the gate row 2i; up is 2i + 1
      const int pair = col_pair[n];
      if (pair < 0 || row >= rows) continue;
      float gate = sum(row - row0, n);
      float up = sum(row - row0 + 1, n);
      if constexpr (F == MoeWeightFormat::kFp8PerChannel) {
        gate *= __ldg(scale + e * rows + row);
        up *= __ldg(scale + e * rows + row + 1);
      }
      inter_out[int64_t{mb * kCols + n} * p.inter + row / 2] =
          __float2bfloat16(gate / (1.f + expf(-gate)) * up);
    }
  } else {
    for (int it = threadIdx.x; it < block_rows * kCols; it += blockDim.x) {
      const int n = it / block_rows;
      const int row = row0 + it % block_rows;
      const int pair = col_pair[n];
      if (pair < 0 || row >= rows) continue;
      float v = sum(row - row0, n) * __ldg(p.weights + pair);
      if constexpr (F == MoeWeightFormat::kFp8PerChannel) v *= __ldg(scale + e * rows + row);
      pair_out[int64_t{pair} * p.hidden + row] = v;
    }
  }
}

bool Valid(const MoeGroupedParams& p) {
  const int wpg = p.warps_per_group;
  return IsFp8(p.format) && p.hidden % kStep == 0 && p.inter % kStep == 0 &&
         p.pairs_per_token > 0 && p.mblocks > 0 && p.mblocks <= 65535 &&
         (wpg == 1 || wpg == 2 || wpg == 4 || wpg == 8);
}

template <MoeGemm G>
cudaError_t Launch(const MoeGroupedParams& p, const __nv_bfloat16* act, const void* w,
                   const float* scale, __nv_bfloat16* inter_out, float* pair_out,
                   cudaStream_t stream) {
  if (!Valid(p)) return cudaErrorInvalidValue;
  const int rows = G == MoeGemm::kGateUp ? 2 * p.inter : p.hidden;
  const int k_len = G == MoeGemm::kGateUp ? p.hidden : p.inter;
  const int block_rows = kWarps / p.warps_per_group * kRows;
  const dim3 grid(static_cast<unsigned>((rows + block_rows - 1) / block_rows),
                  static_cast<unsigned>(p.mblocks));
  const size_t smem = StagedBytes(k_len);
  auto kernel = p.format == MoeWeightFormat::kFp8Block
                    ? GroupedKernel<MoeWeightFormat::kFp8Block, G>
                    : GroupedKernel<MoeWeightFormat::kFp8PerChannel, G>;
  if (const cudaError_t err = AllowDynamicSmem(kernel, smem); err != cudaSuccess) return err;
  LaunchKernel(kernel, grid, kWarps * 32, smem, stream, p, act, static_cast<const uint8_t*>(w),
               scale, inter_out, pair_out);
  return cudaGetLastError();
}

}  // namespace

int64_t MoeGroupedSmemBytes(int hidden, int inter) {
  // Dynamic (the staged columns) plus the kernel's static arrays.
  const size_t fixed =
      sizeof(float) * kWarps * kRows * kCols + sizeof(float) * kCols + sizeof(int32_t) * kCols;
  return static_cast<int64_t>(StagedBytes(std::max(hidden, inter)) + fixed);
}

bool MoeGroupedSupports(MoeWeightFormat format, int hidden, int inter, int64_t smem_limit_bytes) {
  return IsFp8(format) && hidden > 0 && inter > 0 && hidden % kStep == 0 && inter % kStep == 0 &&
         (format != MoeWeightFormat::kFp8Block || (hidden % 128 == 0 && inter % 128 == 0)) &&
         MoeGroupedSmemBytes(hidden, inter) <= smem_limit_bytes;
}

cudaError_t MoeGroupedGateUp(const MoeGroupedParams& p, const __nv_bfloat16* x, const void* w13,
                             const float* w13_scale, __nv_bfloat16* inter, cudaStream_t stream) {
  return Launch<MoeGemm::kGateUp>(p, x, w13, w13_scale, inter, nullptr, stream);
}

cudaError_t MoeGroupedDown(const MoeGroupedParams& p, const __nv_bfloat16* inter, const void* w2,
                           const float* w2_scale, float* pair_out, cudaStream_t stream) {
  return Launch<MoeGemm::kDown>(p, inter, w2, w2_scale, nullptr, pair_out, stream);
}

}  // namespace spark::cuda::moe_internal
