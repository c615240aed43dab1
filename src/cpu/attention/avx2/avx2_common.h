// AVX2 building blocks shared by the *_avx2.cc kernels (compiled with exactly -mavx2 -mfma
// -mf16c, called only after cpu_has_avx2_set() checks those three, isa.h): a fast exp2 without
// AVX-512's scalef, the online-softmax step for 8 query rows held in the lanes of a ymm register,
// the rows of a work item. Header-only and inline so the hot loops see through it; include it
// only from *_avx2.cc files. All of it is in an anonymous namespace: files built with different
// instruction sets must never share a compiled copy (isa.h).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/attention/kernel.h"
#include "cpu/attention/nonfinite_rows.h"
#include "cpu/attention/item.h"
#include "cpu/attention/softmax_state.h"

#define MLA_AVX2_INLINE inline __attribute__((always_inline))

namespace mla::cpu::avx2 {
namespace {


// 2^x. x < -126 and -inf give exactly 0 (no denormals); NaN stays NaN (a NaN score must reach
// the output, DESIGN §6); x is at most a rounding error above 0 in softmax use.
// 2^x = 2^n * 2^f, n = round(x), f in [-1/2, 1/2], 2^f by a degree-5 minimax polynomial
// (relative error about 2.5e-7); 2^n is built in the exponent field (AVX2 has no scalef).
MLA_AVX2_INLINE __m256 exp2_ps(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-126.f), _CMP_LT_OQ);  // NaN: false
  const __m256 xc = _mm256_max_ps(_mm256_set1_ps(-127.f), x);                // NaN: NaN
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  __m256 y = _mm256_set1_ps(1.339086331e-3f);
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(9.676031768e-3f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(5.550356954e-2f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(2.402210683e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(6.931471825e-1f));
  y = _mm256_fmadd_ps(y, f, _mm256_set1_ps(1.000000119e+0f));
  const __m256i e = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

// Lanes where token t is visible: t <= lim (lim relative to the step's first position).
MLA_AVX2_INLINE __m256 visible(__m256i lim, int t) {
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(t - 1)));
}

// ---- online softmax with 8 query rows in the lanes ---------------------------------------------
//
// Scores are kept in the base-2 domain: x = s * c with c = softmax_scale * log2(e), so that
// p = 2^(x - m) and lse = ln(2) * (m + log2(l)). Invisible scores (causal mask, chunk tails,
// padding rows) never enter max or sum: their p is exactly 0.

// Non-finite values (DESIGN §6), as in the AVX-512 kernels: a row that sees a NaN or +-Inf score
// (from its query or from a key or value it can see) gets m = NaN, which stays NaN for the rest
// of the item; finalize_rows then writes o = NaN, lse = NaN for it. Its exp and sums may hold
// anything meanwhile: they only reach that row's own lanes.
// Lanes of x that are NaN or +-Inf (exponent all ones).
MLA_AVX2_INLINE __m256 nonfinite(__m256 x) {
  const __m256i e = _mm256_set1_epi32(0x7f800000);
  return _mm256_castsi256_ps(
      _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_castps_si256(x), e), e));
}

// s * c rounded to fp32: the empty asm keeps the compiler from fusing the product into the
// following subtraction (-ffp-contract), so the maximum and the exp arguments use the same
// rounded product (fused, the row's largest score came out up to half an ulp of s * c above m:
// 2^(+-6e4) = inf or 0 at a softmax scale of 1e12).
MLA_AVX2_INLINE __m256 scaled_score(__m256 s, __m256 c) {
  __m256 x = _mm256_mul_ps(s, c);
  __asm__("" : "+x"(x));
  return x;
}

// Max of the visible scaled scores s[t * ss] over tokens [0, ntok); -inf if none is visible.
// *bad_vis: the rows (lanes all ones) with a non-finite visible score; *bad_any: the rows with any
// non-finite score, visible or not (a key or value holding NaN/Inf that P.V would multiply by
// 0 = NaN).
MLA_AVX2_INLINE __m256 rows8_masked_max(const float* s, int64_t ss, int ntok, __m256i lim,
                                        __m256 c, __m256* bad_vis, __m256* bad_any) {
  const __m256 ninf = _mm256_set1_ps(kNegInf);
  __m256 mx0 = ninf, mx1 = ninf, bv = _mm256_setzero_ps(), ba = bv;
  int t = 0;
  for (; t + 2 <= ntok; t += 2) {
    const __m256 y0 = scaled_score(_mm256_load_ps(s + t * ss), c);
    const __m256 y1 = scaled_score(_mm256_load_ps(s + (t + 1) * ss), c);
    const __m256 k0 = visible(lim, t), k1 = visible(lim, t + 1);
    const __m256 n0 = nonfinite(y0), n1 = nonfinite(y1);
    bv = _mm256_or_ps(bv, _mm256_or_ps(_mm256_and_ps(n0, k0), _mm256_and_ps(n1, k1)));
    ba = _mm256_or_ps(ba, _mm256_or_ps(n0, n1));
    mx0 = _mm256_max_ps(mx0, _mm256_blendv_ps(ninf, y0, k0));
    mx1 = _mm256_max_ps(mx1, _mm256_blendv_ps(ninf, y1, k1));
  }
  if (t < ntok) {
    const __m256 y0 = scaled_score(_mm256_load_ps(s + t * ss), c);
    const __m256 k0 = visible(lim, t), n0 = nonfinite(y0);
    bv = _mm256_or_ps(bv, _mm256_and_ps(n0, k0));
    ba = _mm256_or_ps(ba, n0);
    mx0 = _mm256_max_ps(mx0, _mm256_blendv_ps(ninf, y0, k0));
  }
  *bad_vis = bv;
  *bad_any = ba;
  return _mm256_max_ps(mx0, mx1);
}

