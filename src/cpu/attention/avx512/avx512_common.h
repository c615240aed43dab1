// AVX-512 building blocks shared by the attention kernels (the *_avx512*.cc files, compiled with
// the instruction sets of isa.h): a fast exp2, a 16 x 16 transpose of 32-bit elements, and the
// online-softmax step for 16 query rows held in the lanes of a vector. Header-only and inline so
// that the kernels' hot loops see through them; include it only from *_avx512*.cc files. All of
// it is in an anonymous namespace: files built with different instruction sets (the fp16 kernel
// has AVX-512F only) must never share a compiled copy (isa.h).
#pragma once

// GCC 12 warns about its own _mm512_undefined_* (`__m512 __Y = __Y;`, GCC bug 105593) wherever a
// masked or widening intrinsic is inlined. The pragma only helps if it precedes the first
// <immintrin.h> of the file, so the .cc files that include this header repeat it at their top.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cpu/attention/kernel.h"
#include "cpu/attention/item.h"
#include "cpu/attention/softmax_state.h"
#include "cpu/attention/nonfinite_rows.h"

#define MLA_AVX512_INLINE inline __attribute__((always_inline))

namespace mla::cpu::avx512 {
namespace {

// 2^x for the lanes in `keep`, 0 elsewhere; also 0 where x < -126 (so -inf gives 0 and no NaN,
// and no denormal is ever produced). x must not be NaN; x > 128 overflows to +inf.
// 2^x = 2^n * 2^f with n = round(x), f in [-1/2, 1/2]; 2^f by Cephes' exp2f polynomial
// (relative error about 2e-7 over that interval).
MLA_AVX512_INLINE __m512 exp2_ps(__m512 x, __mmask16 keep = 0xffff) {
  keep = _mm512_mask_cmp_ps_mask(keep, x, _mm512_set1_ps(-126.f), _CMP_GE_OQ);
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-127.f));
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);
  __m512 y = _mm512_set1_ps(1.535336188319500e-4f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.339887440266574e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.618437357674640e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.550332471162809e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.402264791363012e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931472028550421e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.f));
  return _mm512_maskz_scalef_ps(keep, y, n);
}

// In-place transpose of a 16 x 16 matrix of 32-bit elements held in 16 registers.
MLA_AVX512_INLINE void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  // Each register now holds, per 128-bit lane L, 4 consecutive columns of row block L; gather the
  // lanes: first pair blocks (0,1) and (2,3) of 4 rows, then (0..1, 2..3).
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    r[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// ---- online softmax with 16 query rows in the lanes (the fp kernels' SM stage) ----------------
//
// Scores are kept in the base-2 domain: x = s * c with c = softmax_scale * log2(e), so that
// p = 2^(x - m) and lse = ln(2) * (m + log2(l)). Token t of a step is visible to row r iff
// t <= lim[r] (lim = last visible position minus the step's first position; chunk tails past
// kv_end and padding rows have lim below them), and invisible scores never enter max or sum.

// Non-finite values (DESIGN §6): a row that sees a NaN or +-Inf score (from its query or from a
// key or value it can see) gets m = NaN, which stays NaN for the rest of the item; finalize_rows
// then writes o = NaN, lse = NaN for it. The exp and sums of such a row may hold anything
// meanwhile: they only ever reach that row's own lanes.
MLA_AVX512_INLINE __mmask16 nonfinite_mask(__m512 x) {
  // Exponent all ones: NaN or +-Inf. (AVX-512F only: the fp16 kernel is built without DQ's
  // fpclass.)
  const __m512i e = _mm512_set1_epi32(0x7f800000);
  return _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(x), e), e);
}

