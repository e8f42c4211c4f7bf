#include "engine/model/dtype.h"

#include <cstring>

namespace spark::engine {
namespace {

uint32_t FloatBits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

float BitsToFloat(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kF8E4M3:
    case DType::kU8:
    case DType::kBool:
      return 1;
    case DType::kI64:
      return 8;
  }
  return 0;
}

std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    case DType::kI64:
      return "I64";
    case DType::kI32:
      return "I32";
    case DType::kU8:
      return "U8";
    case DType::kBool:
      return "BOOL";
  }
  return "?";
}

std::optional<DType> ParseDType(std::string_view name) {
  static constexpr DType kAll[] = {DType::kF32, DType::kBF16, DType::kF16, DType::kF8E4M3,
                                   DType::kI64, DType::kI32,  DType::kU8,  DType::kBool};
  for (DType d : kAll) {
    if (DTypeName(d) == name) return d;
  }
  return std::nullopt;
}

uint16_t FloatToBf16(float f) {
  uint32_t bits = FloatBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    // NaN: keep the sign and the top payload bits, force quiet so it stays a NaN.
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);
  }
  uint32_t lsb = (bits >> 16) & 1u;
  bits += 0x7fffu + lsb;  // round to nearest, ties to even (overflow carries into inf)
  return static_cast<uint16_t>(bits >> 16);
}

float F16ToFloat(uint16_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x8000u) << 16;
  uint32_t exp = (v >> 10) & 0x1fu;
  uint32_t mant = v & 0x3ffu;
  if (exp == 0x1f) return BitsToFloat(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in float.
    float mag = static_cast<float>(mant) * 0x1p-24f;
    return BitsToFloat(sign | FloatBits(mag));
  }
  return BitsToFloat(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t FloatToF16(float f) {
  uint32_t bits = FloatBits(f);
  uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u | static_cast<uint16_t>((a >> 13) & 0x3ffu);  // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity (or is inf)
  if (a < 0x38800000u) {
    // Below the smallest normal (2^-14): adding 0.5 aligns the value to the subnormal grid of
    // 2^-24 and the FPU rounds to nearest even.
    float r = BitsToFloat(a) + 0.5f;
    return sign | static_cast<uint16_t>(FloatBits(r) - FloatBits(0.5f));
  }
  uint32_t lsb = (a >> 13) & 1u;
  a += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + lsb;
  return sign | static_cast<uint16_t>(a >> 13);
}

float F8E4M3ToFloat(uint8_t v) {
  uint32_t sign = static_cast<uint32_t>(v & 0x80u) << 24;
  uint32_t exp = (v >> 3) & 0xfu;
  uint32_t mant = v & 0x7u;
  if (exp == 0xf && mant == 0x7) return BitsToFloat(sign | 0x7fc00000u);  // NaN (no infinities)
  if (exp == 0) {
    float mag = static_cast<float>(mant) * 0x1p-9f;  // subnormal: mant/8 * 2^-6
    return BitsToFloat(sign | FloatBits(mag));
  }
  return BitsToFloat(sign | ((exp + 120u) << 23) | (mant << 20));
}

uint8_t FloatToF8E4M3(float f) {
  uint32_t bits = FloatBits(f);
  uint8_t sign = static_cast<uint8_t>((bits >> 24) & 0x80u);
  uint32_t a = bits & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7fu;   // NaN stays NaN
  if (a >= 0x43e00000u) return sign | 0x7eu;  // |f| >= 448 (and inf): saturate to 448
  if (a < 0x3c800000u) {
    // Below the smallest normal (2^-6): 2^14 has an ulp of 2^-9, the e4m3 subnormal step, so the
    // FPU add rounds to nearest even on that grid.
    float r = BitsToFloat(a) + 16384.0f;
    return sign | static_cast<uint8_t>(FloatBits(r) - FloatBits(16384.0f));
  }
  uint32_t lsb = (a >> 20) & 1u;
  a += (static_cast<uint32_t>(7 - 127) << 23) + 0x7ffffu + lsb;
  uint32_t code = a >> 20;
  if (code > 0x7eu) code = 0x7eu;  // only reachable for values rounding above 448
  return sign | static_cast<uint8_t>(code);
}

}  // namespace spark::engine
