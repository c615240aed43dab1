// Element types: names and parsing, and the fp16/bf16 conversions checked against independent
// references (the value of every half and bf16 bit pattern from ldexp; round to nearest even by
// searching the sorted table of values), exhaustively over the 16-bit patterns and at every tie.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "mla/dtype.h"
#include "mla/status.h"

namespace mla {
namespace {

// ---- independent references ------------------------------------------------------------------

// The value of half bit pattern h, from its fields alone.
double f16_value(uint16_t h) {
  const int exp = (h >> 10) & 0x1f;
  const int mant = h & 0x3ff;
  const double sign = (h & 0x8000) ? -1.0 : 1.0;
  if (exp == 0x1f) return mant ? std::nan("") : sign * INFINITY;
  if (exp == 0) return sign * std::ldexp(double(mant), -24);
  return sign * std::ldexp(double(1024 + mant), exp - 25);
}

// Nearest-even rounding of finite f to a 16-bit type whose positive finite values are the
// increasing table `pos` (index = bit pattern), with `inf_bits` next and `overflow` the value that
// the unbounded exponent would give there (2^16 for half, 2^128 for bf16).
uint16_t round_ref(float f, const std::vector<double>& pos, uint16_t inf_bits, double overflow) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  const double a = std::fabs(double(f));
  if (a >= overflow) return sign | inf_bits;
  // Largest pattern whose value is <= a.
  const size_t lo = size_t(std::upper_bound(pos.begin(), pos.end(), a) - pos.begin()) - 1;
  const double vlo = pos[lo];
  const double vhi = lo + 1 < pos.size() ? pos[lo + 1] : overflow;
  if (a == vlo) return uint16_t(sign | lo);
  const double dlo = a - vlo, dhi = vhi - a;  // exact: both are float-precision values
  const size_t r = dlo < dhi ? lo : dhi < dlo ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
  return uint16_t(sign | r);
}

const std::vector<double>& f16_table() {
  static const std::vector<double> t = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h < 0x7c00; ++h) v.push_back(f16_value(uint16_t(h)));
    return v;
  }();
  return t;
}
const std::vector<double>& bf16_table() {
  static const std::vector<double> t = [] {
    std::vector<double> v;
    for (uint32_t h = 0; h < 0x7f80; ++h) v.push_back(double(bits_f32(h << 16)));
    return v;
  }();
  return t;
}
uint16_t f16_ref(float f) { return round_ref(f, f16_table(), 0x7c00, 65536.0); }
uint16_t bf16_ref(float f) { return round_ref(f, bf16_table(), 0x7f80, std::ldexp(1.0, 128)); }

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", v);
  return buf;
}

// ---- names and parsing ------------------------------------------------------------------------

TEST(DType, SizesAndNames) {
  EXPECT_EQ(dtype_size(DType::f32), 4u);
  EXPECT_EQ(dtype_size(DType::f16), 2u);
  EXPECT_EQ(dtype_size(DType::bf16), 2u);
  EXPECT_EQ(dtype_size(DType::i8), 1u);
  EXPECT_EQ(dtype_size(DType::i32), 4u);
  EXPECT_EQ(dtype_size(DType::u16), 2u);
  EXPECT_STREQ(dtype_name(DType::f32), "fp32");
  EXPECT_STREQ(dtype_name(DType::f16), "fp16");
  EXPECT_STREQ(dtype_name(DType::bf16), "bf16");
  EXPECT_STREQ(dtype_name(DType::i8), "int8");
  EXPECT_STREQ(dtype_name(DType::i32), "int32");
  EXPECT_STREQ(dtype_name(DType::u16), "uint16");
}

