// The int8-cache attention kernel on AMX (docs/DESIGN.md §10): QK and P.V on the tile unit (the
// seed's cube), the softmax, P's quantization and the output update on AVX-512 (its vector unit).
// Included by decode_i8_avx512amx.cc (the instructions) and decode_i8_avx512amxemu.cc (their
// scalar emulation, amx_tiles-inl.h), so both builds run the same code.
//
// The item is set up as the VNNI kernel's (i8_item_avx512-inl.h: slots, packed queries, limits,
// non-finite marks) and shares its softmax (i8_softmax_avx512-inl.h); it walks its KV range in
// steps of T = chunk * 64 tokens, and each step runs every row tile (16 or 32 rows):
//
//   V4  once per step, for all row tiles: the step's V interleaved by 4 tokens, the B operand of
//       P.V: v4[t/4][position][4] (positions: the VNNI kernel's order, position_of).
//   QK  Sᵀ[tokens x rows] = K . Qᵀ: A = 16 cache rows as stored (64 channels, 512 bytes apart;
//       staged when the 16 tokens are not consecutive in one block or pass the range's end),
//       B = the packed query (qp, qr: 4 s8 / 2 bf16 per row lane, which is the VNNI B layout).
//       S_nope with tdpbssd (int32), S_rope with tdpbf16ps (fp32, stored straight into s), then
//       s = S_nope * qs * ks + S_rope, the causal mask and the step maximum on AVX-512. A tile
//       row is a token, its 16 columns are rows: s has the rows in the lanes, as SM wants.
//       Register tiles: 2 token tiles x 2 row tiles (32 rows) or 4 x 1.
//   SM  softmax_rows (shared with the VNNI kernel): P' = p * ks quantized to u8, packed 4 tokens
//       a row lane, pp[t/4][rows]; the row's top token kept aside exactly (ptop, top).
//   PV  P (pp transposed to rows x tokens, 16 x 16 u32 at a time) . V4 with tdpbusd: C[16 rows x
//       16 positions] int32 over the step's tokens; 2 row tiles x 2 position tiles, or 1 x 4.
//   UP  in PV's epilogue on AVX-512: go = go * alpha + lo * dq + ptop * V[top] (resident), or
//       lo to scratch and the VNNI kernel's update_spill (spill, the seed's old form).
//
// go, the output accumulator, holds all the item's rows (Rp x 512 fp32, by position) from the
// first step to the last: with the tile unit doing the products, rebuilding V4 once per row tile
// (the VNNI kernel's row-tile-outer order) would cost as much as P.V itself.

#pragma once

#include "cpu/attention/amx/amx_tiles-inl.h"
#include "cpu/attention/avx512/i8_common_avx512-inl.h"
#include "cpu/attention/avx512/i8_item_avx512-inl.h"
#include "cpu/attention/avx512/i8_pv_avx512-inl.h"
#include "cpu/attention/avx512/i8_qk_avx512-inl.h"
#include "cpu/attention/avx512/i8_softmax_avx512-inl.h"

