// SM of the int8 AVX-512 VNNI kernel (decode_i8_avx512vnni.cc): the running maximum, the
// probabilities and their u8 quantization for PV. Include it only from that file.

#pragma once

#include "cpu/attention/avx512/i8_common_avx512-inl.h"

namespace mla::cpu {
namespace {


// SM's group-mode part (softmax_rows; the lambdas are its prob, quant and inverse): p into s and
// the row sums, then per scale group g the same as token mode with p' = p * ks[t][g]: the top
// token of the group applied exactly (ptop, top), the others quantized against the largest of
// them (dq) into the group's own u8 matrix (pp + g * pp_group), so each group's P.V stays an
// integer product over its channels. p' is recomputed from s per group (a load and a multiply)
// rather than stored: ng copies of the step's scores would not stay in L1. ng times token mode's
// work made SM the largest extra cost of the group modes, so per group it is leaner: the top two
// are tracked on the integer keys alone (max2 is then the second key with its index bits
// cleared, at most 2^-13 below the float one: the quantization reference, used consistently for
// the u8 values and dq, so nothing inexact follows), and 4 tokens' u8 are packed by saturating
// packs and one byte shuffle (values past 255 occur only for the top token, whose byte is zeroed).
template <int RV, class Prob, class Inverse>
void softmax_groups(const Item& it, const Step& st, int r0, int ibits, __m512i keep, Prob prob,
                    Inverse inverse, __m512* inv, __m512* sum) {
  constexpr int64_t ss = 16 * RV;
  const int nt = 4 * st.groups, ng = it.ng;
  for (int t = 0; t < nt; ++t) {
    float* s = it.s + t * ss;
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      const __m512 p = prob(s + 16 * v, v);
      sum[v] = _mm512_add_ps(sum[v], p);
      _mm512_store_ps(s + 16 * v, p);
    }
  }
  const __m512 dq_scale = _mm512_set1_ps(it.tensor / 255.f);
  const __m512i by_row = _mm512_broadcast_i32x4(
      _mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  for (int g = 0; g < ng; ++g) {
    const float* ks = st.ks + g;  // token t's scale of group g: ks[t * ng]
    __m512i k1[RV], k2[RV];  // the largest and second largest keys
    for (int v = 0; v < RV; ++v) k1[v] = k2[v] = _mm512_setzero_si512();
    for (int t = 0; t < nt; t += 2) {
      const float* s = it.s + t * ss;
      const __m512i t0 = _mm512_set1_epi32(t), t1 = _mm512_set1_epi32(t + 1);
      const __m512 k0s = _mm512_set1_ps(ks[t * ng]), k1s = _mm512_set1_ps(ks[(t + 1) * ng]);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        const __m512 q0 = _mm512_mul_ps(_mm512_load_ps(s + 16 * v), k0s);
        const __m512 q1 = _mm512_mul_ps(_mm512_load_ps(s + ss + 16 * v), k1s);
        const __m512i a = _mm512_ternarylogic_epi32(_mm512_castps_si512(q0), keep, t0, 0xea);
        const __m512i b = _mm512_ternarylogic_epi32(_mm512_castps_si512(q1), keep, t1, 0xea);
        const __m512i hi = _mm512_max_epi32(a, b), lo = _mm512_min_epi32(a, b);
        k2[v] = _mm512_max_epi32(k2[v], _mm512_max_epi32(lo, _mm512_min_epi32(k1[v], hi)));
        k1[v] = _mm512_max_epi32(k1[v], hi);
      }
    }
    __m512 m2[RV];
    for (int v = 0; v < RV; ++v) {
      m2[v] = _mm512_castsi512_ps(_mm512_and_si512(k2[v], keep));
      inv[v] = inverse(m2[v]);
    }
    uint32_t* pp = reinterpret_cast<uint32_t*>(it.pp) + g * it.pp_group;
    for (int j = 0; j < st.groups; ++j) {
      const float* s = it.s + 4 * j * ss;
      __m512 kq[4];
      for (int i = 0; i < 4; ++i) kq[i] = _mm512_set1_ps(ks[(4 * j + i) * ng]);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        __m512i b[4];
        for (int i = 0; i < 4; ++i)
          b[i] = _mm512_cvtps_epi32(
              _mm512_mul_ps(_mm512_mul_ps(_mm512_load_ps(s + i * ss + 16 * v), kq[i]), inv[v]));
        // Per 128-bit lane: bytes b0[0..3] b1[0..3] b2[0..3] b3[0..3] -> (b0 b1 b2 b3)[0..3].
        const __m512i x = _mm512_packus_epi16(_mm512_packus_epi32(b[0], b[1]),
                                              _mm512_packus_epi32(b[2], b[3]));
        _mm512_store_si512(pp + (j * RV + v) * 16, _mm512_shuffle_epi8(x, by_row));
      }
    }
    for (int v = 0; v < RV; ++v) {
      alignas(64) int32_t kt[16];
      _mm512_store_si512(kt, k1[v]);
      for (int e = 0; e < 16; ++e) {
        const int t = kt[e] & int((1u << ibits) - 1), r = r0 + 16 * v + e;
        it.top[g * it.Rp + r] = t;
        it.ptop[g * it.Rp + r] = it.s[t * ss + 16 * v + e] * ks[t * ng] * it.tensor;
        reinterpret_cast<uint8_t*>(pp + ((t >> 2) * RV + v) * 16 + e)[t & 3] = 0;
      }
      _mm512_store_ps(it.dq + g * it.Rp + r0 + 16 * v, _mm512_mul_ps(m2[v], dq_scale));
    }
  }
}

