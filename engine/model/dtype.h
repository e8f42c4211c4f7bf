// Element types of checkpoint tensors and exact conversions between them.
//
// BF16/F16/F8_E4M3 <-> float conversions follow IEEE / OCP FP8 semantics exactly:
// float -> bf16/f16/e4m3 rounds to nearest even, e4m3 saturates to +-448 (no infinities; NaN
// stays NaN), as torch's `.to(torch.float8_e4m3fn)` does.
//
// Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace spark::engine {

enum class DType : uint8_t { kF32, kBF16, kF16, kF8E4M3, kI64, kI32, kU8, kBool };

// Size of one element in bytes.
size_t DTypeSize(DType dtype);
// Name as safetensors writes it ("BF16", "F8_E4M3", ...).
std::string_view DTypeName(DType dtype);
// Parses a safetensors dtype name; nullopt if unknown.
std::optional<DType> ParseDType(std::string_view name);

inline float Bf16ToFloat(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float f;
  __builtin_memcpy(&f, &bits, 4);
  return f;
}
uint16_t FloatToBf16(float f);
float F16ToFloat(uint16_t v);
uint16_t FloatToF16(float f);
float F8E4M3ToFloat(uint8_t v);
uint8_t FloatToF8E4M3(float f);

inline constexpr float kF8E4M3Max = 448.0f;

}  // namespace spark::engine
