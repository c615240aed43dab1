// The AMX and vector-exp measuring loops of the roofline (see ceilings.h): the tile unit's int8
// and bf16 rates (docs/DESIGN.md §10) and the AVX-512 exp2 rate, which bounds the softmax once the
// tile unit does the products. Compiled with AVX-512 and AMX enabled (its name ends in
// _avx512amx.cc); ceilings.cc calls the tile loops only after amx_usable().
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>

#include "roofline/ceilings.h"

namespace mla::ceilings_detail {

namespace {

struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// Four independent accumulators (tmm0-3) over operands loaded once (tmm4-7): the tile unit's
// compute rate, as the kernels' 2 x 2 blocking uses it.
template <bool kBf16>
double tile_loop(uint64_t iters) {
  static const TileConfig cfg;
  alignas(64) static const uint8_t ones[1024] = {1};
  alignas(64) float out[256];
  asm volatile("ldtilecfg %0" ::"m"(cfg));
  asm volatile(
      "tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3\n\t"
      "tileloadd (%0,%1,1), %%tmm4\n\ttileloadd (%0,%1,1), %%tmm5\n\t"
      "tileloadd (%0,%1,1), %%tmm6\n\ttileloadd (%0,%1,1), %%tmm7" ::"r"(ones),
      "r"(int64_t(64))
      : "memory");
  for (uint64_t i = 0; i < iters; ++i) {
    if constexpr (kBf16)
      asm volatile(
          "tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\ttdpbf16ps %%tmm7, %%tmm4, %%tmm1\n\t"
          "tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\ttdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
    else
      asm volatile(
          "tdpbssd %%tmm6, %%tmm4, %%tmm0\n\ttdpbssd %%tmm7, %%tmm4, %%tmm1\n\t"
          "tdpbssd %%tmm6, %%tmm5, %%tmm2\n\ttdpbssd %%tmm7, %%tmm5, %%tmm3" ::);
  }
  asm volatile("tilestored %%tmm0, (%0,%1,1)\n\ttilerelease" ::"r"(out), "r"(int64_t(64))
               : "memory");
  return double(out[0]) + out[255];
}

}  // namespace

bool amx_usable() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  constexpr unsigned kAmx = (1u << 22) | (1u << 24) | (1u << 25);  // BF16, TILE, INT8
  if ((d & kAmx) != kAmx || !__builtin_cpu_supports("avx512f")) return false;
  static const bool granted = syscall(SYS_arch_prctl, 0x1023 /*ARCH_REQ_XCOMP_PERM*/,
                                      18 /*XFEATURE_XTILEDATA*/) == 0;
  return granted;
}

double amx_int8_loop(uint64_t iters) { return tile_loop<false>(iters); }
double amx_bf16_loop(uint64_t iters) { return tile_loop<true>(iters); }

double exp2_avx512f(uint64_t iters) {
  // 2^x as the kernels compute it (round, a degree-6 polynomial in FMAs, scalef), 8 independent
  // vectors per iteration; the argument stays in [-1, 0] so nothing under- or overflows.
  __m512 x[8];
  for (int j = 0; j < 8; ++j) x[j] = _mm512_set1_ps(-0.1f * float(j + 1));
  const __m512 c6 = _mm512_set1_ps(1.535336188319500e-4f), c5 = _mm512_set1_ps(1.339887440266574e-3f),
               c4 = _mm512_set1_ps(9.618437357674640e-3f), c3 = _mm512_set1_ps(5.550332471162809e-2f),
               c2 = _mm512_set1_ps(2.402264791363012e-1f), c1 = _mm512_set1_ps(6.931472028550421e-1f),
               one = _mm512_set1_ps(1.f), neg = _mm512_set1_ps(-1.f);
  for (uint64_t i = 0; i < iters; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      const __m512 n = _mm512_roundscale_ps(x[j], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 f = _mm512_sub_ps(x[j], n);
      __m512 y = _mm512_fmadd_ps(c6, f, c5);
      y = _mm512_fmadd_ps(y, f, c4);
      y = _mm512_fmadd_ps(y, f, c3);
      y = _mm512_fmadd_ps(y, f, c2);
      y = _mm512_fmadd_ps(y, f, c1);
      y = _mm512_fmadd_ps(y, f, one);
      // the next argument: -2^x in [-1, -0.5], so the chain continues without growing
      x[j] = _mm512_mul_ps(_mm512_scalef_ps(y, n), neg);
    }
  }
  __m512 s = x[0];
  for (int j = 1; j < 8; ++j) s = _mm512_add_ps(s, x[j]);
  return double(_mm512_reduce_add_ps(s));
}

}  // namespace mla::ceilings_detail
