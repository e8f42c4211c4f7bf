#include "engine/cuda/device_info.h"

#include <cuda_runtime.h>

#include "engine/cuda/cuda_check.h"

namespace spark::cuda {

Result<int> DeviceCount() {
  int n = 0;
  cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    return Unavailable(std::string("no usable CUDA device: ") + cudaGetErrorString(err) +
                       "; check that the NVIDIA driver is installed and the GPU is visible "
                       "(nvidia-smi)");
  }
  return n;
}

Result<DeviceInfo> QueryDevice(int index) {
  DeviceInfo info;
  info.index = index;
  cudaDeviceProp prop{};
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, index));
  info.name = prop.name;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.total_memory_bytes = static_cast<int64_t>(prop.totalGlobalMem);
  info.multiprocessors = prop.multiProcessorCount;
  info.unified_memory = prop.integrated != 0;
  info.l2_cache_bytes = prop.l2CacheSize;
  int smem = 0;
  SPARK_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, index));
  info.smem_optin_per_block_bytes = smem;
  int current = 0;
  SPARK_CUDA_RETURN_IF_ERROR(cudaGetDevice(&current));
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(index));
  size_t free_b = 0, total_b = 0;
  cudaError_t err = cudaMemGetInfo(&free_b, &total_b);
  SPARK_CUDA_RETURN_IF_ERROR(cudaSetDevice(current));
  SPARK_CUDA_RETURN_IF_ERROR(err);
  info.free_memory_bytes = static_cast<int64_t>(free_b);
  return info;
}

Result<std::vector<DeviceInfo>> QueryAllDevices() {
  SPARK_ASSIGN_OR_RETURN(int n, DeviceCount());
  std::vector<DeviceInfo> out;
  for (int i = 0; i < n; ++i) {
    SPARK_ASSIGN_OR_RETURN(DeviceInfo d, QueryDevice(i));
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace spark::cuda
