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
  alignas(64) float s[16];
  for (int l = 0; l < 16; ++l) s[l] = (l & h) ? -1.f : 1.f;
  return _mm512_load_ps(s);
}

// A product rounded once and never fused with a later sum (which would change the bits).
inline __m512 mul_exact(__m512 a, __m512 b) {
  return _mm512_mul_round_ps(a, b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

}  // namespace

void hadamard_row_avx512(float* x, const float* scale, bool post) {
  __m512 v[32];
  for (int k = 0; k < 32; ++k) v[k] = _mm512_loadu_ps(x + 16 * k);
  if (!post)
    for (int k = 0; k < 32; ++k) v[k] = mul_exact(v[k], _mm512_loadu_ps(scale + 16 * k));
  const __m512 s1 = lane_signs(1), s2 = lane_signs(2), s4 = lane_signs(4), s8 = lane_signs(8);
  for (int k = 0; k < 32; ++k) v[k] = _mm512_fmadd_ps(v[k], s1, _mm512_permute_ps(v[k], 0xB1));
  for (int k = 0; k < 32; ++k) v[k] = _mm512_fmadd_ps(v[k], s2, _mm512_permute_ps(v[k], 0x4E));
  for (int k = 0; k < 32; ++k)
    v[k] = _mm512_fmadd_ps(v[k], s4, _mm512_shuffle_f32x4(v[k], v[k], 0xB1));
  for (int k = 0; k < 32; ++k)
    v[k] = _mm512_fmadd_ps(v[k], s8, _mm512_shuffle_f32x4(v[k], v[k], 0x4E));
  for (int m = 1; m < 32; m *= 2)
    for (int k = 0; k < 32; ++k)
      if (!(k & m)) {
        const __m512 a = v[k], b = v[k + m];
        v[k] = _mm512_add_ps(a, b);
        v[k + m] = _mm512_sub_ps(a, b);
      }
  if (post)
    for (int k = 0; k < 32; ++k) v[k] = mul_exact(v[k], _mm512_loadu_ps(scale + 16 * k));
  for (int k = 0; k < 32; ++k) _mm512_storeu_ps(x + 16 * k, v[k]);
}

}  // namespace mla::cpu
