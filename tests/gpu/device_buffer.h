// DeviceBuffer<T>: a typed cudaMalloc'd array for the GPU tests, with host round trips.
// Thread safety: none (test helper). Ownership: owns the device memory.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "engine/cuda/cuda_check.h"

namespace spark::cuda {

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t count) : count_(count) {
    SPARK_CUDA_CHECK(cudaMalloc(&ptr_, static_cast<size_t>(count > 0 ? count : 1) * sizeof(T)));
    SPARK_CUDA_CHECK(cudaMemset(ptr_, 0, static_cast<size_t>(count > 0 ? count : 1) * sizeof(T)));
  }
  explicit DeviceBuffer(const std::vector<T>& host)
      : DeviceBuffer(static_cast<int64_t>(host.size())) {
    Upload(host);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) {
    o.ptr_ = nullptr;
    o.count_ = 0;
  }
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  void Upload(const std::vector<T>& host) {
    SPARK_CUDA_CHECK(
        cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(static_cast<size_t>(count_));
    SPARK_CUDA_CHECK(cudaDeviceSynchronize());
    SPARK_CUDA_CHECK(
        cudaMemcpy(host.data(), ptr_, host.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  T* get() const { return ptr_; }
  int64_t size() const { return count_; }

 private:
  T* ptr_ = nullptr;
  int64_t count_ = 0;
};

}  // namespace spark::cuda
