#include "engine/model/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace spark::engine {
namespace {

uint32_t Bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

float FromBits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

// OCP FP8 E4M3 (fn) value of a code, from the definition: bias 7, subnormals at exponent 0,
// S.1111.111 is NaN, no infinities.
double OcpE4M3(uint8_t code) {
  const int sign = code >> 7;
  const int e = (code >> 3) & 0xf;
  const int m = code & 0x7;
  if (e == 15 && m == 7) return std::numeric_limits<double>::quiet_NaN();
  const double mag = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return sign ? -mag : mag;
}

// IEEE binary16 value of a code.
double IeeeF16(uint16_t code) {
  const int sign = code >> 15;
  const int e = (code >> 10) & 0x1f;
  const int m = code & 0x3ff;
  double mag;
  if (e == 31) {
    mag =
        m == 0 ? std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    mag = std::ldexp(m / 1024.0, -14);
  } else {
    mag = std::ldexp(1.0 + m / 1024.0, e - 15);
  }
  return sign ? -mag : mag;
}

TEST(DTypeTest, SizesAndNames) {
  struct Case {
    DType dtype;
    size_t size;
    const char* name;
  };
  const Case cases[] = {{DType::kF32, 4, "F32"}, {DType::kBF16, 2, "BF16"},
                        {DType::kF16, 2, "F16"}, {DType::kF8E4M3, 1, "F8_E4M3"},
                        {DType::kI64, 8, "I64"}, {DType::kI32, 4, "I32"},
                        {DType::kU8, 1, "U8"},   {DType::kBool, 1, "BOOL"}};
  for (const Case& c : cases) {
    EXPECT_EQ(DTypeSize(c.dtype), c.size) << c.name;
    EXPECT_EQ(DTypeName(c.dtype), c.name);
    ASSERT_TRUE(ParseDType(c.name).has_value()) << c.name;
    EXPECT_EQ(*ParseDType(c.name), c.dtype);
  }
  EXPECT_FALSE(ParseDType("F8_E5M2").has_value());
  EXPECT_FALSE(ParseDType("bf16").has_value());
}

TEST(DTypeTest, E4M3DecodesAllCodesToOcpTable) {
  for (int code = 0; code < 256; ++code) {
    const double expected = OcpE4M3(static_cast<uint8_t>(code));
    const float got = F8E4M3ToFloat(static_cast<uint8_t>(code));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(got)) << code;
    } else {
      EXPECT_EQ(static_cast<double>(got), expected) << "code " << code;
      EXPECT_EQ(std::signbit(got), code >= 0x80) << code;
    }
  }
  // Spot values of the OCP specification table.
  EXPECT_EQ(F8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(F8E4M3ToFloat(0xfe), -448.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x38), 1.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x08), 0.015625f);     // smallest normal 2^-6
  EXPECT_EQ(F8E4M3ToFloat(0x01), 0.001953125f);  // smallest subnormal 2^-9
  EXPECT_EQ(F8E4M3ToFloat(0x07), 0.013671875f);  // largest subnormal 7/8 * 2^-6
  EXPECT_EQ(F8E4M3ToFloat(0x78), 256.0f);
  EXPECT_EQ(F8E4M3ToFloat(0x77), 240.0f);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0x7f)));
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(0xff)));
}

TEST(DTypeTest, E4M3EncodesEveryCodeBackToItself) {
  for (int code = 0; code < 256; ++code) {
    const float v = F8E4M3ToFloat(static_cast<uint8_t>(code));
    EXPECT_EQ(FloatToF8E4M3(v), code) << "value " << v;  // includes -0 (0x80) and both NaNs
  }
}

TEST(DTypeTest, E4M3RoundsMidpointsToEven) {
  for (int code = 0; code < 0x7e; ++code) {
    for (int sign : {0, 0x80}) {
      const uint8_t lo = static_cast<uint8_t>(code | sign);
      const uint8_t hi = static_cast<uint8_t>((code + 1) | sign);
      const float a = F8E4M3ToFloat(lo);
      const float b = F8E4M3ToFloat(hi);
      const float mid = (a + b) / 2;  // exact in float
      ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(a) + static_cast<double>(b)) / 2);
      const uint8_t even = (code % 2 == 0) ? lo : hi;
      EXPECT_EQ(FloatToF8E4M3(mid), even) << "midpoint " << mid;
      // Just off the midpoint goes to the nearer code.
      EXPECT_EQ(FloatToF8E4M3(std::nextafter(mid, a)), lo) << mid;
      EXPECT_EQ(FloatToF8E4M3(std::nextafter(mid, b)), hi) << mid;
    }
  }
}