TEST(DType, ParseAcceptsTheOneSpelling) {
  const std::pair<const char*, DType> cases[] = {
      {"fp32", DType::f32}, {"fp16", DType::f16},   {"bf16", DType::bf16},
      {"int8", DType::i8},  {"int32", DType::i32},  {"uint16", DType::u16}};
  for (const auto& [s, t] : cases) EXPECT_EQ(parse_dtype(s), t) << s;
  // Every name dtype_name gives parses back.
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::i8, DType::i32, DType::u16})
    EXPECT_EQ(parse_dtype(dtype_name(t)), t);
}

TEST(DType, ParseRefusesOthersNamingTheString) {
  // Other spellings of accepted types too: one name per type.
  for (const char* s : {"float64", "", "FP32", "int4", "fp8", " f32", "f32", "f16", "i8",
                        "float16", "bfloat16", "int", "u16"}) {
    try {
      parse_dtype(s);
      ADD_FAILURE() << "parse_dtype(\"" << s << "\") did not throw";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find(std::string("'") + s + "'"), std::string::npos) << m;
      EXPECT_NE(m.find("bf16"), std::string::npos) << "message should list accepted names: " << m;
    }
  }
}

// ---- f16 --------------------------------------------------------------------------------------

TEST(F16, KnownValues) {
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(f32_to_f16(1.0f), 0x3c00);
  EXPECT_EQ(f32_to_f16(-2.0f), 0xc000);
  EXPECT_EQ(f32_to_f16(0.5f), 0x3800);
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bff);  // max finite
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(f16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x03ff), std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(f16_to_f32(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_f32(0x3555), 0.333251953125f);
}

TEST(F16, TiesRoundToEven) {
  // 1 + 2^-11 is halfway between 0x3c00 (even) and 0x3c01: goes down.
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  // 1 + 3 * 2^-11 is halfway between 0x3c01 and 0x3c02 (even): goes up.
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  // Just above a tie goes up, just below goes down.
  EXPECT_EQ(f32_to_f16(bits_f32(f32_bits(1.0f + std::ldexp(1.0f, -11)) + 1)), 0x3c01);
  EXPECT_EQ(f32_to_f16(bits_f32(f32_bits(1.0f + 3 * std::ldexp(1.0f, -11)) - 1)), 0x3c01);
  EXPECT_EQ(f32_to_f16(-(1.0f + std::ldexp(1.0f, -11))), 0xbc00);
  EXPECT_EQ(f32_to_f16(-(1.0f + 3 * std::ldexp(1.0f, -11))), 0xbc02);
  // Subnormal ties: 2^-25 (half of the smallest subnormal) goes to 0, 3 * 2^-25 to 2 * 2^-24.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(-std::ldexp(1.0f, -25)), 0x8000);
  EXPECT_EQ(f32_to_f16(bits_f32(f32_bits(std::ldexp(1.0f, -25)) + 1)), 0x0001);
  EXPECT_EQ(f32_to_f16(3 * std::ldexp(1.0f, -25)), 0x0002);
  EXPECT_EQ(f32_to_f16(5 * std::ldexp(1.0f, -25)), 0x0002);
  // Largest subnormal + half a step ties up into the smallest normal (0x3ff is odd).
  EXPECT_EQ(f32_to_f16(std::ldexp(1023.5f, -24)), 0x0400);
  EXPECT_EQ(f32_to_f16(std::ldexp(1022.5f, -24)), 0x03fe);
}

