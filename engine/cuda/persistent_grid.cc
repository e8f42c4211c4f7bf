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

namespace {

// Occupancies and multiprocessor counts asked so far (a query per kernel, not per launch).
struct Known {
  std::mutex mu;
  std::map<std::tuple<const void*, int, size_t, int>, int> per_sm;  // kernel, threads, smem, device
  std::map<int, int> sms;                                           // device
};

Known& KnownOccupancies() {
  static Known* known = new Known();
  return *known;
}

}  // namespace

cudaError_t OccupancyPerSm(const void* kernel, int threads, size_t smem_bytes, int* blocks) {
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  Known& known = KnownOccupancies();
  const auto key = std::make_tuple(kernel, threads, smem_bytes, device);
  {
    std::lock_guard<std::mutex> lock(known.mu);
    if (const auto it = known.per_sm.find(key); it != known.per_sm.end()) {
      *blocks = it->second;
      return cudaSuccess;
    }
  }
  const cudaError_t err =
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(blocks, kernel, threads, smem_bytes);
  if (err != cudaSuccess) return err;
  if (*blocks > 0) {
    std::lock_guard<std::mutex> lock(known.mu);
    known.per_sm[key] = *blocks;
  }
  return cudaSuccess;
}

cudaError_t ResidentBlocks(const void* kernel, int threads, int64_t* slots) {
  int per_sm = 0;
  if (const cudaError_t err = OccupancyPerSm(kernel, threads, 0, &per_sm); err != cudaSuccess) {
    return err;
  }
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  Known& known = KnownOccupancies();
  int sms = 0;
  {
    std::lock_guard<std::mutex> lock(known.mu);
    if (const auto it = known.sms.find(device); it != known.sms.end()) sms = it->second;
  }
  if (sms == 0) {
    if (const cudaError_t err =
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
        err != cudaSuccess) {
      return err;
    }
    std::lock_guard<std::mutex> lock(known.mu);
    known.sms[device] = sms;
  }
  *slots = int64_t{per_sm} * sms;
  return cudaSuccess;
}

}  // namespace spark::cuda
