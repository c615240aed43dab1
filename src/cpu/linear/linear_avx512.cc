// AVX-512 projection kernel: tiles of 4 weight rows x up to 4 tokens, 16 fp32 accumulators in
// registers. Weights are widened to fp32 in registers from their stored type (bf16: shift; fp16:
// vcvtph2ps; fp8 e4m3: the byte moved into an fp16's exponent/mantissa fields, converted and
// multiplied by 2^8 and by its block's scale; the NaN code 0x7f kept NaN), so at batch 1 the
// kernel reads each weight byte once, which is what bounds it. Built with the *_avx512.cc set
// (src/cpu/attention/isa.h) and only called after linear_avx512_supported(), which checks that set.
// GCC 12's own _mm512_undefined_* trip -Wmaybe-uninitialized where they are inlined (GCC bug
// 105593); the pragma has to precede <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "cpu/linear/linear.h"

namespace mla::cpu {

namespace {

template <WDType D>
inline __m512 load_w(const void* row, int64_t c, __mmask16 m) {
  if constexpr (D == WDType::bf16) {
    const __m256i h = _mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + c);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else if constexpr (D == WDType::f16) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(row) + c));
  } else if constexpr (D == WDType::f32) {
    return _mm512_maskz_loadu_ps(m, static_cast<const float*>(row) + c);
  } else if constexpr (D == WDType::i8) {  // the row's scale is applied to the sums
    const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const int8_t*>(row) + c);
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b));
  } else {
    const __m128i b = _mm_maskz_loadu_epi8(m, static_cast<const uint8_t*>(row) + c);
    const __m256i w = _mm256_cvtepu8_epi16(b);
    // fp16 bits: sign to bit 15, the 7 exponent+mantissa bits to bits 7..13; value x 2^8 = fp8.
    const __m256i sign = _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8);
    const __m256i mag = _mm256_and_si256(w, _mm256_set1_epi16(0x7f));
    const __m256i h = _mm256_or_si256(sign, _mm256_slli_epi16(mag, 7));
    __m512 v = _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(256.f));
    const __mmask16 nan = _mm256_cmpeq_epi16_mask(mag, _mm256_set1_epi16(0x7f));
    return _mm512_mask_mov_ps(v, nan, _mm512_set1_ps(__builtin_nanf("")));
  }
}

// Rows rid[0..3] (the first `rows` valid; the others repeat the last valid one and are not stored).
template <WDType D, int T>
void tile(const LinearWeight& w, const int64_t* rid, int rows, const float* x, int64_t ldx, float* y,
          int64_t ldy) {
  __m512 acc[4][T];
  for (int i = 0; i < 4; ++i)
    for (int t = 0; t < T; ++t) acc[i][t] = _mm512_setzero_ps();
  const size_t es = wdtype_size(D);
  const void* wr[4];
  const float* sr[4] = {};
  for (int i = 0; i < 4; ++i) {
    const int64_t ri = rid[std::min(i, rows - 1)];
    wr[i] = static_cast<const char*>(w.w) + ri * w.ld * int64_t(es);
    if constexpr (D == WDType::fp8_e4m3) sr[i] = w.scale_inv + ((w.row0 + ri) / w.block_rows) * w.scale_ld;
  }
  for (int64_t c = 0; c < w.in; c += 16) {
    const __mmask16 m = w.in - c >= 16 ? __mmask16(0xffff) : __mmask16((1u << (w.in - c)) - 1);
    __m512 wv[4];
    for (int i = 0; i < 4; ++i) {
      wv[i] = load_w<D>(wr[i], c, m);
      if constexpr (D == WDType::fp8_e4m3) wv[i] = _mm512_mul_ps(wv[i], _mm512_set1_ps(sr[i][c / w.block_cols]));
    }
    for (int t = 0; t < T; ++t) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + c);
      for (int i = 0; i < 4; ++i) acc[i][t] = _mm512_fmadd_ps(wv[i], xv, acc[i][t]);
    }
  }
  for (int i = 0; i < rows; ++i) {
    const float s = D == WDType::i8 ? w.row_scale[rid[i]] : 1.f;
    for (int t = 0; t < T; ++t) y[t * ldy + rid[i]] = _mm512_reduce_add_ps(acc[i][t]) * s;
  }
}

