// QK of the int8 AVX-512 VNNI kernel (decode_i8_avx512vnni.cc): the query packing (once per
// item), the register tiles of tokens x row vectors, and the step's walk over them. Include it
// only from that file.

#pragma once

#include "cpu/attention/avx512/i8_common_avx512-inl.h"

namespace mla::cpu {
namespace {

// ---- QK: one tile of N tokens x RV row vectors --------------------------------------------------

struct QkRows {
  const uint8_t* qp;        // [128][rs] u32 (4 x s8) at the tile's first row
  const uint16_t* qr;       // [32][rs] u32 (bf16 pairs) at the tile's first row
  int64_t rs;               // row stride of qp / qr in u32 (Rp)
  const int32_t* qsum_neg;  // [groups][rs] -128 * sum of q8 over a scale group's channels
  const float* qs;          // [RV*16] query scale (tensor scale folded in)
  const int32_t* lim;       // [RV*16] last visible position
};

// Tokens whose cache lines a QK tile prefetches while it runs (software prefetch: with 16 query
// rows the keys stream from DRAM at ~0.6 us per 16 tokens and the hardware prefetchers fall
// behind the 16 interleaved 512-byte-stride streams of a tile). Token i: latent row lat[i], rope
// row rope + 64 * slot[i]; n tokens (0: none).
struct QkPrefetch {
  const int8_t* const* lat;
  const int64_t* slot;
  const uint16_t* rope;
  int n;
};

// Every line of n tokens: latent rows tok[i], rope rows rope + 64 * slot[i].
void prefetch_tokens(const int8_t* const* tok, const int64_t* slot, const uint16_t* rope, int n) {
  for (int t = 0; t < n; ++t) {
    for (int c = 0; c < kLatentDim; c += 64) prefetch_line(tok[t] + c);
    prefetch_line(rope + slot[t] * kRopeDim);
    prefetch_line(rope + slot[t] * kRopeDim + 32);
  }
}

// s[t][v][16] = (S_nope * qs * ks[t] + S_rope) for tokens k (latent, 512 bytes apart) and kr
// (rope, 64 bf16 apart); positions past lim[] get -inf where `mask`. mx[v] = max(mx[v], s[.][v]).
// kScale: 0 no per-token scales (ks unused), 1 token mode (ks[t]), else the group size G of a
// group mode: S_nope = sum over the 512 / G groups of (int32 dot of the group) x ks[t][group],
// each group's accumulators starting from its own flip correction (qsum_neg[group][rows]).
template <int N, int RV, int kScale>
__attribute__((noinline)) void qk_tile(const QkRows& q, const int8_t* k, const uint16_t* kr,
                                       const float* ks, int pos0, bool mask, float* s, float* mx,
                                       const QkPrefetch& pf) {
  constexpr bool kTok = kScale == 1;
  constexpr bool kGrp = kScale > 1;
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const uint8_t* qp = q.qp;
  const int64_t step = q.rs * 4;
  // One latent line of the prefetched tokens per k-step (8 lines a token, 128 k-steps).
  const int pf_lines = 8 * pf.n;
  __m512i acc[N][RV];
  __m512 f[N][RV];
  if constexpr (kGrp) {
    constexpr int NG = kLatentDim / kScale, KS = kScale / 4;  // groups, k-steps per group
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) f[n][v] = _mm512_setzero_ps();
    for (int gi = 0; gi < NG; ++gi) {
      {
        __m512i init[RV];
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) init[v] = _mm512_load_si512(q.qsum_neg + gi * q.rs + 16 * v);
#pragma GCC unroll 24
        for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) acc[n][v] = init[v];
      }
      for (int g = gi * KS; g < (gi + 1) * KS; ++g) {
        if (g < pf_lines) prefetch_line(pf.lat[g >> 3] + 64 * (g & 7));
        __m512i b[RV];
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) b[v] = _mm512_load_si512(qp + 64 * v);
#pragma GCC unroll 24
        for (int n = 0; n < N; ++n) {
          const __m512i ku = xor_bcast(flip, k + n * kLatentDim + 4 * g);
#pragma GCC unroll 4
          for (int v = 0; v < RV; ++v) dpbusd(acc[n][v], ku, b[v]);
        }
        qp += step;
      }
#pragma GCC unroll 24
      for (int n = 0; n < N; ++n) {
        const __m512 sc = _mm512_set1_ps(ks[n * NG + gi]);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v)
          f[n][v] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[n][v]), sc, f[n][v]);
      }
    }
    __m512 qs[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) qs[v] = _mm512_load_ps(q.qs + 16 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) f[n][v] = _mm512_mul_ps(f[n][v], qs[v]);
  } else {
    {
      __m512i init[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) init[v] = _mm512_load_si512(q.qsum_neg + 16 * v);
#pragma GCC unroll 24
      for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) acc[n][v] = init[v];
    }
    for (int g = 0; g < kGroups; ++g) {
      if (g < pf_lines) prefetch_line(pf.lat[g >> 3] + 64 * (g & 7));
      __m512i b[RV];
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) b[v] = _mm512_load_si512(qp + 64 * v);
#pragma GCC unroll 24
      for (int n = 0; n < N; ++n) {
        const __m512i ku = xor_bcast(flip, k + n * kLatentDim + 4 * g);
#pragma GCC unroll 4
        for (int v = 0; v < RV; ++v) dpbusd(acc[n][v], ku, b[v]);
      }
      qp += step;
    }
    __m512 qs[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) qs[v] = _mm512_load_ps(q.qs + 16 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n) {
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        f[n][v] = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[n][v]), qs[v]);
        if constexpr (kTok) f[n][v] = _mm512_mul_ps(f[n][v], _mm512_set1_ps(ks[n]));
      }
    }
  }
  const uint16_t* qr = q.qr;
  const int pf_rope = 2 * pf.n;  // 2 rope lines a token, 32 k-steps
  for (int j = 0; j < kRopePairs; ++j) {
    if (j < pf_rope) prefetch_line(pf.rope + pf.slot[j >> 1] * kRopeDim + 32 * (j & 1));
    __m512i b[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) b[v] = _mm512_load_si512(qr + 32 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) dpbf16_bcast(f[n][v], b[v], kr + n * kRopeDim + 2 * j);
    qr += step / 2;
  }
  __m512i lim[RV];
  __m512 m[RV];