TEST(DTypeTest, E4M3SaturatesAndKeepsNan) {
  EXPECT_EQ(FloatToF8E4M3(448.0f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(464.0f), 0x7e);  // midpoint to the (absent) 480
  EXPECT_EQ(FloatToF8E4M3(479.9f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(1e6f), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(-1e6f), 0xfe);
  EXPECT_EQ(FloatToF8E4M3(std::numeric_limits<float>::infinity()), 0x7e);
  EXPECT_EQ(FloatToF8E4M3(-std::numeric_limits<float>::infinity()), 0xfe);
  EXPECT_EQ(FloatToF8E4M3(std::numeric_limits<float>::max()), 0x7e);
  EXPECT_TRUE(std::isnan(F8E4M3ToFloat(FloatToF8E4M3(std::nanf("")))));
  // Underflow: half the smallest subnormal ties to zero, anything above goes to 2^-9.
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.0f, -10)), 0x00);
  EXPECT_EQ(FloatToF8E4M3(std::nextafter(std::ldexp(1.0f, -10), 1.0f)), 0x01);
  EXPECT_EQ(FloatToF8E4M3(1e-20f), 0x00);
  EXPECT_EQ(FloatToF8E4M3(-1e-20f), 0x80);
  EXPECT_EQ(FloatToF8E4M3(std::ldexp(1.5f, -10)), 0x01);  // 0.75 * 2^-9 -> 2^-9
}

TEST(DTypeTest, E4M3MatchesBruteForceNearest) {
  // Against a brute-force search of the nearest code (ties to the even code) over a sweep.
  for (float x = -500.0f; x <= 500.0f; x += 0.37f) {
    for (float v : {x, x * 1e-3f, x * 1e-5f}) {
      const float clamped = std::min(448.0f, std::max(-448.0f, v));
      int best = -1;
      double best_err = 1e30;
      for (int code = 0; code < 256; ++code) {
        const double q = OcpE4M3(static_cast<uint8_t>(code));
        if (std::isnan(q)) continue;
        if ((code >= 0x80) != std::signbit(v)) continue;
        const double err = std::fabs(q - clamped);
        if (err < best_err || (err == best_err && code % 2 == 0)) {
          best = code;
          best_err = err;
        }
      }
      EXPECT_EQ(FloatToF8E4M3(v), best) << v;
    }
  }
}

TEST(DTypeTest, Bf16RoundTripsAndRoundsToEven) {
  for (uint32_t code = 0; code < 65536; ++code) {
    const float f = Bf16ToFloat(static_cast<uint16_t>(code));
    EXPECT_EQ(Bits(f), code << 16);
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(f))));
    } else {
      EXPECT_EQ(FloatToBf16(f), code) << code;
    }
  }
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(FloatToBf16(FromBits(0x3f818000u)), 0x3f82);  // tie -> even (up)
  EXPECT_EQ(FloatToBf16(FromBits(0x3f808001u)), 0x3f81);
  EXPECT_EQ(FloatToBf16(FromBits(0x3f807fffu)), 0x3f80);
  EXPECT_EQ(FloatToBf16(std::numeric_limits<float>::max()), 0x7f80);  // rounds to inf
  EXPECT_EQ(FloatToBf16(FromBits(0x00008000u)), 0x0000);              // subnormal tie -> 0
  EXPECT_EQ(FloatToBf16(FromBits(0x80018000u)), 0x8002);
  const uint16_t nan = FloatToBf16(FromBits(0x7f800001u));  // NaN payload in the low bits only
  EXPECT_TRUE(std::isnan(Bf16ToFloat(nan)));
}

TEST(DTypeTest, F16DecodesRoundTripsAndRoundsToEven) {
  for (uint32_t code = 0; code < 65536; ++code) {
    const double expected = IeeeF16(static_cast<uint16_t>(code));
    const float f = F16ToFloat(static_cast<uint16_t>(code));
    if (std::isnan(expected)) {
      EXPECT_TRUE(std::isnan(f));
      EXPECT_TRUE(std::isnan(F16ToFloat(FloatToF16(f))));
      continue;
    }
    EXPECT_EQ(static_cast<double>(f), expected) << code;
    EXPECT_EQ(FloatToF16(f), code) << code;
  }
  // Midpoints of adjacent finite codes (normals and subnormals), both signs.
  for (uint32_t code = 0; code < 0x7bff; ++code) {
    for (uint32_t sign : {0u, 0x8000u}) {
      const float a = F16ToFloat(static_cast<uint16_t>(code | sign));
      const float b = F16ToFloat(static_cast<uint16_t>((code + 1) | sign));
      const float mid = (a + b) / 2;
      const uint32_t even = (code % 2 == 0 ? code : code + 1) | sign;
      EXPECT_EQ(FloatToF16(mid), even) << mid;
      EXPECT_EQ(FloatToF16(std::nextafter(mid, a)), code | sign) << mid;
      EXPECT_EQ(FloatToF16(std::nextafter(mid, b)), (code + 1) | sign) << mid;
    }
  }
  EXPECT_EQ(FloatToF16(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToF16(65519.99f), 0x7bff);
  EXPECT_EQ(FloatToF16(65520.0f), 0x7c00);  // tie rounds to even = infinity
  EXPECT_EQ(FloatToF16(1e10f), 0x7c00);
  EXPECT_EQ(FloatToF16(-1e10f), 0xfc00);
  EXPECT_EQ(FloatToF16(std::ldexp(1.0f, -25)), 0x0000);  // half the smallest subnormal
  EXPECT_EQ(FloatToF16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToF16(std::ldexp(3.0f, -26)), 0x0001);
}

}  // namespace
}  // namespace spark::engine