TEST(F16, OverflowAndSpecials) {
  // 65520 is halfway between 65504 (0x7bff, odd) and 65536 (would-be 0x7c00): ties to Inf.
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00);
  EXPECT_EQ(f32_to_f16(bits_f32(f32_bits(65520.0f) - 1)), 0x7bff);
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xfc00);
  EXPECT_EQ(f32_to_f16(1e10f), 0x7c00);
  EXPECT_EQ(f32_to_f16(-3.4e38f), 0xfc00);
  EXPECT_EQ(f32_to_f16(INFINITY), 0x7c00);
  EXPECT_EQ(f32_to_f16(-INFINITY), 0xfc00);
  EXPECT_EQ(f16_to_f32(0x7c00), INFINITY);
  EXPECT_EQ(f16_to_f32(0xfc00), -INFINITY);
  // Tiny floats, float subnormals included, become signed zeros.
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000);
  EXPECT_EQ(f32_to_f16(bits_f32(0x00000001)), 0x0000);
  EXPECT_EQ(f32_to_f16(bits_f32(0x80000001)), 0x8000);
  // NaN stays NaN (quiet) with its sign, whatever its payload.
  for (uint32_t nan :
       {0x7fc00000u, 0x7f800001u, 0x7fbfffffu, 0xffc00000u, 0xff800001u, 0x7fffe000u}) {
    const uint16_t h = f32_to_f16(bits_f32(nan));
    EXPECT_EQ(h & 0x7c00, 0x7c00) << hex(nan);
    EXPECT_NE(h & 0x03ff, 0) << hex(nan);
    EXPECT_NE(h & 0x0200, 0) << "quiet bit " << hex(nan);
    EXPECT_EQ(bool(h & 0x8000), bool(nan & 0x80000000u)) << hex(nan);
    EXPECT_TRUE(std::isnan(f16_to_f32(h)));
  }
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7c01)));  // signalling NaN is not Inf
  EXPECT_TRUE(std::signbit(f16_to_f32(0xfe00)));
}

TEST(F16, EveryPatternMatchesFieldsAndRoundTrips) {
  for (uint32_t u = 0; u < 0x10000; ++u) {
    const uint16_t h = uint16_t(u);
    const float f = f16_to_f32(h);
    const double want = f16_value(h);
    const uint16_t back = f32_to_f16(f);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(f)) << hex(u);
      ASSERT_EQ(std::signbit(f), bool(h & 0x8000)) << hex(u);
      ASSERT_EQ(back, h | 0x0200) << hex(u) << ": NaN payload kept, made quiet";
      ASSERT_TRUE(std::isnan(f16_to_f32(back))) << hex(u);
    } else {
      ASSERT_EQ(double(f), want) << hex(u);
      ASSERT_EQ(std::signbit(f), bool(h & 0x8000)) << hex(u);
      ASSERT_EQ(back, h) << hex(u);
      ASSERT_EQ(f32_bits(f16_to_f32(back)), f32_bits(f)) << hex(u);
    }
  }
}

TEST(F16, EveryTieAndItsNeighboursMatchReference) {
  // Midpoints between consecutive halves (exact in float), one float step either side, both signs.
  const std::vector<double>& t = f16_table();
  for (size_t i = 0; i < t.size(); ++i) {
    const double hi = i + 1 < t.size() ? t[i + 1] : 65536.0;
    const float mid = float((t[i] + hi) / 2);
    ASSERT_EQ(double(mid), (t[i] + hi) / 2);
    for (float f : {mid, bits_f32(f32_bits(mid) + 1), bits_f32(f32_bits(mid) - 1), float(t[i])})
      for (float s : {f, -f}) ASSERT_EQ(f32_to_f16(s), f16_ref(s)) << s << " " << hex(f32_bits(s));
  }
}

TEST(F16, RandomFloatsMatchReference) {
  const uint32_t seed = 20240601;
  std::mt19937 rng(seed);
  // Random bit patterns cover every exponent; most fall outside the half range, so also draw
  // patterns with exponents in and around it.
  std::uniform_int_distribution<uint32_t> any;
  std::uniform_int_distribution<uint32_t> exp(127 - 27, 127 + 17);
  for (int k = 0; k < 400000; ++k) {
    uint32_t u = any(rng);
    if (k % 2) u = (u & 0x807fffffu) | (exp(rng) << 23);
    const float f = bits_f32(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), f16_ref(f)) << "seed " << seed << " bits " << hex(u);
  }
}

// ---- bf16 -------------------------------------------------------------------------------------