// The worker's rows are cut into four contiguous quarters and a tile takes one row from each, so
// the weights are read as four long sequential streams. (Four adjacent rows per tile read four
// streams that each end after one row, which the hardware prefetcher follows poorly when rows are
// short: q_b_proj's 3 KB rows ran at 0.65 of the read rate that o_proj's 32 KB rows reached.)
template <WDType D>
void rows(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x, int64_t ldx,
          float* y, int64_t ldy) {
  const int64_t len = r1 - r0, q = (len + 3) / 4;
  for (int64_t j = 0; j < q; ++j) {
    int64_t rid[4];
    int nr = 0;
    for (int i = 0; i < 4; ++i)
      if (i * q + j < len) rid[nr++] = r0 + i * q + j;
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) tile<D, 4>(w, rid, nr, x + t * ldx, ldx, y + t * ldy, ldy);
    switch (n - t) {
      case 3: tile<D, 3>(w, rid, nr, x + t * ldx, ldx, y + t * ldy, ldy); break;
      case 2: tile<D, 2>(w, rid, nr, x + t * ldx, ldx, y + t * ldy, ldy); break;
      case 1: tile<D, 1>(w, rid, nr, x + t * ldx, ldx, y + t * ldy, ldy); break;
      default: break;
    }
  }
}

}  // namespace

void linear_rows_avx512(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                        int64_t ldx, float* y, int64_t ldy) {
  switch (w.dtype) {
    case WDType::bf16: return rows<WDType::bf16>(w, r0, r1, n, x, ldx, y, ldy);
    case WDType::f16: return rows<WDType::f16>(w, r0, r1, n, x, ldx, y, ldy);
    case WDType::f32: return rows<WDType::f32>(w, r0, r1, n, x, ldx, y, ldy);
    case WDType::fp8_e4m3: return rows<WDType::fp8_e4m3>(w, r0, r1, n, x, ldx, y, ldy);
    case WDType::i8: return rows<WDType::i8>(w, r0, r1, n, x, ldx, y, ldy);
  }
}

void round_bf16_avx512(const float* x, uint16_t* y, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(y + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(y + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

// Round to nearest even with NaN kept NaN (vcvtneps2bf16), 32 columns a step; lo = bf16(x - hi)
// (exact in fp32; NaN and infinities give a NaN lo, which the sum keeps NaN).
void tiles_pack_x_avx512(int64_t n, int64_t in, const float* x, int64_t ldx, uint16_t* a,
                         int64_t k_blocks, int64_t m_tiles, bool split) {
  std::fill(a, a + k_blocks * m_tiles * 512, uint16_t(0));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t mt = split ? 2 * (t / 16) : t / 16, m = t % 16;
    const float* xt = x + t * ldx;
    for (int64_t c = 0; c < in; c += 32) {
      uint16_t* hi_row = a + ((c / 32) * m_tiles + mt) * 512 + m * 32;
      const int64_t r = std::min<int64_t>(32, in - c);
      const __mmask16 m0 = r >= 16 ? __mmask16(0xffff) : __mmask16((1u << r) - 1);
      const __mmask16 m1 = r >= 32 ? __mmask16(0xffff) : r <= 16 ? __mmask16(0) : __mmask16((1u << (r - 16)) - 1);
      const __m512 lo = _mm512_maskz_loadu_ps(m0, xt + c), hi = _mm512_maskz_loadu_ps(m1, xt + c + 16);
      const __m512i h = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      _mm512_storeu_si512(hi_row, h);
      if (split) {  // the next A tile: the lo parts
        // bf16 -> fp32 of the two halves: the 16-bit lanes shifted into the high half.
        const __m512 hl = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(h)), 16));
        const __m512 hh = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(h, 1)), 16));
        _mm512_storeu_si512(hi_row + 512, (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(hi, hh), _mm512_sub_ps(lo, hl)));
      }
    }
  }
}

}  // namespace mla::cpu