namespace mla::cpu {
namespace {

// Every tile operand sits in its own 1 KiB block (16 rows x 64 bytes, contiguous): rows 512 B or
// more apart fall into a few L1 sets, and tile loads from such strides ran at a third of the rate.
constexpr int64_t kTileBytes = 1024;
constexpr int kPosTiles = kLatentDim / 16;  // position tiles of P.V's output

// The AMX kernel's own scratch.
struct AmxBufs {
  int T;
  float* go;        // [Rp][512] the item's output accumulator, by position
  int32_t* lo;      // [32][512] one row tile's lo (spill form) / [16][16] one C tile
  int32_t* nope;    // [T][32] S_nope of the row tile, s's layout
  int8_t* v4;       // [T/64][32 position tiles][16 groups of 4 tokens][16 positions x 4 tokens]
  uint8_t* pt;      // [2][T/64][16 rows][64 tokens] the row tile's P
  uint8_t* qt;      // [Rp/16][8][16][64] qp as B tiles: row tile, 64 channels, 16 groups of 4
  uint8_t* qrt;     // [Rp/16][2][16][64] qr as B tiles: row tile, 32 rope dims, 16 pairs
  int8_t* kt;       // [T/16][8][16][64] the step's latent rows as A tiles: 16 tokens x 64 channels
  int8_t* krt;      // [T/16][2][16][64] its rope rows: 16 tokens x 32 bf16
};

// The step's operands, once for all row tiles, from its tokens' rows (each read once):
//   kt, krt  the latent and rope rows as QK's A tiles (16 tokens x 64 bytes, contiguous; tokens
//            past the step's end up to a multiple of 64 zero, never read from the cache);
//   v4       V interleaved by 4 tokens as P.V's B tiles: group j's positions [16 nb, 16 nb + 16)
//            are row j % 16 of tile (j / 16, nb); zero from the step's last group to kgroups.
void build_step(const Item& it, const Step& st, int kgroups, const AmxBufs& b) {
  const int ntile = (st.n + 63) / 64 * 4;  // whole 64-token blocks: QK takes up to 4 tiles
  for (int t = 0; t < 16 * ntile; ++t) {
    int8_t* k = b.kt + (t / 16) * 8 * kTileBytes + (t % 16) * 64;
    int8_t* r = b.krt + (t / 16) * 2 * kTileBytes + (t % 16) * 64;
    if (t < st.n) {
      const int8_t* src = st.tok[t];
      const int8_t* rope = reinterpret_cast<const int8_t*>(it.cache->rope_bf16(st.slot[t]));
      for (int c = 0; c < 8; ++c)
        _mm512_store_si512(k + c * kTileBytes, _mm512_loadu_si512(src + 64 * c));
      _mm512_store_si512(r, _mm512_loadu_si512(rope));
      _mm512_store_si512(r + kTileBytes, _mm512_loadu_si512(rope + 64));
    } else {
      for (int c = 0; c < 8; ++c) _mm512_store_si512(k + c * kTileBytes, _mm512_setzero_si512());
      _mm512_store_si512(r, _mm512_setzero_si512());
      _mm512_store_si512(r + kTileBytes, _mm512_setzero_si512());
    }
  }
  for (int j = 0; j < kgroups; ++j) {
    int8_t* dst = b.v4 + (j / 16) * kPosTiles * kTileBytes + (j % 16) * 64;
    if (j >= st.groups) {
      for (int nb = 0; nb < kPosTiles; ++nb)
        _mm512_store_si512(dst + nb * kTileBytes, _mm512_setzero_si512());
      continue;
    }
    // The step's rows as kt holds them (a zero row past the step's end).
    const int8_t* t4[4];
    for (int i = 0; i < 4; ++i) {
      const int t = 4 * j + i;
      t4[i] = b.kt + (t / 16) * 8 * kTileBytes + (t % 16) * 64;
    }
    for (int c = 0; c < 8; ++c) {
      const __m512i x0 = _mm512_load_si512(t4[0] + c * kTileBytes);
      const __m512i x1 = _mm512_load_si512(t4[1] + c * kTileBytes);
      const __m512i x2 = _mm512_load_si512(t4[2] + c * kTileBytes);
      const __m512i x3 = _mm512_load_si512(t4[3] + c * kTileBytes);
      const __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), hi01 = _mm512_unpackhi_epi8(x0, x1);
      const __m512i lo23 = _mm512_unpacklo_epi8(x2, x3), hi23 = _mm512_unpackhi_epi8(x2, x3);
      int8_t* d = dst + 4 * c * kTileBytes;
      _mm512_store_si512(d, _mm512_unpacklo_epi16(lo01, lo23));
      _mm512_store_si512(d + kTileBytes, _mm512_unpackhi_epi16(lo01, lo23));
      _mm512_store_si512(d + 2 * kTileBytes, _mm512_unpacklo_epi16(hi01, hi23));
      _mm512_store_si512(d + 3 * kTileBytes, _mm512_unpackhi_epi16(hi01, hi23));
    }
  }
}

// The packed query (qp [128][Rp] u32, qr [32][Rp] u32) as B tiles, each 16 k-groups x 16 rows
// contiguous: qt[v][k] = groups [16 k, 16 k + 16) of rows [16 v, 16 v + 16).
void pack_q_tiles(const Item& it, uint8_t* qt, uint8_t* qrt) {
  const int nv = it.Rp / 16;
  const uint32_t* qp = reinterpret_cast<const uint32_t*>(it.qp);
  const uint32_t* qr = reinterpret_cast<const uint32_t*>(it.qr);
  for (int v = 0; v < nv; ++v) {
    for (int g = 0; g < kLatentDim / 4; ++g)
      _mm512_store_si512(qt + (int64_t(v) * 8 * 16 + g) * 64,
                         _mm512_load_si512(qp + int64_t(g) * it.Rp + 16 * v));
    for (int j = 0; j < kRopeDim / 2; ++j)
      _mm512_store_si512(qrt + (int64_t(v) * 2 * 16 + j) * 64,
                         _mm512_load_si512(qr + int64_t(j) * it.Rp + 16 * v));
  }
}

// QK tiles for NT token tiles from token tile tt0 x RV row tiles (NT * RV = 4 accumulators, tiles
// 0-3): S_nope into nope, S_rope into s, both [token][16 * RV].
template <int RV>
void qk_tiles(const AmxBufs& bf, int tt0, int r0, int32_t* nope, float* s) {
  constexpr int64_t qs = 64;  // B row stride in qt / qrt
  const uint8_t* qp = bf.qt + (r0 / 16) * 8 * kTileBytes;
  const uint8_t* qr = bf.qrt + (r0 / 16) * 2 * kTileBytes;
  const int8_t* kl = bf.kt + tt0 * 8 * kTileBytes;
  const int8_t* kr = bf.krt + tt0 * 2 * kTileBytes;
  constexpr int64_t cs = 16 * RV * 4;  // C row stride in nope / s, bytes
  amx::zero<0>(), amx::zero<1>(), amx::zero<2>(), amx::zero<3>();
  for (int k = 0; k < kLatentDim / 64; ++k) {
    const uint8_t* b = qp + k * kTileBytes;
    if constexpr (RV == 2) {
      amx::load<4>(kl + (0 * 8 + k) * kTileBytes, 64);
      amx::load<5>(kl + (1 * 8 + k) * kTileBytes, 64);
      amx::load<6>(b, qs), amx::load<7>(b + 8 * kTileBytes, qs);
      amx::dpbssd<0, 4, 6>(), amx::dpbssd<1, 4, 7>(), amx::dpbssd<2, 5, 6>(), amx::dpbssd<3, 5, 7>();
    } else {
      amx::load<7>(b, qs);
      amx::load<4>(kl + (0 * 8 + k) * kTileBytes, 64), amx::dpbssd<0, 4, 7>();
      amx::load<5>(kl + (1 * 8 + k) * kTileBytes, 64), amx::dpbssd<1, 5, 7>();
      amx::load<6>(kl + (2 * 8 + k) * kTileBytes, 64), amx::dpbssd<2, 6, 7>();
      amx::load<4>(kl + (3 * 8 + k) * kTileBytes, 64), amx::dpbssd<3, 4, 7>();
    }
  }
  // C tile c = nt * RV + v: tokens 16 nt.., rows 16 v..
  auto c_at = [](auto* base, int c) { return base + (c / RV) * 16 * 16 * RV + (c % RV) * 16; };
  amx::store<0>(c_at(nope, 0), cs), amx::store<1>(c_at(nope, 1), cs);
  amx::store<2>(c_at(nope, 2), cs), amx::store<3>(c_at(nope, 3), cs);
  amx::zero<0>(), amx::zero<1>(), amx::zero<2>(), amx::zero<3>();
  for (int k = 0; k < kRopeDim / 32; ++k) {
    const uint8_t* b = qr + k * kTileBytes;
    if constexpr (RV == 2) {
      amx::load<4>(kr + (0 * 2 + k) * kTileBytes, 64);
      amx::load<5>(kr + (1 * 2 + k) * kTileBytes, 64);
      amx::load<6>(b, qs), amx::load<7>(b + 2 * kTileBytes, qs);
      amx::dpbf16<0, 4, 6>(), amx::dpbf16<1, 4, 7>(), amx::dpbf16<2, 5, 6>(), amx::dpbf16<3, 5, 7>();
    } else {
      amx::load<7>(b, qs);
      amx::load<4>(kr + (0 * 2 + k) * kTileBytes, 64), amx::dpbf16<0, 4, 7>();
      amx::load<5>(kr + (1 * 2 + k) * kTileBytes, 64), amx::dpbf16<1, 5, 7>();
      amx::load<6>(kr + (2 * 2 + k) * kTileBytes, 64), amx::dpbf16<2, 6, 7>();
      amx::load<4>(kr + (3 * 2 + k) * kTileBytes, 64), amx::dpbf16<3, 4, 7>();
    }
  }
  amx::store<0>(c_at(s, 0), cs), amx::store<1>(c_at(s, 1), cs);
  amx::store<2>(c_at(s, 2), cs), amx::store<3>(c_at(s, 3), cs);
}

// QK of row tile [r0, r0 + 16 RV) over the step: s (masked, -inf past the step's tokens up to
// its last group of 4) and the step maximum mx. Tokens every row of the tile sees skip the mask,
// and their non-finite check is one FMA (x * 0 is NaN exactly where x is NaN or Inf), its sum
// tested once at the end.
template <int RV>
void qk_amx(const Item& it, const Step& st, int r0, const AmxBufs& b, float* mx) {
  constexpr int NT = 4 / RV;
  constexpr int64_t ss = 16 * RV;
  const __m512 ninf = _mm512_set1_ps(kNegInf), zero = _mm512_setzero_ps();
  __m512i lim[RV];
  __m512 qs[RV], m[RV], nan_sum[RV];
  int lim_min = std::numeric_limits<int>::max(), lim_max = -1;
  for (int r = r0; r < r0 + 16 * RV; ++r) {
    lim_min = std::min(lim_min, it.lim[r]);
    lim_max = std::max(lim_max, it.lim[r]);
  }
  for (int v = 0; v < RV; ++v) {
    lim[v] = _mm512_load_si512(it.lim + r0 + 16 * v);
    qs[v] = _mm512_load_ps(it.qs + r0 + 16 * v);
    m[v] = _mm512_load_ps(mx + 16 * v);
    nan_sum[v] = zero;
  }
  const int end = 4 * st.groups;  // s is read up to here
  // Tokens [0, all_vis) are visible to every row of the tile, [t_end, end) to none.
  const int all_vis = std::clamp(lim_min - st.t0 + 1, 0, st.n);
  const int t_end = std::clamp(lim_max - st.t0 + 1, 0, st.n);
  for (int t0 = 0; t0 < end; t0 += 16 * NT) {
    if (t0 >= t_end) {  // no row sees these tokens
      std::fill(it.s + t0 * ss, it.s + std::min(t0 + 16 * NT, end) * ss, kNegInf);
      continue;
    }
    qk_tiles<RV>(b, t0 / 16, r0, b.nope + t0 * ss, it.s + t0 * ss);
    const int t1 = std::min(t0 + 16 * NT, end);
    int t = t0;
    for (; t < std::min(t1, all_vis); ++t) {
      const __m512 ks = _mm512_set1_ps(it.tok ? st.ks[t] : 1.f);
      for (int v = 0; v < RV; ++v) {
        float* sp = it.s + t * ss + 16 * v;
        const __m512 nope = _mm512_cvtepi32_ps(_mm512_load_si512(b.nope + t * ss + 16 * v));
        const __m512 x = _mm512_fmadd_ps(_mm512_mul_ps(nope, qs[v]), ks, _mm512_load_ps(sp));
        _mm512_store_ps(sp, x);
        m[v] = _mm512_max_ps(x, m[v]);
        nan_sum[v] = _mm512_fmadd_ps(x, zero, nan_sum[v]);
      }
    }
    for (; t < t1; ++t) {
      const __m512 ks = _mm512_set1_ps(it.tok ? st.ks[t] : 1.f);
      const __m512i pos = _mm512_set1_epi32(st.t0 + t);
      for (int v = 0; v < RV; ++v) {
        float* sp = it.s + t * ss + 16 * v;
        const __m512 nope = _mm512_cvtepi32_ps(_mm512_load_si512(b.nope + t * ss + 16 * v));
        __m512 x = _mm512_fmadd_ps(_mm512_mul_ps(nope, qs[v]), ks, _mm512_load_ps(sp));
        const __mmask16 vis = t < st.n ? _mm512_cmpge_epi32_mask(lim[v], pos) : 0;
        x = _mm512_mask_mov_ps(ninf, vis, x);
        _mm512_store_ps(sp, x);
        m[v] = _mm512_max_ps(x, m[v]);
        nan_sum[v] = _mm512_mask_add_ps(nan_sum[v], vis, nan_sum[v], _mm512_mul_ps(x, zero));
      }
    }
  }
  // A row that saw a NaN or Inf score gets mx = NaN, which softmax_rows keeps.
  for (int v = 0; v < RV; ++v) {
    const __mmask16 bad = _mm512_cmp_ps_mask(nan_sum[v], nan_sum[v], _CMP_UNORD_Q);
    _mm512_store_ps(mx + 16 * v, _mm512_mask_mov_ps(m[v], bad, _mm512_set1_ps(__builtin_nanf(""))));
  }
}

// pp (SM's [t/4][RV][16] u32) -> pt [RV][kgroups / 16][16 rows][64 tokens], zero past the step's
// groups.
template <int RV>
void transpose_p(const uint32_t* pp, int groups, int kgroups, uint8_t* pt) {
  for (int v = 0; v < RV; ++v)
    for (int j0 = 0; j0 < kgroups; j0 += 16) {
      __m512i w[16];
      for (int j = 0; j < 16; ++j)
        w[j] = j0 + j < groups ? _mm512_load_si512(pp + ((j0 + j) * RV + v) * 16)
                               : _mm512_setzero_si512();
      avx512::transpose16x16_epi32(w);
      for (int e = 0; e < 16; ++e)
        _mm512_store_si512(pt + ((v * kgroups + j0) * 16 + 16 * e) * 4, w[e]);
    }
}

// UP for one C tile (16 rows from row rr0 of the tile, 16 positions from pos0) held in lo[16][16].
template <Epi E, bool kChan>
void up_tile(const Item& it, const Step& st, const int32_t* lo, float* go, int r0, int rr0,
             int pos0) {
  const int d0 = pos0 & ~63, i = (pos0 >> 4) & 3;
  const __m512i zero = _mm512_setzero_si512();
  const __m512 cs = kChan ? _mm512_load_ps(it.cs_pos + pos0) : _mm512_set1_ps(1.f);
  for (int e = 0; e < 16; ++e) {
    const int r = r0 + rr0 + e;
    if (r >= it.R) break;  // padding rows
    float* g = go + int64_t(rr0 + e) * kLatentDim + pos0;
    __m512 d = _mm512_set1_ps(it.dq[r]);
    __m512 pt = _mm512_set1_ps(it.ptop[r] * 0x1p-24f);
    if constexpr (kChan) d = _mm512_mul_ps(d, cs), pt = _mm512_mul_ps(pt, cs);
    // The top token, applied exactly: its 16 channels at these positions, each byte in the top
    // of its 32-bit lane (2^24 times its value; pt carries the 2^-24).
    const __m512i xt = _mm512_loadu_si512(st.tok[it.top[r]] + d0);
    const __m512i h = i < 2 ? _mm512_unpacklo_epi8(zero, xt) : _mm512_unpackhi_epi8(zero, xt);
    const __m512i vt = (i & 1) ? _mm512_unpackhi_epi16(zero, h) : _mm512_unpacklo_epi16(zero, h);
    const __m512 l = _mm512_cvtepi32_ps(_mm512_load_si512(lo + 16 * e));
    __m512 x;
    if constexpr (E == Epi::first) x = _mm512_mul_ps(l, d);
    if constexpr (E == Epi::rescale)
      x = _mm512_fmadd_ps(l, d, _mm512_mul_ps(_mm512_load_ps(g), _mm512_set1_ps(it.alpha[r])));
    if constexpr (E == Epi::add) x = _mm512_fmadd_ps(l, d, _mm512_load_ps(g));
    _mm512_store_ps(g, _mm512_fmadd_ps(_mm512_cvtepi32_ps(vt), pt, x));
  }
}

// PV (+ UP) of row tile [r0, r0 + 16 RV): C tiles 0-3 over position tiles, A = P (pt), B = v4.
template <int RV, Epi E, bool kChan>
void pv_amx(const Item& it, const Step& st, int r0, const AmxBufs& b, int kgroups) {
  constexpr int NP = 4 / RV;  // position tiles per pass
  const int K = kgroups / 16;  // k-steps of 64 tokens
  float* go = b.go + int64_t(r0) * kLatentDim;
  for (int p0 = 0; p0 < kLatentDim; p0 += 16 * NP) {
    amx::zero<0>(), amx::zero<1>(), amx::zero<2>(), amx::zero<3>();
    for (int kk = 0; kk < K; ++kk) {
      const int8_t* v = b.v4 + (kk * kPosTiles + p0 / 16) * kTileBytes;
      const uint8_t* p = b.pt + kk * kTileBytes;
      if constexpr (RV == 2) {
        amx::load<4>(p, 64), amx::load<5>(p + K * kTileBytes, 64);
        amx::load<6>(v, 64), amx::load<7>(v + kTileBytes, 64);
        amx::dpbusd<0, 4, 6>(), amx::dpbusd<1, 4, 7>(), amx::dpbusd<2, 5, 6>(), amx::dpbusd<3, 5, 7>();
      } else {
        amx::load<4>(p, 64);
        amx::load<5>(v, 64), amx::dpbusd<0, 4, 5>();
        amx::load<6>(v + kTileBytes, 64), amx::dpbusd<1, 4, 6>();
        amx::load<7>(v + 2 * kTileBytes, 64), amx::dpbusd<2, 4, 7>();
        amx::load<5>(v + 3 * kTileBytes, 64), amx::dpbusd<3, 4, 5>();
      }
    }
    // C tile c: rows 16 (c / NP).., positions p0 + 16 (c % NP)..
    if constexpr (E == Epi::spill) {
      int32_t* lo = b.lo;  // [16 RV][512] by position
      auto at = [&](int c) { return lo + (c / NP) * 16 * kLatentDim + p0 + (c % NP) * 16; };
      constexpr int64_t st4 = kLatentDim * 4;
      amx::store<0>(at(0), st4), amx::store<1>(at(1), st4);
      amx::store<2>(at(2), st4), amx::store<3>(at(3), st4);
    } else {
      alignas(64) int32_t lo[16 * 16];
      auto up = [&](int c) { up_tile<E, kChan>(it, st, lo, go, r0, 16 * (c / NP), p0 + 16 * (c % NP)); };
      amx::store<0>(lo, 64), up(0);
      amx::store<1>(lo, 64), up(1);
      amx::store<2>(lo, 64), up(2);
      amx::store<3>(lo, 64), up(3);
    }
  }
}

template <int RV, bool kChan>
void pv_dispatch(const Item& it, const Step& st, int r0, const AmxBufs& b, int kgroups, Epi e) {
  switch (e) {
    case Epi::first: return pv_amx<RV, Epi::first, kChan>(it, st, r0, b, kgroups);
    case Epi::rescale: return pv_amx<RV, Epi::rescale, kChan>(it, st, r0, b, kgroups);
    case Epi::add: return pv_amx<RV, Epi::add, kChan>(it, st, r0, b, kgroups);
    case Epi::spill: return pv_amx<RV, Epi::spill, false>(it, st, r0, b, kgroups);
  }
}

// One row tile through one step: QK -> SM -> PV (+ UP).
template <int RV>
void row_tile_amx(const Item& it, const Step& st, int r0, const AmxBufs& b, int kgroups,
                  StageMarks& marks) {
  alignas(64) float mx[16 * RV];
  std::fill_n(mx, 16 * RV, kNegInf);
  qk_amx<RV>(it, st, r0, b, mx);
  marks.done(Stage::QK);
  const bool same_max = softmax_rows<RV>(it, st, r0 / 16, mx);
  transpose_p<RV>(reinterpret_cast<const uint32_t*>(it.pp), st.groups, kgroups, b.pt);
  marks.done(Stage::SM);
  const Epi e = !it.resident ? Epi::spill
                : st.first   ? Epi::first
                : same_max   ? Epi::add
                             : Epi::rescale;
  if (it.cs)
    pv_dispatch<RV, true>(it, st, r0, b, kgroups, e);
  else
    pv_dispatch<RV, false>(it, st, r0, b, kgroups, e);
  marks.done(Stage::PV);
  if (!it.resident) {
    Item lo_item = it;
    lo_item.go = reinterpret_cast<float*>(b.lo);
    update_spill(lo_item, st, r0, std::min(16 * RV, it.R - r0));
  }
  marks.done(Stage::UP);  // resident: UP runs in PV's epilogue, timed there
}

// Row tiles: 32 rows, and one of 16 for the rest.
inline int amx_tile_rv(int nrv, int v0) { return nrv - v0 >= 2 ? 2 : 1; }

void run_amx(const KernelArgs& a, Scratch& scratch) {
  AmxBufs b{};
  const int Rp = (q_len_of(*a.p, a.seq) * (a.head_end - a.head_begin) + 15) & ~15;
  auto take = [&](ScratchCarver& cv, int T, int) {
    b.T = T;
    b.go = cv.take<float>(size_t(Rp) * kLatentDim);
    b.lo = cv.take<int32_t>(size_t(32) * kLatentDim);
    b.nope = cv.take<int32_t>(size_t(T) * 32);
    b.v4 = cv.take<int8_t>(size_t(T) * kLatentDim);
    b.pt = cv.take<uint8_t>(size_t(32) * T);
    b.qt = cv.take<uint8_t>(size_t(Rp) * kLatentDim);
    b.qrt = cv.take<uint8_t>(size_t(Rp) * kRopeDim * 2);
    b.kt = cv.take<int8_t>(size_t(T) * kLatentDim);
    b.krt = cv.take<int8_t>(size_t(T) * kRopeDim * 2);
  };
  run_item(a, scratch, take, [&](const Item& it, const ItemTokens& tk) {
    const amx::Session tiles;  // this thread's tile configuration, released at the end
    pack_q_tiles(it, b.qt, b.qrt);
    const int T = b.T;
    std::vector<StageMarks> marks;
    for (int v0 = 0; v0 < tk.nrv; v0 += amx_tile_rv(tk.nrv, v0))
      marks.emplace_back(a.stages, std::min(16 * amx_tile_rv(tk.nrv, v0), it.R - 16 * v0));
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0), i0 = t0 - a.kv_begin;
      const int groups = (n + 3) / 4, kgroups = (groups + 15) & ~15;
      const Step st{.t0 = t0,
                    .n = n,
                    .groups = groups,
                    .first = t0 == a.kv_begin,
                    .slot = tk.slot + i0,
                    .tok = tk.tok + i0,
                    .ks = tk.ks + i0,
                    .kstage = nullptr,
                    .rstage = nullptr,
                    .pf_from = 0};
      build_step(it, st, kgroups, b);
      for (int v0 = 0, k = 0; v0 < tk.nrv; v0 += amx_tile_rv(tk.nrv, v0), ++k) {
        marks[k].step(step, n);
        if (amx_tile_rv(tk.nrv, v0) == 2)
          row_tile_amx<2>(it, st, 16 * v0, b, kgroups, marks[k]);
        else
          row_tile_amx<1>(it, st, 16 * v0, b, kgroups, marks[k]);
      }
    }
    for (int v0 = 0; v0 < tk.nrv; v0 += amx_tile_rv(tk.nrv, v0)) {
      Item fin = it;
      fin.go = b.go + int64_t(16 * v0) * kLatentDim;
      finalize(fin, 16 * v0, std::min(16 * amx_tile_rv(tk.nrv, v0), it.R - 16 * v0));
    }
  });
}

// Its stages: every step runs each row tile (32 rows, the rest in one of 16) through QK, SM, PV,
// UP in turn.
std::vector<StageOp> stages_amx(int rows, int kv_begin, int kv_end, int chunk) {
  std::vector<StageOp> all;
  const int nrv = (rows + 15) / 16;
  for (int v0 = 0; v0 < nrv; v0 += amx_tile_rv(nrv, v0)) {
    const std::vector<StageOp> tile = item_stages(
        std::min(16 * amx_tile_rv(nrv, v0), rows - 16 * v0), kv_begin, kv_end, chunk);
    all.insert(all.end(), tile.begin(), tile.end());
  }
  std::stable_sort(all.begin(), all.end(),
                   [](const StageOp& x, const StageOp& y) { return x.step < y.step; });
  return all;
}

}  // namespace
}  // namespace mla::cpu