// The running state of 8 rows moved past a step whose visible scaled scores have maximum
// step_max. Returns the shift m_use to subtract from this step's scores (the new maximum, or 0
// for a row that has seen nothing yet, so that -inf - -inf never happens) and sets
// *alpha = 2^(m_old - m_use) (0 while the row is still empty). m is updated; rows in `bad`
// (lanes all ones) and rows whose m is already NaN get m = NaN.
MLA_AVX2_INLINE __m256 rows8_advance_max(float* m, __m256 step_max, __m256* alpha, __m256 bad) {
  const __m256 m_old = _mm256_load_ps(m);
  bad = _mm256_or_ps(bad, _mm256_cmp_ps(m_old, m_old, _CMP_UNORD_Q));
  const __m256 m_new = _mm256_blendv_ps(_mm256_max_ps(step_max, m_old),
                                        _mm256_set1_ps(__builtin_nanf("")), bad);
  const __m256 seen = _mm256_cmp_ps(m_new, _mm256_set1_ps(kNegInf), _CMP_NEQ_UQ);
  const __m256 m_use = _mm256_and_ps(seen, m_new);
  *alpha = exp2_ps(_mm256_sub_ps(m_old, m_use));  // m_old = -inf: 0
  _mm256_store_ps(m, m_new);
  return m_use;
}

// p = 2^(s * c - m_use) for the visible lanes of token t, exactly 0 for the others.
MLA_AVX2_INLINE __m256 rows8_prob(const float* s_t, int t, __m256i lim, __m256 c, __m256 m_use) {
  return _mm256_and_ps(visible(lim, t),
                       exp2_ps(_mm256_sub_ps(scaled_score(_mm256_load_ps(s_t), c), m_use)));
}

// ---- work-item plumbing ------------------------------------------------------------------------

// Software prefetch into L2 (as the AVX-512 kernels: from DRAM at 16 rows the hardware
// prefetchers fall behind the interleaved token streams).
MLA_AVX2_INLINE void prefetch_line(const void* p) {
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
}
inline void prefetch_bytes(const void* p, int bytes) {
  for (int c = 0; c < bytes; c += 64) prefetch_line(static_cast<const char*>(p) + c);
}

// UP in the seed's old form: the accumulator is the item's output row, read and written back
// every step: go = go * alpha + lo (lo [rows][512]).
inline void up_spill(const ItemRows& ir, const float* lo, const float* alpha) {
  for (int r = 0; r < ir.rows; ++r) {
    float* go = ir.o(r);
    const float* x = lo + size_t(r) * kLatentDim;
    const __m256 al = _mm256_set1_ps(alpha[r]);
    for (int d = 0; d < kLatentDim; d += 8)
      _mm256_storeu_ps(go + d, _mm256_fmadd_ps(_mm256_loadu_ps(go + d), al, _mm256_load_ps(x + d)));
  }
}

// After the last step: o = go / l, lse = ln 2 * (m + log2 l) (m in the base-2 domain); a row that
// saw no key gets o = 0, lse = -inf; a row with m = NaN (it saw a NaN or Inf) gets o = NaN,
// lse = NaN.
// go_resident [rows][512], or nullptr: the output rows hold go. kPermuted: go holds each 16 dims
// as the even dims then the odd ones (the bf16 kernel's PV order), put back here.
template <bool kPermuted>
void finalize_rows(const ItemRows& ir, const float* go_resident, const float* m, const float* l) {
  for (int r = 0; r < ir.rows; ++r) {
    float* o = ir.o(r);
    const float* go = go_resident ? go_resident + size_t(r) * kLatentDim : o;
    if (std::isnan(m[r])) {
      std::fill(o, o + kLatentDim, __builtin_nanf(""));
      *ir.lse(r) = __builtin_nanf("");
      continue;
    }
    if (l[r] == 0.f) {
      std::memset(o, 0, kLatentDim * sizeof(float));
      *ir.lse(r) = kNegInf;
      continue;
    }
    const __m256 inv = _mm256_set1_ps(1.f / l[r]);
    for (int d = 0; d < kLatentDim; d += 16) {
      __m256 x = _mm256_mul_ps(_mm256_loadu_ps(go + d), inv);
      __m256 y = _mm256_mul_ps(_mm256_loadu_ps(go + d + 8), inv);
      if constexpr (kPermuted) {  // x: dims 0, 2, .., 14; y: dims 1, 3, .., 15
        const __m256 lo = _mm256_unpacklo_ps(x, y), hi = _mm256_unpackhi_ps(x, y);
        x = _mm256_permute2f128_ps(lo, hi, 0x20);
        y = _mm256_permute2f128_ps(lo, hi, 0x31);
      }
      _mm256_storeu_ps(o + d, x);
      _mm256_storeu_ps(o + d + 8, y);
    }
    *ir.lse(r) = lse_base2(m[r], l[r]);
  }
}

}  // namespace
}  // namespace mla::cpu::avx2