TEST(BF16, KnownValuesAndTies) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(f32_to_bf16(-0.0f), 0x8000);
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 0x3f80 (even) and 0x3f81: down. 1 + 3 * 2^-8: up to 0x3f82.
  EXPECT_EQ(f32_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(f32_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f808001)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x3f817fff)), 0x3f81);
  EXPECT_EQ(f32_to_bf16(bits_f32(0xbf818000)), 0xbf82);
  // Float subnormals: ties to even there too.
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00008000)), 0x0000);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00018000)), 0x0002);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x00008001)), 0x0001);
  EXPECT_EQ(bf16_to_f32(0x0001), bits_f32(0x00010000));
  // Max finite 0x7f7f; the float max lies past the halfway point to 2^128 and becomes Inf.
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7f0000)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7f7fff)), 0x7f7f);
  EXPECT_EQ(f32_to_bf16(bits_f32(0x7f7f8000)), 0x7f80);
  EXPECT_EQ(f32_to_bf16(3.4028235e38f), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-3.4028235e38f), 0xff80);
  EXPECT_EQ(f32_to_bf16(INFINITY), 0x7f80);
  EXPECT_EQ(f32_to_bf16(-INFINITY), 0xff80);
  for (uint32_t nan : {0x7fc00000u, 0x7f800001u, 0xff800001u, 0x7fffffffu, 0xffffffffu}) {
    const uint16_t h = f32_to_bf16(bits_f32(nan));
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << hex(nan);
    EXPECT_EQ(bool(h & 0x8000), bool(nan & 0x80000000u)) << hex(nan);
  }
}

TEST(BF16, EveryPatternRoundTrips) {
  for (uint32_t u = 0; u < 0x10000; ++u) {
    const uint16_t h = uint16_t(u);
    const float f = bf16_to_f32(h);
    ASSERT_EQ(f32_bits(f), u << 16);
    const uint16_t back = f32_to_bf16(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(bf16_to_f32(back))) << hex(u);
      ASSERT_EQ(back & 0x8000, h & 0x8000) << hex(u);
    } else {
      ASSERT_EQ(back, h) << hex(u);
    }
  }
}

TEST(BF16, EveryTieAndItsNeighboursMatchReference) {
  for (uint32_t h = 0; h < 0x7f80; ++h) {
    const uint32_t mid = (h << 16) | 0x8000;
    for (uint32_t u : {mid, mid + 1, mid - 1, h << 16})
      for (uint32_t s : {u, u | 0x80000000u})
        ASSERT_EQ(f32_to_bf16(bits_f32(s)), bf16_ref(bits_f32(s))) << hex(s);
  }
}

TEST(BF16, RandomFloatsMatchReference) {
  const uint32_t seed = 77;
  std::mt19937 rng(seed);
  std::uniform_int_distribution<uint32_t> any;
  for (int k = 0; k < 300000; ++k) {
    const uint32_t u = any(rng);
    const float f = bits_f32(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), bf16_ref(f)) << "seed " << seed << " bits " << hex(u);
  }
}

TEST(DType, RoundThrough) {
  const float x = 1.0f + std::ldexp(1.0f, -9) + std::ldexp(1.0f, -20);
  EXPECT_EQ(round_through(DType::f32, x), x);
  EXPECT_EQ(round_through(DType::bf16, x), bf16_to_f32(f32_to_bf16(x)));
  EXPECT_EQ(round_through(DType::bf16, x), 1.0f);
  EXPECT_EQ(round_through(DType::f16, x), 1.0f + std::ldexp(1.0f, -9));
  EXPECT_EQ(round_through(DType::f16, 1e6f), INFINITY);
  EXPECT_TRUE(std::isnan(round_through(DType::f16, NAN)));
}

}  // namespace
}  // namespace mla

// ---- fp8 e4m3 ---------------------------------------------------------------------------------

