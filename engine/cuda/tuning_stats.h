// Statistics shared by the kernel tuners (engine/cuda/moe_tuner.h, dense_gemv_tuner.h): the
// median of timed runs, and how far a candidate's output is from the reference's.
// Pure host functions; thread-safe.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace spark::cuda {

// The median (upper middle for an even count) of `v`; 0 when empty.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Relative L2 distance ||got - want|| / ||want|| over want.size() elements (got has at least as
// many); infinity when `got` holds a non-finite value.
inline double RelativeError(const std::vector<float>& got, const std::vector<float>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return HUGE_VAL;
    const double d = static_cast<double>(got[i]) - want[i];
    diff += d * d;
    norm += static_cast<double>(want[i]) * want[i];
  }
  return std::sqrt(diff / std::max(norm, 1e-30));
}

}  // namespace spark::cuda
