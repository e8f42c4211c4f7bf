// Dummy weights generated on the device: the values of MakeDummyWeights (engine/model/loader.h)
// without a host copy. Element (row, col) of the full 2-D tensor `name` ([n, in_features]) is
// UnitValue(DummyNameKey(seed, name), row, col) * sqrt(3 / in_features) (the same SplitMix64 /
// FNV-1a hash as the loader), stored as BF16 (round to nearest even) or, for FP8, as
// e4m3(value / scale) with the static scale sqrt(3 / in_features) / 448.
//
// Thread safety: stream-ordered; callers own all buffers.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <string_view>

namespace spark::cuda {

// The loader's per-tensor hash key.
uint64_t DummyNameKey(uint64_t seed, std::string_view name);
// The FP8 scale MakeDummyWeights uses for a tensor with `in_features` columns.
float DummyFp8Scale(int64_t in_features);

// Writes the `rows` x `cols` slice starting at (row0, col0) of the full tensor into dst, a
// row-major buffer with `ld` elements per row (BF16 when !fp8, FP8 bytes otherwise).
cudaError_t FillDummyMatrix(uint64_t key, int64_t in_features, int64_t row0, int64_t rows,
                            int64_t col0, int64_t cols, bool fp8, void* dst, int64_t ld,
                            cudaStream_t stream);

}  // namespace spark::cuda
