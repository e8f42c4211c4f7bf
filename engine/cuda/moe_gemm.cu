#include "engine/cuda/moe_gemm.h"

#include <cuda_fp8.h>

#include <string>
#include <vector>

#include "engine/cuda/cuda_check.h"
#include "engine/cuda/mma.cuh"
#include "engine/cuda/programmatic_launch.cuh"

namespace spark::cuda {

namespace moe_internal {
namespace {

using mma::CpAsync16;
using mma::CpAsyncCommit;
using mma::CpAsyncWait;
using mma::CpAsyncWaitPending;
using mma::LdMatrixX4;
using mma::Mma;
using mma::SmemAddr;

template <int BM, int BN, int BK, int WARPS>
struct Tile {
  static constexpr int kThreads = WARPS * 32;
  static constexpr int kWarpsM = BM >= 64 ? 2 : 1;
  static constexpr int kWarpsN = WARPS / kWarpsM;
  static constexpr int kWarpTileM = BM / kWarpsM;
  static constexpr int kWarpTileN = BN / kWarpsN;
  static constexpr int kMmaM = kWarpTileM / 16;
  static constexpr int kMmaN = kWarpTileN / 8;
  static constexpr int kChunks = BK / 16;  // 16-byte chunks per smem row
  static constexpr int kKSteps = BK / 32;  // one mma K step = 32 bytes
  static_assert(kWarpTileN % 16 == 0 && kWarpTileM % 16 == 0, "warp tile must fit the mma");
  static_assert(BK % 128 == 0, "the swizzle needs rows of at least 128 bytes");
};

// Row tables at the start of dynamic shared memory: A row pointers, pair ids, scales.
__host__ __device__ constexpr int RowTableBytes(int block_m) {
  return ((block_m * 16 + 16) + 127) / 128 * 128;
}

// Scale of weight column `col` of expert `e` for K group `kg` (block FP8).
__device__ __forceinline__ float BlockWeightScale(const GemmParams& p, int e, int col, int kg) {
  const int k_groups = p.k / 128;
  if (p.gemm == MoeGemm::kGateUp) {
    const int half = col & 1;
    const int i = col >> 1;
    const int row_groups = (p.n / 2) / 128;
    return __ldg(p.b_scale + ((int64_t{e} * 2 + half) * row_groups + (i >> 7)) * k_groups + kg);
  }
  const int row_groups = p.n / 128;
  return __ldg(p.b_scale + (int64_t{e} * row_groups + (col >> 7)) * k_groups + kg);
}

template <int BM, int BN, int BK, int WARPS, bool kFp8, bool kBlock>
__global__ void __launch_bounds__(WARPS * 32) MoeGemmKernel(GemmParams p, int stages, int split_k) {
  PdlBegin();
  using T = Tile<BM, BN, BK, WARPS>;
  extern __shared__ __align__(128) uint8_t smem[];
  const uint8_t** a_rows = reinterpret_cast<const uint8_t**>(smem);  // [BM]
  int* row_pair = reinterpret_cast<int*>(smem + BM * 8);             // [BM]
  int* a_scale_row = reinterpret_cast<int*>(smem + BM * 12);         // [BM] A scale row or -1
  int* is_last = reinterpret_cast<int*>(smem + BM * 16);             // [1]
  uint8_t* tiles = smem + RowTableBytes(BM);

  const int mblock = blockIdx.x;
  const int num_rows = __ldg(p.num_rows);
  if (mblock * BM >= num_rows) return;
  const int expert = __ldg(p.mblock_expert + mblock);
  const int n0 = blockIdx.y * BN;
  const int split = blockIdx.z;
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int wm = warp / T::kWarpsN;
  const int wn = warp % T::kWarpsN;
  constexpr int kElemBytes = kFp8 ? 1 : 2;
  const int64_t k_bytes = int64_t{p.k} * kElemBytes;
  const uint8_t* a_base = static_cast<const uint8_t*>(p.a);
  const uint8_t* b_base = static_cast<const uint8_t*>(p.b) + int64_t{expert} * p.n * k_bytes;

  for (int r = tid; r < BM; r += T::kThreads) {
    const int row = mblock * BM + r;
    const int pair = __ldg(p.sorted_pairs + row);
    row_pair[r] = pair;
    int arow = -1;
    if (pair >= 0) arow = p.gemm == MoeGemm::kGateUp ? pair / p.top_k : row;
    a_rows[r] = arow >= 0 ? a_base + int64_t{arow} * k_bytes : nullptr;
    a_scale_row[r] = arow;
  }
  __syncthreads();

  // Which of this warp's 16-row mma groups hold a routed row (padding rows are zero-filled and
  // never stored): groups of padding only skip their A fragments and mmas. Warp-uniform.
  uint32_t live_groups = 0;
#pragma unroll
  for (int mi = 0; mi < T::kMmaM; ++mi) {
    const bool live = row_pair[wm * T::kWarpTileM + mi * 16 + (lane & 15)] >= 0;
    if (__any_sync(0xffffffffu, live)) live_groups |= 1u << mi;
  }

  const int ktiles_total = static_cast<int>((k_bytes + BK - 1) / BK);
  const int per_split = (ktiles_total + split_k - 1) / split_k;
  const int kt_begin = min(ktiles_total, split * per_split);
  const int kt_end = min(ktiles_total, kt_begin + per_split);
  const int ktiles = kt_end - kt_begin;
  constexpr int kStageBytes = (BM + BN) * BK;

  // Each thread copies the same 16-byte chunk column of every stage: row r0 + j * kRowsPerPass
  // for j = 0, 1, ... (A rows first, then B rows), so the K offset, the swizzled shared-memory
  // offset (a multiple of 8 rows apart keeps the XOR pattern) and the B source advance by
  // constants; only the gathered A rows need a pointer each. Holding one address per copy for
  // the whole K loop cost the large tiles a third of their registers.
  constexpr int kRowsPerPass = T::kThreads / T::kChunks;
  static_assert(T::kThreads % T::kChunks == 0 && kRowsPerPass % 8 == 0, "copy passes");
  static_assert(BM % kRowsPerPass == 0 && BN % kRowsPerPass == 0, "a pass spans one operand");
  constexpr int kAPasses = BM / kRowsPerPass;
  constexpr int kBPasses = BN / kRowsPerPass;
  const int chunk = tid % T::kChunks;
  const int r0 = tid / T::kChunks;
  const int koff = chunk * 16;
  const uint32_t dst0 = static_cast<uint32_t>(r0 * BK + ((chunk ^ (r0 & 7)) << 4));
  const uint8_t* a_src[kAPasses];
#pragma unroll
  for (int j = 0; j < kAPasses; ++j) {
    const uint8_t* row = a_rows[r0 + j * kRowsPerPass];
    a_src[j] = row != nullptr ? row + koff : nullptr;
  }
  const uint8_t* b_src0 = b_base + int64_t{n0 + r0} * k_bytes + koff;
  const int b_rows_left = p.n - n0 - r0;  // B rows of this thread's passes below p.n: j * R < left
  const uint32_t tiles_smem = SmemAddr(tiles);

  auto load = [&](int slot, int kt) {
    const int64_t kb0 = int64_t{kt} * BK;
    const bool k_ok = kb0 + koff < k_bytes;
    const uint32_t stage = tiles_smem + slot * kStageBytes + dst0;
#pragma unroll
    for (int j = 0; j < kAPasses; ++j) {
      const bool valid = k_ok && a_src[j] != nullptr;
      CpAsync16(stage + j * kRowsPerPass * BK, valid ? a_src[j] + kb0 : b_base, valid);
    }
#pragma unroll
    for (int j = 0; j < kBPasses; ++j) {
      const bool valid = k_ok && j * kRowsPerPass < b_rows_left;
      CpAsync16(stage + (BM + j * kRowsPerPass) * BK,
                valid ? b_src0 + int64_t{j} * kRowsPerPass * k_bytes + kb0 : b_base, valid);
    }
  };

  float acc[T::kMmaM][T::kMmaN][4];
  float part[kBlock ? T::kMmaM : 1][kBlock ? T::kMmaN : 1][4];
#pragma unroll
  for (int mi = 0; mi < T::kMmaM; ++mi)
#pragma unroll
    for (int ni = 0; ni < T::kMmaN; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
  if constexpr (kBlock) {
#pragma unroll
    for (int mi = 0; mi < T::kMmaM; ++mi)
#pragma unroll
      for (int ni = 0; ni < T::kMmaN; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) part[mi][ni][e] = 0.f;
  }

  auto compute = [&](int slot) {
    if (live_groups == 0) return;
    const uint8_t* sa = tiles + slot * kStageBytes;
    const uint8_t* sb = sa + BM * BK;
#pragma unroll
    for (int ks = 0; ks < T::kKSteps; ++ks) {
      uint32_t af[T::kMmaM][4];
      uint32_t bf[T::kMmaN][2];
#pragma unroll
      for (int mi = 0; mi < T::kMmaM; ++mi) {
        if (!(live_groups >> mi & 1u)) continue;
        const int row = wm * T::kWarpTileM + mi * 16 + (lane & 15);
        const int ch = ks * 2 + (lane >> 4);
        LdMatrixX4(SmemAddr(sa + row * BK + ((ch ^ (row & 7)) << 4)), af[mi][0], af[mi][1],
                   af[mi][2], af[mi][3]);
      }
#pragma unroll
      for (int nj = 0; nj < T::kMmaN / 2; ++nj) {
        const int n = wn * T::kWarpTileN + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int ch = ks * 2 + ((lane >> 3) & 1);
        LdMatrixX4(SmemAddr(sb + n * BK + ((ch ^ (n & 7)) << 4)), bf[2 * nj][0], bf[2 * nj][1],
                   bf[2 * nj + 1][0], bf[2 * nj + 1][1]);
      }
#pragma unroll
      for (int mi = 0; mi < T::kMmaM; ++mi) {
        if (!(live_groups >> mi & 1u)) continue;
#pragma unroll
        for (int ni = 0; ni < T::kMmaN; ++ni) {
          if constexpr (kBlock) {
            Mma<kFp8>(part[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
          } else {
            Mma<kFp8>(acc[mi][ni], af[mi], bf[ni][0], bf[ni][1]);
          }
        }
      }
    }
  };

  const int g = lane >> 2;
  const int tig = lane & 3;

  // Block FP8: fold one 128-element K group into acc with its activation and weight scales.
  auto fold_group = [&](int kg) {
    if constexpr (kBlock) {
      const int k_groups = p.k / 128;
      float wsc[T::kMmaN][2];
#pragma unroll
      for (int ni = 0; ni < T::kMmaN; ++ni) {
        const int col = n0 + wn * T::kWarpTileN + ni * 8 + tig * 2;
        wsc[ni][0] = col < p.n ? BlockWeightScale(p, expert, col, kg) : 0.f;
        wsc[ni][1] = col + 1 < p.n ? BlockWeightScale(p, expert, col + 1, kg) : 0.f;
      }
#pragma unroll
      for (int mi = 0; mi < T::kMmaM; ++mi) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int r = wm * T::kWarpTileM + mi * 16 + g + h * 8;
          const int srow = a_scale_row[r];
          const float asc = srow >= 0 ? __ldg(p.a_scale + int64_t{srow} * k_groups + kg) : 0.f;
#pragma unroll
          for (int ni = 0; ni < T::kMmaN; ++ni) {
            acc[mi][ni][h * 2] += part[mi][ni][h * 2] * (asc * wsc[ni][0]);
            acc[mi][ni][h * 2 + 1] += part[mi][ni][h * 2 + 1] * (asc * wsc[ni][1]);
            part[mi][ni][h * 2] = 0.f;
            part[mi][ni][h * 2 + 1] = 0.f;
          }
        }
      }
    }
  };

  for (int s = 0; s < stages - 1; ++s) {
    if (s < ktiles) load(s, kt_begin + s);
    CpAsyncCommit();
  }
  for (int t = 0; t < ktiles; ++t) {
    CpAsyncWaitPending(stages - 2);
    __syncthreads();
    const int next = t + stages - 1;
    if (next < ktiles) load(next % stages, kt_begin + next);
    CpAsyncCommit();
    compute(t % stages);
    if constexpr (kBlock) fold_group(kt_begin + t);
  }
  CpAsyncWait<0>();

  if (split_k > 1) {
    // Deterministic split-K: every split stores its partial tile; the last to arrive adds them
    // in split order and runs the epilogue, then re-arms the tile's counter.
    const int tile = blockIdx.x * gridDim.y + blockIdx.y;
    constexpr int kTileFloats = BM * BN;
    float* mine = p.partials + (int64_t{tile} * split_k + split) * kTileFloats;
    int idx = 0;
#pragma unroll
    for (int mi = 0; mi < T::kMmaM; ++mi)
#pragma unroll
      for (int ni = 0; ni < T::kMmaN; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e, ++idx) __stcg(mine + idx * T::kThreads + tid, acc[mi][ni][e]);
    __threadfence();
    __syncthreads();
    if (tid == 0) *is_last = atomicAdd(p.counters + tile, 1) == split_k - 1;
    __syncthreads();
    if (!*is_last) return;
    __threadfence();
    const float* all = p.partials + int64_t{tile} * split_k * kTileFloats;
#pragma unroll
    for (int mi = 0; mi < T::kMmaM; ++mi)
#pragma unroll
      for (int ni = 0; ni < T::kMmaN; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    for (int s = 0; s < split_k; ++s) {
      idx = 0;
#pragma unroll
      for (int mi = 0; mi < T::kMmaM; ++mi)
#pragma unroll
        for (int ni = 0; ni < T::kMmaN; ++ni)
#pragma unroll
          for (int e = 0; e < 4; ++e, ++idx)
            acc[mi][ni][e] += __ldcg(all + int64_t{s} * kTileFloats + idx * T::kThreads + tid);
    }
    if (tid == 0) p.counters[tile] = 0;
  }

  // Epilogue.
  const bool per_channel = kFp8 && !kBlock;
#pragma unroll
  for (int mi = 0; mi < T::kMmaM; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = wm * T::kWarpTileM + mi * 16 + g + h * 8;
      const int row = mblock * BM + r;
      const int pair = row_pair[r];
      float asc = 1.f;
      if (per_channel) {
        const int srow = a_scale_row[r];
        asc = srow >= 0 ? __ldg(p.a_scale + srow) : 0.f;
      }
      const float route_w =
          p.gemm == MoeGemm::kDown && pair >= 0 ? __ldg(p.topk_weights + pair) : 0.f;
#pragma unroll
      for (int ni = 0; ni < T::kMmaN; ++ni) {
        const int col = n0 + wn * T::kWarpTileN + ni * 8 + tig * 2;
        if (col >= p.n) continue;
        float v0 = acc[mi][ni][h * 2];
        float v1 = acc[mi][ni][h * 2 + 1];
        if (per_channel) {
          const float* ws = p.b_scale + int64_t{expert} * p.n + col;
          v0 *= asc * __ldg(ws);
          v1 *= asc * __ldg(ws + 1);
        }
        if (p.gemm == MoeGemm::kGateUp) {
          const float silu = v0 / (1.f + expf(-v0));
          p.inter_out[int64_t{row} * (p.n / 2) + (col >> 1)] = __float2bfloat16(silu * v1);
        } else if (pair >= 0) {
          *reinterpret_cast<float2*>(p.pair_out + int64_t{pair} * p.n + col) =
              make_float2(v0 * route_w, v1 * route_w);
        }
      }
    }
  }
}

// Calls fn.template Run<BM, BN, BK, WARPS, kFp8, kBlock>() for (variant, format).
template <int BM, int BN, int BK, int W, bool kBlockOk, class F>
cudaError_t DispatchFormat(MoeWeightFormat format, F& fn) {
  switch (format) {
    case MoeWeightFormat::kBf16:
      return fn.template Run<BM, BN, BK, W, false, false>();
    case MoeWeightFormat::kFp8PerChannel:
      return fn.template Run<BM, BN, BK, W, true, false>();
    case MoeWeightFormat::kFp8Block:
      if constexpr (kBlockOk) {
        return fn.template Run<BM, BN, BK, W, true, true>();
      } else {
        return cudaErrorInvalidConfiguration;
      }
  }
  return cudaErrorInvalidConfiguration;
}

template <class F>
cudaError_t Dispatch(int variant, MoeWeightFormat format, F& fn) {
  switch (variant) {
    case 0:
      return DispatchFormat<16, 64, 256, 4, false>(format, fn);
    case 1:
      return DispatchFormat<16, 64, 128, 4, true>(format, fn);
    case 2:
      return DispatchFormat<16, 128, 128, 4, true>(format, fn);
    case 3:
      return DispatchFormat<32, 128, 128, 4, true>(format, fn);
    case 4:
      return DispatchFormat<64, 128, 128, 4, true>(format, fn);
    case 5:
      return DispatchFormat<64, 256, 128, 8, true>(format, fn);
    case 6:
      return DispatchFormat<128, 128, 128, 8, true>(format, fn);
    case 7:
      return DispatchFormat<128, 256, 128, 8, false>(format, fn);
    default:
      return cudaErrorInvalidConfiguration;
  }
}

struct Launcher {
  const MoeTileConfig& config;
  const GemmParams& params;
  cudaStream_t stream;

  template <int BM, int BN, int BK, int W, bool kFp8, bool kBlock>
  cudaError_t Run() {
    if (config.block_m != BM || config.block_n != BN || config.block_k_bytes != BK ||
        config.warps != W)
      return cudaErrorInvalidConfiguration;
    const dim3 grid(static_cast<unsigned>(params.mblocks),
                    static_cast<unsigned>((params.n + BN - 1) / BN),
                    static_cast<unsigned>(config.split_k));
    const size_t smem = static_cast<size_t>(config.SmemBytes());
    LaunchKernel(MoeGemmKernel<BM, BN, BK, W, kFp8, kBlock>, grid, W * 32, smem, stream, params,
                 config.stages, config.split_k);
    return cudaGetLastError();
  }
};

struct SmemLimitSetter {
  int limit_bytes;

  template <int BM, int BN, int BK, int W, bool kFp8, bool kBlock>
  cudaError_t Run() {
    return cudaFuncSetAttribute(MoeGemmKernel<BM, BN, BK, W, kFp8, kBlock>,
                                cudaFuncAttributeMaxDynamicSharedMemorySize, limit_bytes);
  }
};

}  // namespace

cudaError_t LaunchMoeGemm(MoeWeightFormat format, const MoeTileConfig& config,
                          const GemmParams& params, cudaStream_t stream) {
  if (params.mblocks <= 0) return cudaSuccess;
  if (config.stages < 2 || config.stages > 6 || config.split_k < 1)
    return cudaErrorInvalidConfiguration;
  Launcher launcher{config, params, stream};
  return Dispatch(config.kernel, format, launcher);
}

cudaError_t SetMoeGemmSmemLimit(int64_t limit_bytes) {
  const auto& variants = MoeKernelVariants();
  SmemLimitSetter setter{static_cast<int>(limit_bytes)};
  for (int v = 0; v < static_cast<int>(variants.size()); ++v) {
    for (MoeWeightFormat f :
         {MoeWeightFormat::kBf16, MoeWeightFormat::kFp8PerChannel, MoeWeightFormat::kFp8Block}) {
      if (f == MoeWeightFormat::kFp8Block && !variants[v].fp8_block) continue;
      cudaError_t err = Dispatch(v, f, setter);
      if (err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

}  // namespace moe_internal

Result<MoeConfigTable> MoeConfigTable::Create(const DeviceInfo& device, int64_t smem_cap_bytes) {
  if (device.smem_optin_per_block_bytes <= 0) {
    return InvalidArgument("device " + device.name +
                           " reports no opt-in shared memory per block; query it with "
                           "QueryDevice before creating the MoE config table");
  }
  SPARK_ASSIGN_OR_RETURN(
      MoeConfigTable table,
      ForLimit(device.EffectiveSmemPerBlock(smem_cap_bytes), device.multiprocessors));
  // The kernels may use up to the device limit; the cap is enforced by Check and Select, so
  // tables with different caps can live side by side.
  SPARK_CUDA_RETURN_IF_ERROR(moe_internal::SetMoeGemmSmemLimit(device.smem_optin_per_block_bytes));
  return table;
}

}  // namespace spark::cuda
