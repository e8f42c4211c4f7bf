// DeviceLinear: a linear layer's weight as the CUDA kernels see it (non-owning view of device
// memory). Row-major [out, in] (PyTorch layout), y = x W^T. BF16, or FP8 E4M3 with per-channel
// (scale[out]) or block scales (scale[(n / block_n) * ceil(in / block_k) + k / block_k]); the
// dequantised element is float(q) * scale, exactly as LinearWeight::At on the host.
// Thread safety: a value; the memory it points to is owned by the backend's weight store.
#pragma once

#include <cstdint>

namespace spark::cuda {

enum class WeightType : uint8_t { kBF16, kFP8 };
enum class WeightScale : uint8_t { kNone, kPerChannel, kBlock };

struct DeviceLinear {
  WeightType type = WeightType::kBF16;
  WeightScale scale_kind = WeightScale::kNone;
  int64_t out = 0;
  int64_t in = 0;
  const void* data = nullptr;    // [out, in] BF16 or FP8 bytes
  const float* scale = nullptr;  // FP8 only
  int block_n = 0;
  int block_k = 0;
};

// Whether two weights have the same type, shape and scaling (the kernels a linear of either
// launches are the same; the data may differ).
inline bool SameLayout(const DeviceLinear& a, const DeviceLinear& b) {
  return a.type == b.type && a.scale_kind == b.scale_kind && a.out == b.out && a.in == b.in &&
         a.block_n == b.block_n && a.block_k == b.block_k;
}

}  // namespace spark::cuda