namespace mla {
namespace {

// The value of an e4m3fn code from its fields (the OCP definition), in double.
double e4m3_fields(int b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  const double mag = e == 0 ? m * std::ldexp(1.0, -9) : (1 + m / 8.0) * std::ldexp(1.0, e - 7);
  return s ? -mag : mag;
}

TEST(Fp8, EveryCodeDecodesToItsFieldsAndRoundTrips) {
  int nans = 0;
  for (int b = 0; b < 256; ++b) {
    const float f = fp8e4m3_to_f32(uint8_t(b));
    if ((b & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(f)) << hex(b);
      EXPECT_EQ(std::signbit(f), bool(b & 0x80)) << hex(b);
      ++nans;
      continue;
    }
    EXPECT_EQ(double(f), e4m3_fields(b)) << hex(b);
    EXPECT_EQ(bf16_to_f32(f32_to_bf16(f)), f) << hex(b) << " is exact in bf16";
    EXPECT_EQ(int(f32_to_fp8e4m3(f)), b) << hex(b);  // -0 keeps its sign bit (0x80)
  }
  EXPECT_EQ(nans, 2);
  EXPECT_EQ(fp8e4m3_to_f32(0x7e), 448.f);
}

// Rounding: every midpoint between adjacent codes goes to the even code, and the floats just
// beside it to the nearer one; beyond 448 saturates; NaN and Inf give NaN.
TEST(Fp8, RoundsToNearestEvenAndSaturates) {
  std::vector<float> pos;
  for (int b = 0; b < 0x7f; ++b) pos.push_back(fp8e4m3_to_f32(uint8_t(b)));
  for (size_t i = 0; i + 1 < pos.size(); ++i) {
    const float lo = pos[i], hi = pos[i + 1];
    const float mid = (lo + hi) / 2;  // exact: both have few mantissa bits
    const int even = (i % 2 == 0) ? int(i) : int(i + 1);
    EXPECT_EQ(int(f32_to_fp8e4m3(mid)), even) << mid;
    EXPECT_EQ(int(f32_to_fp8e4m3(-mid)), 0x80 | even) << -mid;
    EXPECT_EQ(int(f32_to_fp8e4m3(std::nextafter(mid, 0.f))), int(i)) << mid;
    EXPECT_EQ(int(f32_to_fp8e4m3(std::nextafter(mid, 1e9f))), int(i + 1)) << mid;
  }
  for (float big : {448.5f, 464.f, 480.f, 1e6f, 3e38f}) {
    EXPECT_EQ(int(f32_to_fp8e4m3(big)), 0x7e) << big;
    EXPECT_EQ(int(f32_to_fp8e4m3(-big)), 0xfe) << -big;
  }
  EXPECT_EQ(int(f32_to_fp8e4m3(1e-30f)), 0);
  EXPECT_EQ(int(f32_to_fp8e4m3(std::ldexp(1.f, -10))), 0) << "half the smallest subnormal: tie to 0";
  EXPECT_EQ(int(f32_to_fp8e4m3(std::ldexp(1.5f, -10))), 1);
  for (float bad : {std::nanf(""), INFINITY, -INFINITY})
    EXPECT_TRUE(std::isnan(fp8e4m3_to_f32(f32_to_fp8e4m3(bad)))) << bad;
}

TEST(Fp8, RandomFloatsMatchNearestCode) {
  const uint64_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-500.f, 500.f);
  // A full scan of the codes per value: 4000 values cover every binade many times.
  for (int i = 0; i < 4000; ++i) {
    const float x = i % 2 ? u(rng) : u(rng) * 1e-3f;
    const float y = fp8e4m3_to_f32(f32_to_fp8e4m3(x));
    // Nearest finite code (saturating): no code is strictly closer.
    const double err = std::fabs(double(y) - x);
    for (int b = 0; b < 256; ++b) {
      if ((b & 0x7f) == 0x7f) continue;
      ASSERT_LE(err, std::fabs(e4m3_fields(b) - x)) << x << " -> " << y << ", code " << hex(b);
    }
  }
}

}  // namespace
}  // namespace mla