#pragma GCC unroll 4
  for (int v = 0; v < RV; ++v) {
    lim[v] = _mm512_load_si512(q.lim + 16 * v);
    m[v] = _mm512_load_ps(mx + 16 * v);
  }
  const __m512 ninf = _mm512_set1_ps(kNegInf);
#pragma GCC unroll 24
  for (int n = 0; n < N; ++n) {
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      __m512 x = f[n][v];
      __mmask16 bad = nonfinite_mask(x);
      if (mask) {
        const __mmask16 vis = _mm512_cmpge_epi32_mask(lim[v], _mm512_set1_epi32(pos0 + n));
        x = _mm512_mask_mov_ps(ninf, vis, x);
        bad &= vis;
      }
      _mm512_store_ps(s + (n * RV + v) * 16, x);
      // A row that sees a NaN or Inf score gets mx = NaN, which max(x, NaN) keeps.
      m[v] = _mm512_mask_mov_ps(_mm512_max_ps(x, m[v]), bad, _mm512_set1_ps(__builtin_nanf("")));
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < RV; ++v) _mm512_store_ps(mx + 16 * v, m[v]);
}

using QkFn = void (*)(const QkRows&, const int8_t*, const uint16_t*, const float*, int, bool,
                      float*, float*, const QkPrefetch&);

// Table of qk_tile<n, RV, kScale> for n = 1..N, so a tile cut short by a block boundary or the
// end of the range still runs in one call.
template <int RV, int kScale, int... I>
constexpr auto qk_table(std::integer_sequence<int, I...>) {
  return std::array<QkFn, sizeof...(I)>{&qk_tile<I + 1, RV, kScale>...};
}