// s * c rounded to fp32 whatever -ffp-contract says (the mul_round intrinsic is never fused into
// a following subtraction): the maximum and the exp arguments must use the same rounded product.
MLA_AVX512_INLINE __m512 scaled_score(__m512 s, __m512 c) {
  return _mm512_mul_round_ps(s, c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// Max of the visible scaled scores s[t * ss] over tokens [0, ntok); -inf if none is visible.
// *bad_vis: the rows with a non-finite visible score; *bad_any: the rows with any non-finite
// score, visible or not (a key or value holding NaN/Inf that P.V would multiply by 0 = NaN).
MLA_AVX512_INLINE __m512 rows16_masked_max(const float* s, int64_t ss, int ntok, __m512i lim,
                                           __m512 c, __mmask16* bad_vis, __mmask16* bad_any) {
  __m512 mx0 = _mm512_set1_ps(-__builtin_inff()), mx1 = mx0;
  __mmask16 bv = 0, ba = 0;
  int t = 0;
  for (; t + 2 <= ntok; t += 2) {
    const __mmask16 k0 = _mm512_cmpge_epi32_mask(lim, _mm512_set1_epi32(t));
    const __mmask16 k1 = _mm512_cmpge_epi32_mask(lim, _mm512_set1_epi32(t + 1));
    const __m512 x0 = scaled_score(_mm512_load_ps(s + t * ss), c);
    const __m512 x1 = scaled_score(_mm512_load_ps(s + (t + 1) * ss), c);
    const __mmask16 n0 = nonfinite_mask(x0), n1 = nonfinite_mask(x1);
    bv |= (n0 & k0) | (n1 & k1);
    ba |= n0 | n1;
    mx0 = _mm512_mask_max_ps(mx0, k0, mx0, x0);
    mx1 = _mm512_mask_max_ps(mx1, k1, mx1, x1);
  }
  if (t < ntok) {
    const __mmask16 k0 = _mm512_cmpge_epi32_mask(lim, _mm512_set1_epi32(t));
    const __m512 x0 = scaled_score(_mm512_load_ps(s + t * ss), c);
    const __mmask16 n0 = nonfinite_mask(x0);
    bv |= n0 & k0;
    ba |= n0;
    mx0 = _mm512_mask_max_ps(mx0, k0, mx0, x0);
  }
  *bad_vis = bv;
  *bad_any = ba;
  return _mm512_max_ps(mx0, mx1);
}

// The running state of 16 rows moved past one step whose visible scaled scores have maximum
// `step_max`. Returns the shift m_use to subtract from this step's scores (the new maximum, or 0
// for a row that has seen nothing yet, so that -inf - -inf never happens) and sets
// *alpha = 2^(m_old - m_use), the factor that rescales the row's l and accumulator (0 while the
// row is still empty). m is updated; l is rescaled by the caller once the step's sum is known.
// Rows in `bad` (and rows whose m is already NaN) get m = NaN.
MLA_AVX512_INLINE __m512 rows16_advance_max(float* m, __m512 step_max, __m512* alpha,
                                            __mmask16 bad) {
  const __m512 m_old = _mm512_load_ps(m);
  bad |= _mm512_cmp_ps_mask(m_old, m_old, _CMP_UNORD_Q);
  const __m512 m_new = _mm512_mask_mov_ps(_mm512_max_ps(m_old, step_max), bad,
                                          _mm512_set1_ps(__builtin_nanf("")));
  const __mmask16 seen = _mm512_cmp_ps_mask(m_new, _mm512_set1_ps(-__builtin_inff()), _CMP_NEQ_OQ);
  const __m512 m_use = _mm512_maskz_mov_ps(seen, m_new);
  *alpha = exp2_ps(_mm512_sub_ps(m_old, m_use));  // m_old = -inf: 0
  _mm512_store_ps(m, m_new);
  return m_use;
}

// p = 2^(s * c - m_use) for the visible lanes of token t, 0 for the others. s * c is rounded
// before the subtraction, as in rows16_masked_max: with the fused form the row's maximum came out
// up to half an ulp of s * c away from m, 2^(+-2e6) = inf or 0 at a softmax scale of 1e12.
MLA_AVX512_INLINE __m512 rows16_prob(const float* s_t, int t, __m512i lim, __m512 c, __m512 m_use) {
  const __mmask16 k = _mm512_cmpge_epi32_mask(lim, _mm512_set1_epi32(t));
  return exp2_ps(_mm512_sub_ps(scaled_score(_mm512_load_ps(s_t), c), m_use), k);
}

// Work-item plumbing (ItemRows, lanes_row_stride, step_token_ptrs): cpu/attention/item.h.

// ---- software prefetch of the cache rows ----------------------------------------------------
//
// With 16 query rows a step reads its keys at a few bytes per dot product, and from DRAM (a
// large batch) the hardware prefetchers, which see up to 16 interleaved streams per QK tile,
// leave the kernel waiting on misses (0.3-0.45 of the compute floor). The kernels therefore
// prefetch each token's rows a fixed distance ahead in the item's range, rate-matched: a QK tile
// of n tokens prefetches the n tokens `dist` positions after its own, spread over its k-steps,
// so that every token of the range is fetched once; the first `dist` tokens are prefetched when
// the item starts. Only the item's own positions [kv_begin, kv_end) are touched.

// Into L2 (prefetcht1): at 16 rows from DRAM it measured a few points above prefetcht0, and the
// data prefetched by PV for the next step (80 KiB at chunk 4) would not fit L1 anyway.
MLA_AVX512_INLINE void prefetch_line(const void* p) {
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
}

// The 16-bit cache rows of positions [pos, pos + n) clipped to the item's range: kptr gets
// their pointers, the count is returned.
inline int token_ptrs_clipped(const KernelArgs& a, int pos, int n, const uint16_t** kptr) {
  const int cnt = std::max(0, std::min(n, a.kv_end - pos));
  step_token_ptrs(a, pos, cnt, cnt, nullptr, kptr);
  return cnt;
}

// Every line of n 16-bit cache rows (576 values, 18 lines each).
inline void prefetch_rows16(const uint16_t* const* kptr, int n) {
  for (int t = 0; t < n; ++t)
    for (int c = 0; c < kQkDim; c += 32) prefetch_line(kptr[t] + c);
}

// UP in the seed's old form: the accumulator is the item's output row, read and written back
// every step: go = go * alpha + lo.
inline void up_spill(const ItemRows& ir, const float* lo, const float* alpha) {
  for (int r = 0; r < ir.rows; ++r) {
    float* go = ir.o(r);
    const float* l = lo + size_t(r) * kLatentDim;
    const __m512 al = _mm512_set1_ps(alpha[r]);
    for (int d = 0; d < kLatentDim; d += 16)
      _mm512_storeu_ps(go + d, _mm512_fmadd_ps(_mm512_loadu_ps(go + d), al, _mm512_load_ps(l + d)));
  }
}

// After the last step: o = go / l and lse = ln 2 * (m + log2 l) (m in the base-2 domain); a row
// that saw no key gets o = 0, lse = -inf; a row with m = NaN (it saw a non-finite value) gets
// o = NaN, lse = NaN. go [rows][512] (resident) or nullptr: the output rows.
inline void finalize_rows(const ItemRows& ir, const float* go_resident, const float* m,
                          const float* l) {
  for (int r = 0; r < ir.rows; ++r) {
    float* o = ir.o(r);
    const float* go = go_resident ? go_resident + size_t(r) * kLatentDim : o;
    if (std::isnan(m[r])) {
      std::fill(o, o + kLatentDim, __builtin_nanf(""));
      *ir.lse(r) = __builtin_nanf("");
    } else if (l[r] > 0.f) {
      const __m512 inv = _mm512_set1_ps(1.f / l[r]);
      for (int d = 0; d < kLatentDim; d += 16)
        _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(go + d), inv));
      *ir.lse(r) = lse_base2(m[r], l[r]);
    } else {
      std::memset(o, 0, kLatentDim * sizeof(float));
      *ir.lse(r) = -__builtin_inff();
    }
  }
}

// ---- appended for the int8 kernel (decode_i8_avx512vnni.cc); usable by any kernel -----------------

// 2^x for x < 128 (meant for the x <= 0 of softmax), with nothing but 5 FMAs on the FMA pipes: on Zen 4,
// vfmadd/vmulps/vcmpps share their pipes with vpdpbusd and vdpbf16ps, while max, roundscale, sub
// and scalef do not, so this costs the dot products 5 slots where exp2_ps costs 7.
// x <= -200, -inf and NaN give exactly 0 (max() maps NaN to -200 and 2^-200 rounds to 0); results
// below 2^-126 are denormal, not flushed. Degree-5 minimax polynomial for 2^f on [-1/2, 1/2]:
// relative error about 2.5e-7.
MLA_AVX512_INLINE __m512 exp2_fma5_ps(__m512 x) {
  const __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-200.f));  // first operand NaN -> -200
  const __m512 n = _mm512_roundscale_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(xc, n);
  __m512 y = _mm512_set1_ps(1.339086331e-3f);
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.676031768e-3f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.550356954e-2f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.402210683e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.931471825e-1f));
  y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.000000119e+0f));
  return _mm512_scalef_ps(y, n);
}

}  // namespace
}  // namespace mla::cpu::avx512