// SM: new running maximum, p = 2^(s * c2 - m), row sums, and the probabilities quantized to u8
// against each row's maximum of p' = p * value scale within the step, packed 4 tokens a lane.
template <int RV>
bool softmax_rows(const Item& it, const Step& st, int v0, const float* mx) {
  const int r0 = 16 * v0;
  const __m512 c2 = _mm512_set1_ps(it.c2);
  const __m512i cap = _mm512_set1_epi32(255);
  constexpr int64_t ss = 16 * RV;  // token stride in s, floats
  __m512 m_use[RV], inv[RV], sum[RV];
  bool same_max = true;
  for (int v = 0; v < RV; ++v) {
    const int rv = r0 + 16 * v;
    const __m512 x = _mm512_load_ps(mx + 16 * v);
    // The step maximum in the scaled domain (-inf stays -inf even when c2 = 0).
    const __mmask16 any = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
    const __m512 m_old = _mm512_load_ps(it.m + rv);
    const __m512 cand = _mm512_max_ps(m_old, _mm512_mask_mul_ps(x, any, x, c2));
    // Lazy rescaling: the reference maximum m moves only when the step's exceeds it by more than
    // kLazyRescale (or when there was none), so most steps leave go and l as they are (UP adds
    // without the multiply). Meanwhile p = 2^(s - m) may reach 2^kLazyRescale; go, l and lse are
    // all relative to the same m, so the algebra is unchanged, and P is quantized against its
    // own step maximum anyway.
    const __mmask16 move =
        _mm512_cmp_ps_mask(cand, _mm512_add_ps(m_old, _mm512_set1_ps(kLazyRescale)), _CMP_GT_OQ);
    // A row whose step maximum or running maximum is NaN (it saw a non-finite value) keeps
    // m = NaN; finalize turns it into o = NaN, lse = NaN.
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q) |
                          _mm512_cmp_ps_mask(m_old, m_old, _CMP_UNORD_Q);
    const __m512 m_new = _mm512_mask_mov_ps(_mm512_mask_mov_ps(m_old, move, cand), nan,
                                            _mm512_set1_ps(__builtin_nanf("")));
    same_max &= move == 0;
    // alpha = 2^(m_old - m_new): 0 where m_old = -inf, 1 where m stays.
    _mm512_store_ps(it.alpha + rv, _mm512_mask_blend_ps(move, _mm512_set1_ps(1.f),
                                                        exp2_fma5_ps(_mm512_sub_ps(m_old, m_new))));
    _mm512_store_ps(it.m + rv, m_new);
    // What the step's scores are taken against: m, or 0 while a row has seen nothing (its scores
    // are all -inf then, and -inf - -inf would be NaN).
    const __mmask16 seen = _mm512_cmp_ps_mask(m_new, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
    m_use[v] = _mm512_maskz_mov_ps(seen, m_new);
    sum[v] = _mm512_setzero_ps();
  }
  auto prob = [&](const float* s, int v) {
    // s * c2 rounded before the subtraction, as the maximum was (the fused form could leave the
    // row's largest score above m: 2^(5e5) = inf at a softmax scale of 1e12).
    return exp2_fma5_ps(_mm512_sub_ps(scaled_score(_mm512_load_ps(s), c2), m_use[v]));
  };
  auto quant = [&](__m512 p, int v) {
    return _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(p, inv[v])), cap);
  };
  auto inverse = [](__m512 x) {  // 255 / x, 0 where x = 0
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_maskz_div_ps(pos, _mm512_set1_ps(255.f), x);
  };
  uint32_t* pp = reinterpret_cast<uint32_t*>(it.pp);
  // The row's largest p' = p * value scale of the step (an attention sink, say) is applied
  // exactly in fp32 after P.V (ptop, top); the others are quantized against the largest of them
  // (max2), so one dominant key does not cost the rest of the step their resolution. Pass 1
  // computes p' (kept in s), the row sums, max2 and the top token: the largest key of
  // p' bits (>= 0, so ordered as integers) with the token index in the low bits (ties within
  // the dropped bits go to the later token; any choice is exact, max2 then caps at 255).
  // Pass 2 quantizes.
  const int nt = 4 * st.groups;
  const int ibits = 32 - __builtin_clz(unsigned(std::max(nt - 1, 1)));
  const __m512i keep = _mm512_set1_epi32(int(~((1u << ibits) - 1)));
  const __m512 dq_scale = _mm512_set1_ps(it.tensor / 255.f);
  if (it.gsz) {
    softmax_groups<RV>(it, st, r0, ibits, keep, prob, inverse, inv, sum);
  } else {
  __m512 m1[RV], m2[RV];
  __m512i key[RV];
  for (int v = 0; v < RV; ++v) {
    m1[v] = m2[v] = _mm512_setzero_ps();
    key[v] = _mm512_setzero_si512();
  }
  for (int t = 0; t < nt; t += 2) {
    float* s = it.s + t * ss;
    const __m512i t0 = _mm512_set1_epi32(t), t1 = _mm512_set1_epi32(t + 1);
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      __m512 q0 = prob(s + 16 * v, v), q1 = prob(s + ss + 16 * v, v);
      sum[v] = _mm512_add_ps(sum[v], _mm512_add_ps(q0, q1));
      if (it.tok) {
        q0 = _mm512_mul_ps(q0, _mm512_set1_ps(st.ks[t]));
        q1 = _mm512_mul_ps(q1, _mm512_set1_ps(st.ks[t + 1]));
      }
      const __m512 hi = _mm512_max_ps(q0, q1), lo = _mm512_min_ps(q0, q1);
      m2[v] = _mm512_max_ps(_mm512_max_ps(m2[v], lo), _mm512_min_ps(m1[v], hi));
      m1[v] = _mm512_max_ps(m1[v], hi);
      const __m512i k0 = _mm512_ternarylogic_epi32(_mm512_castps_si512(q0), keep, t0, 0xea);
      const __m512i k1 = _mm512_ternarylogic_epi32(_mm512_castps_si512(q1), keep, t1, 0xea);
      key[v] = _mm512_max_epi32(key[v], _mm512_max_epi32(k0, k1));
      _mm512_store_ps(s + 16 * v, q0);
      _mm512_store_ps(s + ss + 16 * v, q1);
    }
  }
  for (int v = 0; v < RV; ++v) inv[v] = inverse(m2[v]);
  for (int j = 0; j < st.groups; ++j) {
    const float* s = it.s + 4 * j * ss;
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      const __m512i w01 =
          _mm512_or_si512(quant(_mm512_load_ps(s + 16 * v), v),
                          _mm512_slli_epi32(quant(_mm512_load_ps(s + ss + 16 * v), v), 8));
      const __m512i w23 =
          _mm512_or_si512(_mm512_slli_epi32(quant(_mm512_load_ps(s + 2 * ss + 16 * v), v), 16),
                          _mm512_slli_epi32(quant(_mm512_load_ps(s + 3 * ss + 16 * v), v), 24));
      _mm512_store_si512(pp + (j * RV + v) * 16, _mm512_or_si512(w01, w23));
    }
  }
  // The top token of each row: its p' (x tensor scale) to ptop, its u8 to 0.
  for (int v = 0; v < RV; ++v) {
    alignas(64) int32_t kt[16];
    _mm512_store_si512(kt, key[v]);
    for (int e = 0; e < 16; ++e) {
      const int t = kt[e] & int((1u << ibits) - 1), r = r0 + 16 * v + e;
      it.top[r] = t;
      it.ptop[r] = it.s[t * ss + 16 * v + e] * it.tensor;
      reinterpret_cast<uint8_t*>(pp + ((t >> 2) * RV + v) * 16 + e)[t & 3] = 0;
    }
  }
  for (int v = 0; v < RV; ++v) _mm512_store_ps(it.dq + r0 + 16 * v, _mm512_mul_ps(m2[v], dq_scale));
  }
  for (int v = 0; v < RV; ++v) {
    const int rv = r0 + 16 * v;
    const __m512 l = _mm512_load_ps(it.l + rv);
    _mm512_store_ps(it.l + rv, _mm512_fmadd_ps(l, _mm512_load_ps(it.alpha + rv), sum[v]));
  }
  return same_max;
}


}  // namespace
}  // namespace mla::cpu
