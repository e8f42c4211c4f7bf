// RankOrderSum: the reduction step of a one-shot all-reduce (NcclCommunicator). After an
// all-gather, `gathered` holds every rank's vector ([world, count] fp32, rank-major); out[i] =
// gathered[0][i] + gathered[1][i] + ... in rank order, so every rank computes the same sums.
// Raw device pointers; stream-ordered; `out` may not overlap `gathered`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace spark::engine {

cudaError_t RankOrderSum(const float* gathered, int world, size_t count, float* out,
                         cudaStream_t stream);

}  // namespace spark::engine
