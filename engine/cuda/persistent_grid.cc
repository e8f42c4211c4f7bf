#include "engine/cuda/persistent_grid.h"

#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

namespace spark::cuda {

int64_t BalancedPersistentGrid(int64_t items, int64_t slots) {
  if (items <= 0) return 0;
  const int64_t passes = (items + std::max<int64_t>(1, slots) - 1) / std::max<int64_t>(1, slots);
  return (items + passes - 1) / passes;
}

cudaError_t ResidentBlocks(const void* kernel, int threads, int64_t* slots) {
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  static std::mutex mu;
  static std::map<std::tuple<const void*, int, int>, int64_t> known;
  const std::tuple<const void*, int, int> key{kernel, threads, device};
  {
    std::lock_guard<std::mutex> lock(mu);
    if (const auto it = known.find(key); it != known.end()) {
      *slots = it->second;
      return cudaSuccess;
    }
  }
  int sms = 0;
  int per_sm = 0;
  cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0);
  }
  if (err != cudaSuccess) return err;
  *slots = int64_t{per_sm} * sms;
  if (*slots > 0) {
    std::lock_guard<std::mutex> lock(mu);
    known[key] = *slots;
  }
  return cudaSuccess;
}

}  // namespace spark::cuda
