// Dense GEMV tuning: picks, per FP8 weight shape of a loaded model, how the one-row GEMV turns
// E4M3 weights into products (gemv.h Fp8Dequant: hardware conversion, integer bit placement,
// f16 tensor-core fragments, whole-row sweeps), by timing each on this device with the model's own
// weights, and sets the choice on the DenseLinear (SetGemvDequant). Batch-1 decode reads about
// half of a GLM-4.5-Air layer's bytes through these GEMVs; which variant streams fastest depends
// on the GPU (an H100's HBM3 and 132 SMs, GB10's LPDDR5X and 48), so the device decides.
//
// Per distinct shape (out, in, scale kind, block) among the weights that DenseLinear runs on the
// GEMV at one row: a random BF16 row; the output of the shape's current variant (its
// GemvDequantFor: limits.gemv_fp8_dequant unless set before) is the reference; every other
// candidate's output must be within max_relative_error of it (relative L2; they differ in fp32
// summation order only) or it is refused; each surviving candidate is timed through
// DenseLinear::Run (L2 flushed before each run, warm-up, `iters` runs, median); then the fastest
// other candidate and the default are timed again in turns, and the default stays unless the
// other is more than 1% faster. Weights are read, never written; on an error
// the shape being tuned keeps its variant.
//
// Thread safety: call on the thread that owns `linear`, with nothing else queued on `stream`
// whose timing matters. Ownership: allocates its scratch (an input row, an output, an L2-sized
// flush buffer) and frees it before returning.
#pragma once

#include <cuda_runtime.h>

#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/cuda/dense_linear.h"
#include "engine/cuda/device_linear.h"
#include "engine/cuda/gemv.h"

namespace spark::cuda {

// "convert", "scaled_bits", "half_mma", "convert_sweep".
const char* Fp8DequantName(Fp8Dequant dequant);

struct DenseGemvTunerOptions {
  int iters = 9;                                // timed runs per candidate (median kept)
  double max_relative_error = 1e-3;             // of a candidate's output from the default's
  std::function<void(const std::string&)> log;  // one line per candidate; unset = silent
};

struct DenseGemvChoice {
  DeviceLinear weight;  // the first weight of the shape (its pointers are the model's)
  Fp8Dequant dequant = kGemvFp8DequantDefault;
  Fp8Dequant default_dequant = kGemvFp8DequantDefault;  // the shape's variant before tuning
  double us = 0;          // the chosen variant's median, from the final turns
  double default_us = 0;  // the default's, from the same turns
  int refused = 0;        // candidates whose output differed
};

// "[4096, 12288] fp8-channel: half_mma 17.20 us (convert 18.90 us, 0 refused)".
std::string DenseGemvChoiceLine(const DenseGemvChoice& choice);

// Tunes every distinct FP8 shape of `weights` that `linear` serves with the one-row GEMV and sets
// the choices on it; shapes it serves otherwise (cuBLASLt) are skipped. The returned choices are
// for logs and tests.
Result<std::vector<DenseGemvChoice>> TuneDenseGemv(DenseLinear& linear,
                                                   const std::vector<DeviceLinear>& weights,
                                                   const DenseGemvTunerOptions& options,
                                                   cudaStream_t stream);

}  // namespace spark::cuda
