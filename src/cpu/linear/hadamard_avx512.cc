// One latent row's rotation in AVX-512 registers: the 512 values are 32 vectors of 16. The four
// butterfly stages inside a vector (h = 1, 2, 4, 8) pair lane l with lane l ^ h: a permute brings
// the partner, and t + v * (+1 or -1) is one rounding of a + b or a - b, the portable transform's
// exact values. The five stages between vectors (h = 16 .. 256) pair vector k with k + h / 16.
// Same stages in the same order as src/cache/rotation.cc, so the same bits. Built with the
// *_avx512.cc set (src/cpu/attention/isa.h), called only after hadamard_avx512_supported().
// GCC 12's _mm512_undefined_* in the permutes trip -W(maybe-)uninitialized (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include "cpu/linear/hadamard.h"

namespace mla::cpu {

namespace {

// +1 in lanes whose bit `h` is clear (the pair's first element keeps a + b), -1 where it is set.
inline __m512 lane_signs(int h) {
  const __mmask16 neg = h == 1 ? 0xAAAA : h == 2 ? 0xCCCC : h == 4 ? 0xF0F0 : 0xFF00;
  return _mm512_mask_blend_ps(neg, _mm512_set1_ps(1.f), _mm512_set1_ps(-1.f));
}

// A product rounded once and never fused with a later sum (which would change the bits).
inline __m512 mul_exact(__m512 a, __m512 b) {
  return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace

// Two passes, each on a few vectors in registers (32 at once spill): pass 1 takes 8 consecutive
// vectors through the stages h = 1 .. 64 (the lanes, then vector pairs 1, 2, 4 apart); pass 2
// takes the 4 vectors j, j + 8, j + 16, j + 24 through h = 128 and 256. Each stage's pairs are
// independent, so this order gives the stage-by-stage values.
void hadamard_row_avx512(float* x, const float* scale, bool post) {
  const __m512 s1 = lane_signs(1), s2 = lane_signs(2), s4 = lane_signs(4), s8 = lane_signs(8);
  for (int g = 0; g < 32; g += 8) {
    __m512 v[8];
    for (int k = 0; k < 8; ++k) {
      v[k] = _mm512_loadu_ps(x + 16 * (g + k));
      if (!post) v[k] = mul_exact(v[k], _mm512_loadu_ps(scale + 16 * (g + k)));
      v[k] = _mm512_fmadd_ps(v[k], s1, _mm512_permute_ps(v[k], 0xB1));
      v[k] = _mm512_fmadd_ps(v[k], s2, _mm512_permute_ps(v[k], 0x4E));
      v[k] = _mm512_fmadd_ps(v[k], s4, _mm512_shuffle_f32x4(v[k], v[k], 0xB1));
      v[k] = _mm512_fmadd_ps(v[k], s8, _mm512_shuffle_f32x4(v[k], v[k], 0x4E));
    }
    for (int m = 1; m < 8; m *= 2)
      for (int k = 0; k < 8; ++k)
        if (!(k & m)) {
          const __m512 a = v[k], b = v[k + m];
          v[k] = _mm512_add_ps(a, b);
          v[k + m] = _mm512_sub_ps(a, b);
        }
    for (int k = 0; k < 8; ++k) _mm512_storeu_ps(x + 16 * (g + k), v[k]);
  }
  for (int j = 0; j < 8; ++j) {
    __m512 v[4];
    for (int k = 0; k < 4; ++k) v[k] = _mm512_loadu_ps(x + 16 * (j + 8 * k));
    for (int m = 1; m < 4; m *= 2)
      for (int k = 0; k < 4; ++k)
        if (!(k & m)) {
          const __m512 a = v[k], b = v[k + m];
          v[k] = _mm512_add_ps(a, b);
          v[k + m] = _mm512_sub_ps(a, b);
        }
    for (int k = 0; k < 4; ++k) {
      if (post) v[k] = mul_exact(v[k], _mm512_loadu_ps(scale + 16 * (j + 8 * k)));
      _mm512_storeu_ps(x + 16 * (j + 8 * k), v[k]);
    }
  }
}

namespace {

// f32_to_bf16 (mla/dtype.h) on 16 lanes: round to nearest even, NaN quieted with its sign kept.
inline __m256i to_bf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i a = _mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(a, _mm512_set1_epi32(0x7f800000));
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

}  // namespace

void rotate_query_row_avx512(const void* q, bool q_f32, uint16_t* out, const float* scale) {
  alignas(64) float x[kQkDim];
  for (int c = 0; c < kQkDim; c += 16)
    _mm512_store_ps(x + c, q_f32 ? _mm512_loadu_ps(static_cast<const float*>(q) + c)
                                 : _mm512_castsi512_ps(_mm512_slli_epi32(
                                       _mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                           reinterpret_cast<const __m256i*>(
                                               static_cast<const uint16_t*>(q) + c))),
                                       16)));
  hadamard_row_avx512(x, scale, false);
  for (int c = 0; c < kQkDim; c += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + c), to_bf16(_mm512_load_ps(x + c)));
}

}  // namespace mla::cpu
