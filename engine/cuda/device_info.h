// DeviceInfo: the facts of a CUDA device that placement, preflight and kernel selection need
// (name, compute capability, memory, opt-in shared memory per block, SM count, L2 size).
//
// `smem_cap_bytes` lets a caller emulate a smaller device (e.g. GB10's 101,376 bytes on an H100):
// EffectiveSmemPerBlock() returns the smaller of the device limit and the cap.
// Thread safety: QueryDevice is safe from any thread; DeviceInfo is a value.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace spark::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int64_t total_memory_bytes = 0;
  int64_t free_memory_bytes = 0;
  int64_t smem_optin_per_block_bytes = 0;  // cudaDevAttrMaxSharedMemoryPerBlockOptin
  int multiprocessors = 0;
  int64_t l2_cache_bytes = 0;
  bool unified_memory = false;  // integrated GPU sharing memory with the CPU (GB10)

  int64_t EffectiveSmemPerBlock(int64_t smem_cap_bytes) const {
    return smem_cap_bytes > 0 && smem_cap_bytes < smem_optin_per_block_bytes
               ? smem_cap_bytes
               : smem_optin_per_block_bytes;
  }
};

// Number of visible devices; Unavailable with CUDA's reason when there is no usable driver/GPU.
Result<int> DeviceCount();
Result<DeviceInfo> QueryDevice(int index);
Result<std::vector<DeviceInfo>> QueryAllDevices();

}  // namespace spark::cuda