// The tiles for the item's scale mode (gsz: group size, 0 outside the group modes); *n: the most
// tokens a tile takes.
template <int RV>
const QkFn* qk_fns(bool tok, int gsz, int* n) {
  constexpr int N = QkShape<RV>::kTokens, NG = QkShape<RV>::kGrpTokens;
  static const auto t = qk_table<RV, 1>(std::make_integer_sequence<int, N>{});
  static const auto f = qk_table<RV, 0>(std::make_integer_sequence<int, N>{});
  static const auto g32 = qk_table<RV, 32>(std::make_integer_sequence<int, NG>{});
  static const auto g64 = qk_table<RV, 64>(std::make_integer_sequence<int, NG>{});
  static const auto g128 = qk_table<RV, 128>(std::make_integer_sequence<int, NG>{});
  *n = gsz ? NG : N;
  switch (gsz) {
    case 32: return g32.data();
    case 64: return g64.data();
    case 128: return g128.data();
    default: return tok ? t.data() : f.data();
  }
}

// ---- the item -----------------------------------------------------------------------------------

// Quantizes the item's query rows and packs them (qp, qr), rows in lanes; rows >= R are zero.
// The rounding is quantize_query_row's (cpu/attention/quantize.h: q * (127 / max|q|), to nearest
// even), vectorized, so the kernel computes with exactly kernel_query_values(). qs has the tensor
// scale folded in; qsum_neg[group][r] = -128 * sum of q8 over the scale group's gsz channels
// (gsz 512 outside the group modes) corrects QK for the key's flip to u8.
// 16 rows at a time: each row's 64 channels (16 groups of 4 bytes) go into one register, and a
// 16 x 16 transpose turns them into 16 group vectors with the rows in the lanes.
void pack_queries(const KernelArgs& a, int nh, int R, int Rp, bool negate, const float* cs,
                  float tensor, int gsz, uint8_t* qp, uint16_t* qr, int32_t* qsum_neg,
                  float* qs) {
  const DecodeParams& p = *a.p;
  uint32_t* qp32 = reinterpret_cast<uint32_t*>(qp);
  uint32_t* qr32 = reinterpret_cast<uint32_t*>(qr);
  alignas(64) static const uint16_t kZero[kQkDim] = {};
  for (int r0 = 0; r0 < Rp; r0 += 16) {
    const uint16_t* src[16];
    __m512 inv[16];
    __m512i sum[16];
    for (int e = 0; e < 16; ++e) {
      const int r = r0 + e;
      sum[e] = _mm512_setzero_si512();
      if (r >= R) {
        src[e] = kZero;
        inv[e] = _mm512_setzero_ps();
        qs[r] = 0.f;
        continue;
      }
      const int i = r / nh, h = a.head_begin + r % nh;
      src[e] = a.q + ((int64_t(a.seq) * p.q_len + i) * p.num_heads + h) * kQkDim;
      __m512 mx = _mm512_setzero_ps();
      __mmask16 bad = 0;
      for (int c = 0; c < kLatentDim; c += 16) {
        __m512 x = bf16x16_to_ps(src[e] + c);
        if (cs) x = _mm512_mul_ps(x, _mm512_loadu_ps(cs + c));
        bad |= nonfinite_mask(x);
        mx = _mm512_max_ps(mx, _mm512_abs_ps(x));
      }
      const float m = bad ? 0.f : _mm512_reduce_max_ps(mx);
      const float iv = m > 0.f ? 127.f / m : 0.f;
      // A NaN or Inf in the latent cannot be quantized: q8 = 0 and qs = NaN mark the row (run()
      // starts it with m = NaN). A non-finite rope value shows up in the scores instead.
      qs[r] = bad ? __builtin_nanf("") : m / 127.f * tensor;
      inv[e] = _mm512_set1_ps(negate ? -iv : iv);
    }
    for (int c0 = 0; c0 < kLatentDim; c0 += 64) {
      __m512i w[16];
      for (int e = 0; e < 16; ++e) {
        __m128i b[4];
        for (int j = 0; j < 4; ++j) {
          const int c = c0 + 16 * j;
          __m512 x = bf16x16_to_ps(src[e] + c);
          if (cs) x = _mm512_mul_ps(x, _mm512_loadu_ps(cs + c));
          __m512 y = _mm512_roundscale_ps(_mm512_mul_ps(x, inv[e]),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-127.f)), _mm512_set1_ps(127.f));
          const __m512i q8 = _mm512_cvtps_epi32(y);
          sum[e] = _mm512_add_epi32(sum[e], q8);
          if ((c + 16) % gsz == 0) {
            qsum_neg[int64_t(c / gsz) * Rp + r0 + e] = -128 * _mm512_reduce_add_epi32(sum[e]);
            sum[e] = _mm512_setzero_si512();
          }
          b[j] = _mm512_cvtepi32_epi8(q8);
        }
        w[e] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(b[1], b[0])),
                                  _mm256_set_m128i(b[3], b[2]), 1);
      }
      transpose16x16_epi32(w);
      for (int g = 0; g < 16; ++g) _mm512_store_si512(qp32 + int64_t(c0 / 4 + g) * Rp + r0, w[g]);
    }
    const __m512i flip = _mm512_set1_epi32(negate ? int(0x80008000u) : 0);
    for (int j0 = 0; j0 < kRopePairs; j0 += 16) {
      __m512i w[16];
      for (int e = 0; e < 16; ++e)
        w[e] = _mm512_xor_si512(_mm512_loadu_si512(src[e] + kLatentDim + 2 * j0), flip);
      transpose16x16_epi32(w);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(qr32 + int64_t(j0 + j) * Rp + r0, w[j]);
    }
  }
}


