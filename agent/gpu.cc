#include "agent/gpu.h"

#if defined(SPARK_HAVE_CUDA) && SPARK_HAVE_CUDA
#include <cuda_runtime_api.h>

#include <cstdio>

#include "engine/cuda/device_info.h"
#endif

namespace spark::agent {

#if defined(SPARK_HAVE_CUDA) && SPARK_HAVE_CUDA

bool BuiltWithCuda() { return true; }

Result<std::vector<spark::v1::GpuInfo>> QueryGpus() {
  SPARK_ASSIGN_OR_RETURN(std::vector<spark::cuda::DeviceInfo> devices,
                         spark::cuda::QueryAllDevices());
  std::vector<spark::v1::GpuInfo> out;
  for (const spark::cuda::DeviceInfo& d : devices) {
    spark::v1::GpuInfo gpu;
    gpu.set_index(static_cast<uint32_t>(d.index));
    gpu.set_name(d.name);
    gpu.set_compute_capability_major(static_cast<uint32_t>(d.cc_major));
    gpu.set_compute_capability_minor(static_cast<uint32_t>(d.cc_minor));
    gpu.set_total_memory_bytes(static_cast<uint64_t>(d.total_memory_bytes));
    gpu.set_free_memory_bytes(static_cast<uint64_t>(d.free_memory_bytes));
    gpu.set_shared_memory_per_block_optin_bytes(
        static_cast<uint64_t>(d.smem_optin_per_block_bytes));
    gpu.set_multiprocessor_count(static_cast<uint32_t>(d.multiprocessors));
    gpu.set_unified_memory(d.unified_memory);
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, d.index) == cudaSuccess) {
      char uuid[64];
      const auto* b = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
      std::snprintf(uuid, sizeof(uuid),
                    "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                    b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
                    b[13], b[14], b[15]);
      gpu.set_uuid(uuid);
    }
    out.push_back(std::move(gpu));
  }
  // Release the primary contexts QueryAllDevices created (hundreds of MB per GPU otherwise).
  for (const spark::cuda::DeviceInfo& d : devices) {
    if (cudaSetDevice(d.index) == cudaSuccess) cudaDeviceReset();
  }
  return out;
}

#else

bool BuiltWithCuda() { return false; }

Result<std::vector<spark::v1::GpuInfo>> QueryGpus() {
  return Unimplemented(
      "this spark-agent was built without CUDA (SPARK_CUDA=OFF); install the CUDA build or run "
      "the node with --backend cpu");
}

#endif

}  // namespace spark::agent
