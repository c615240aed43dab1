// Element type tags (size, name, parsing) and the portable IEEE half <-> float conversions.
// Plain integer code, no F16C: this file is built for baseline x86-64, and the AVX-512 kernels
// convert with their own instructions.
#include "mla/dtype.h"

#include "mla/status.h"

namespace mla {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::f32:
      return 4;
    case DType::f16:
      return 2;
    case DType::bf16:
      return 2;
    case DType::i8:
      return 1;
    case DType::i32:
      return 4;
    case DType::u16:
      return 2;
  }
  MLA_FAIL("dtype_size: invalid DType value " << int(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32:
      return "fp32";
    case DType::f16:
      return "fp16";
    case DType::bf16:
      return "bf16";
    case DType::i8:
      return "int8";
    case DType::i32:
      return "int32";
    case DType::u16:
      return "uint16";
  }
  MLA_FAIL("dtype_name: invalid DType value " << int(t));
}

// One spelling per type, the one dtype_name gives (and kv_dtype_name, for the cache formats);
// nothing else is accepted, so a typo or a foreign alias never passes silently.
DType parse_dtype(const std::string& s) {
  for (DType t : {DType::f32, DType::f16, DType::bf16, DType::i8, DType::i32, DType::u16})
    if (s == dtype_name(t)) return t;
  MLA_FAIL("unknown dtype '" << s << "'; accepted: fp32, fp16, bf16, int8, int32, uint16");
}

//   half:  s eeeee mmmmmmmmmm        bias 15, subnormal when e == 0, Inf/NaN when e == 31
//   float: s eeeeeeee m(23)          bias 127
float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));  // Inf, or NaN with payload
  if (exp != 0) return bits_f32(sign | ((exp + 127 - 15) << 23) | (mant << 13));
  if (mant == 0) return bits_f32(sign);
  // Subnormal half, mant * 2^-24: shift the leading one up to the implicit bit; every half
  // subnormal is a normal float.
  uint32_t e = 127 - 15 + 1;
  while ((mant & 0x400u) == 0) {
    mant <<= 1;
    --e;
  }
  return bits_f32(sign | (e << 23) | ((mant & 0x3ffu) << 13));
}

uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));  // quiet NaN
  if (a >= 0x47800000u) return uint16_t(sign | 0x7c00u);  // >= 2^16 (or Inf): beyond any rounding
  if (a >= 0x38800000u) {
    // Normal half range, |f| >= 2^-14. Rebias, then round the 13 dropped bits to nearest even; a
    // carry out of the mantissa bumps the exponent, and past 65504 lands exactly on Inf (0x7c00).
    const uint32_t r = a - ((127u - 15u) << 23);
    return uint16_t(sign | ((r + 0xfffu + ((r >> 13) & 1u)) >> 13));
  }
  // Subnormal half (units of 2^-24). At most 2^-25 (half the smallest subnormal, a tie that goes to
  // the even 0) the result is a signed zero; this also covers float zeros and subnormals.
  if (a <= 0x33000000u) return sign;
  const uint32_t e = a >> 23;                      // 102 ..< 113
  const uint32_t m = (a & 0x7fffffu) | 0x800000u;  // f = m * 2^(e - 150)
  const uint32_t shift = 126 - e;                  // f / 2^-24 = m >> shift, 14 ..< 25
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1);
  const uint32_t half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // 0x3ff + 1 = 0x400 is the smallest normal
  return uint16_t(sign | h);
}

uint8_t f32_to_fp8e4m3(float f) {
  const uint32_t u = f32_bits(f);
  const uint8_t sign = uint8_t((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a >= 0x7f800000u) return uint8_t(sign | 0x7fu);  // NaN, Inf -> NaN
  const float x = bits_f32(a);
  if (x >= 464.f) return uint8_t(sign | 0x7eu);  // 464 is the midpoint 448..512: saturate
  if (x < 0x1p-6f) {
    // Subnormal range: multiples of 2^-9, round to nearest even (exact in float: x * 512 < 8).
    const float q = x * 512.f;
    uint32_t m = uint32_t(q);
    const float rest = q - float(m);
    if (rest > 0.5f || (rest == 0.5f && (m & 1u))) ++m;
    return uint8_t(sign | m);  // m == 8 is the smallest normal, 0x08: the encoding carries over
  }
  // Normal: keep 3 mantissa bits of the float's 23, round to nearest even on the 20 dropped.
  uint32_t r = a + 0x7ffffu + ((a >> 20) & 1u);
  const uint32_t e = (r >> 23) - 120u, m = (r >> 20) & 0x7u;
  if (e > 15 || (e == 15 && m == 7)) return uint8_t(sign | 0x7eu);  // rounded past 448
  return uint8_t(sign | (e << 3) | m);
}

}  // namespace mla
