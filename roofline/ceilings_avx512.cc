// The AVX-512 measuring loops of the roofline (see ceilings.h). Compiled with AVX-512 enabled, so
// ceilings.cc calls them only after checking the CPU. The compute loops are inline assembly: with
// intrinsics GCC 12 keeps an array of 16 accumulators in memory, so the loop would time
// loads and stores instead of the instruction under test.
#include <immintrin.h>

#include "roofline/ceilings.h"

namespace mla::ceilings_detail {

static_assert(kZmmChains == 16, "the loops below are written out for 16 accumulators");

// clang-format off
// One instruction per accumulator zmm0..zmm15; %[a] and %[b] are the loop-invariant operands.
#define MLA_X16(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11) I(12) I(13) I(14) I(15)
#define MLA_ZERO(i) "vpxord %%zmm" #i ", %%zmm" #i ", %%zmm" #i "\n\t"
#define MLA_STORE(i) "vmovdqu32 %%zmm" #i ", " #i "*64(%[out])\n\t"
#define MLA_CLOBBER_ZMM0_15                                                                      \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
      "xmm12", "xmm13", "xmm14", "xmm15"

// Runs the loop (iters >= 1) and stores the 16 accumulators to out; returns a sum of them so that
// the caller uses the result.
#define MLA_ZMM_LOOP(STEP, a_, b_, iters_, out_)                                       \
  asm volatile(MLA_X16(MLA_ZERO) "1:\n\t" MLA_X16(STEP) "dec %[n]\n\t"                 \
               "jnz 1b\n\t" MLA_X16(MLA_STORE)                                         \
               : [n] "+r"(iters_)                                                      \
               : [a] "v"(a_), [b] "v"(b_), [out] "r"(out_)                             \
               : "cc", "memory", MLA_CLOBBER_ZMM0_15)

// clang-format on

namespace {

template <class T>
double sum(const T* v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(v[i]);
  return s;
}

}  // namespace

double fp32_fma_avx512f(uint64_t iters) {
  if (iters == 0) return 0;
#define MLA_FMA(i) "vfmadd231ps %[b], %[a], %%zmm" #i "\n\t"
  // 1 x 1 added per step: the sums climb to 2^24 and stay there, never denormal or infinite.
  const __m512 a = _mm512_set1_ps(1.0f), b = _mm512_set1_ps(1.0f);
  alignas(64) float out[16 * kZmmChains];
  MLA_ZMM_LOOP(MLA_FMA, a, b, iters, out);
#undef MLA_FMA
  return sum(out, 16 * kZmmChains);
}

double bf16_dot_avx512bf16(uint64_t iters) {
  if (iters == 0) return 0;
#define MLA_DPBF16(i) "vdpbf16ps %[b], %[a], %%zmm" #i "\n\t"
  const __m512i a = _mm512_set1_epi16(0x3f80), b = _mm512_set1_epi16(0x3f80);  // bf16 1.0
  alignas(64) float out[16 * kZmmChains];
  MLA_ZMM_LOOP(MLA_DPBF16, a, b, iters, out);
#undef MLA_DPBF16
  return sum(out, 16 * kZmmChains);
}

double int8_dot_avx512vnni(uint64_t iters) {
  if (iters == 0) return 0;
#define MLA_DPBUSD(i) "vpdpbusd %[b], %[a], %%zmm" #i "\n\t"
  // u8 3 x s8 -5; the int32 sums wrap around, which costs nothing.
  const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(-5);
  alignas(64) int32_t out[16 * kZmmChains];
  MLA_ZMM_LOOP(MLA_DPBUSD, a, b, iters, out);
#undef MLA_DPBUSD
  return sum(out, 16 * kZmmChains);
}

uint64_t read_sum_avx512f(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  // 8 independent sums: one add per 64-byte load never limits the load rate.
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0,
          s7 = s0;
  for (; c < end; c += 512) {
    s0 = _mm512_add_epi64(s0, _mm512_load_si512(c));
    s1 = _mm512_add_epi64(s1, _mm512_load_si512(c + 64));
    s2 = _mm512_add_epi64(s2, _mm512_load_si512(c + 128));
    s3 = _mm512_add_epi64(s3, _mm512_load_si512(c + 192));
    s4 = _mm512_add_epi64(s4, _mm512_load_si512(c + 256));
    s5 = _mm512_add_epi64(s5, _mm512_load_si512(c + 320));
    s6 = _mm512_add_epi64(s6, _mm512_load_si512(c + 384));
    s7 = _mm512_add_epi64(s7, _mm512_load_si512(c + 448));
  }
  s0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3)),
                        _mm512_add_epi64(_mm512_add_epi64(s4, s5), _mm512_add_epi64(s6, s7)));
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, s0);
  uint64_t s = 0;
  for (uint64_t v : lanes) s += v;
  return s;
}

}  // namespace mla::ceilings_detail