// QK: the step's tokens against row vectors [v0, v0 + RV): s (masked) and the step maximum mx.
template <int RV>
void qk_rows(const Item& it, const Step& st, int v0, float* mx) {
  const int r0 = 16 * v0;
  const CacheView& cache = *it.cache;
  const int bs = cache.block_size();
  int lim_min = std::numeric_limits<int>::max(), lim_max = -1;
  for (int r = r0; r < r0 + 16 * RV; ++r) {
    lim_min = std::min(lim_min, it.lim[r]);
    lim_max = std::max(lim_max, it.lim[r]);
  }
  const QkRows rows{it.qp + 4 * r0,   it.qr + 2 * r0, it.Rp,
                    it.qsum_neg + r0, it.qs + r0,     it.lim + r0};
  int N;
  const QkFn* fns = qk_fns<RV>(it.tok, it.gsz, &N);
  for (int t = 0; t < st.n;) {
    // A tile of up to N tokens, consecutive in one block of the cache (or in the staging copy).
    const int len =
        it.staged ? std::min(N, st.n - t) : std::min({N, st.n - t, bs - (st.t0 + t) % bs});
    const int pos0 = st.t0 + t;
    float* s = it.s + int64_t(t) * 16 * RV;
    if (pos0 > lim_max) {  // invisible to every row of the tile
      std::fill_n(s, len * 16 * RV, kNegInf);
    } else {
      const int8_t* k =
          it.staged ? st.kstage + int64_t(t) * kLatentDim : cache.latent_i8(st.slot[t]);
      const uint16_t* kr =
          it.staged ? st.rstage + int64_t(t) * kRopeDim : cache.rope_bf16(st.slot[t]);
      // Prefetch the step's tokens st.pf_from after the tile's own, as many as the tile has, up
      // to the step's end (the next step's first T / 2 come from this step's PV).
      const int pf0 = t + st.pf_from;
      const QkPrefetch pf{.lat = st.tok + pf0,
                          .slot = st.slot + pf0,
                          .rope = it.rope,
                          .n = it.staged ? 0 : std::max(0, std::min(len, st.n - pf0))};
      fns[len - 1](rows, k, kr, st.ks + int64_t(t) * it.ng, pos0, pos0 + len - 1 > lim_min, s, mx, pf);
    }
    t += len;
  }
  // The last group of 4 tokens may be partial: its missing tokens are invisible.
  std::fill(it.s + int64_t(st.n) * 16 * RV, it.s + int64_t(st.groups) * 64 * RV, kNegInf);
}

}  // namespace
}  // namespace mla::cpu
