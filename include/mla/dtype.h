// Numeric types: element type tags and the fp16/bf16 <-> fp32 conversions (round to nearest even,
// NaN and Inf kept). The conversions are inline because the kernels' portable paths use them.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "mla/export.h"

namespace mla {

enum class DType : uint8_t { f32, f16, bf16, i8, i32, u16 };

MLA_API size_t dtype_size(DType t);
MLA_API const char* dtype_name(DType t);    // "fp32", "fp16", "bf16", "int8", "int32", "uint16"
MLA_API DType parse_dtype(const std::string& s);  // exactly the names dtype_name gives

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float bf16_to_f32(uint16_t h) { return bits_f32(uint32_t(h) << 16); }

inline uint16_t f32_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even; overflow rounds to Inf
  return uint16_t(u >> 16);
}

MLA_API float f16_to_f32(uint16_t h);
MLA_API uint16_t f32_to_f16(float f);

// fp8 e4m3 (OCP "e4m3fn", torch.float8_e4m3fn): 1 sign, 4 exponent (bias 7), 3 mantissa bits;
// no Inf; 0x7f / 0xff are NaN; the largest finite value is 448; subnormals down to 2^-9.
// Every code is exactly a bf16 (and an fp32) value.
inline float fp8e4m3_to_f32(uint8_t b) {
  const uint32_t sign = uint32_t(b & 0x80u) << 24;
  const uint32_t e = (b >> 3) & 0xfu, m = b & 0x7u;
  if (e == 0xf && m == 0x7) return bits_f32(sign | 0x7fc00000u);  // NaN
  if (e == 0) {  // subnormal: m * 2^-9
    const float v = float(m) * 0x1p-9f;
    return sign ? -v : v;
  }
  return bits_f32(sign | ((e + 120u) << 23) | (m << 20));
}

// Round to nearest, ties to even; finite values beyond 448 saturate to +-448 (what FlashMLA's
// and vLLM's writers do after scaling); NaN and +-Inf become NaN (e4m3 has no Inf, and an Inf
// must not turn into a plausible number).
MLA_API uint8_t f32_to_fp8e4m3(float f);

// Element i of an array of type t (f32, f16 or bf16) as a float.
inline float load_f32(DType t, const void* data, int64_t i) {
  switch (t) {
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(data)[i]);
    case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(data)[i]);
    default: return static_cast<const float*>(data)[i];
  }
}

// The value f becomes after a round trip through type t (f32, f16 or bf16).
inline float round_through(DType t, float f) {
  switch (t) {
    case DType::bf16: return bf16_to_f32(f32_to_bf16(f));
    case DType::f16: return f16_to_f32(f32_to_f16(f));
    default: return f;
  }
}

}  // namespace mla
