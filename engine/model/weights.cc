#include "engine/model/weights.h"

#include <cstring>

#include "common/check.h"

namespace spark::engine {

float LinearWeight::At(int64_t row, int64_t col) const {
  SPARK_CHECK(row >= 0 && row < out && col >= 0 && col < in)
      << "LinearWeight::At(" << row << ", " << col << ") outside [" << out << ", " << in << "]";
  const size_t index = static_cast<size_t>(row * in + col);
  const std::byte* p = data.data() + index * DTypeSize(dtype);
  float value = 0.0f;
  switch (dtype) {
    case DType::kF32:
      std::memcpy(&value, p, 4);
      break;
    case DType::kBF16:
    case DType::kF16: {
      uint16_t v;
      std::memcpy(&v, p, 2);
      value = dtype == DType::kBF16 ? Bf16ToFloat(v) : F16ToFloat(v);
      break;
    }
    case DType::kF8E4M3:
      value = F8E4M3ToFloat(static_cast<uint8_t>(*p));
      break;
    default:
      SPARK_CHECK(false) << "LinearWeight with dtype " << DTypeName(dtype);
  }
  switch (scale_kind) {
    case ScaleKind::kNone:
      return value;
    case ScaleKind::kPerChannel:
      return value * scale[static_cast<size_t>(row)];
    case ScaleKind::kBlock: {
      const int64_t blocks_k = (in + block_k - 1) / block_k;
      return value * scale[static_cast<size_t>((row / block_n) * blocks_k + col / block_k)];
    }
  }
  return value;
}

}  // namespace spark::engine
