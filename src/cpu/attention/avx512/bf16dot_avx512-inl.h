// The body of the bf16-dot attention kernels for AVX-512 BF16 CPUs, instantiated per cache format
// by decode_bf16_avx512bf16.cc and decode_fp8_avx512bf16.cc: every product of the decode (Q.K^T
// and P.V) runs on vdpbf16ps (pairs of bf16 multiplied and summed into fp32), so it runs at the
// bf16 dot rate, twice the fp32 FMA rate. Include it only from those two files (an anonymous
// namespace: each gets its own copy, built with its own flags).
//
// fp8 (FlashMLA's 656-byte e4m3 tokens): each step's tokens are widened in registers to
// bf16(e4m3 x the tile's float32 scale) (exact for FlashMLA's power-of-two scales) into a
// [T][576] bf16 scratch that QK and PV then read like bf16 cache rows; that conversion is the
// only difference (about 32 vector ops per token against 288 x rows/16 dot products).
//
// Layouts (T = chunk * 64 tokens per step; rs = rows rounded up to 16, plus 16 when that is an
// even number of cache lines):
//
//   qp  [288][rs]  u32   query pairs, rows in lanes        built once per item (transposed)
//   k   cache rows       key pairs, broadcast straight from the cache (from a 16-token staging
//                        copy where a tile of tokens is not contiguous in the cache)
//   s   [T][rs]    f32   scores, rows in lanes             QK: s[t][r] += qp[kp][r] * k[t][kp]
//   pp  [T/2][rs]  u32   bf16 probability pairs (p[r][2j], p[r][2j+1]), written by SM
//   v   cache rows       value pairs (v[2j][d], v[2j+1][d]), interleaved in registers by PV
//   go  [rows][512] f32  dims in lanes                     PV: go[r][d] += pp[j][r] * v[j][d]
//
// With the rows in the lanes, QK needs no key repack, SM needs no horizontal reduction (max and
// sum run down the token axis), and SM writes the probabilities in the layout PV broadcasts
// from; only P is written per step. Measured on Zen 4 (k 4096, chunk 4, one core): 0.87-0.90 of
// the bf16-dot peak at 256 rows, 0.85-0.90 at 16 rows.
//
// Register tiles (32 zmm; GCC 12 keeps them in registers: objdump shows no zmm spill in the
// loops): QK 3 row vectors x 8 tokens (24 accumulators + 3 query registers), 2 x 8 or 1 x 16 for
// the remaining row vectors; PV up to 6 rows x 64 dims (24 accumulators + 4 value registers).
// Tiles of 4 x 4 or fewer accumulators lose 10-30% to the 6-cycle dot-product latency.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own _mm512_undefined_* trip -Wmaybe-uninitialized where they are inlined (GCC bug
// 105593); the pragma has to precede <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>

#include "cpu/attention/avx512/avx512_common.h"
#include "cpu/attention/kernel.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

using namespace avx512;

constexpr int kPairs = kQkDim / 2;  // 288 32-bit key pairs per token
constexpr int kTokTile = 16;        // tokens per QK tile (and staging copy)
constexpr int kPvDims = 64;         // dims per PV register tile (4 zmm)
constexpr int kPvRows = 6;          // rows per PV register tile

// Software prefetch distance in tokens (avx512_common.h); 32 to 128 measured alike.
constexpr int kPrefetchDist = 64;

// ---- fp8: e4m3 -> bf16 in registers -------------------------------------------------------------

// 16 e4m3 codes -> fp32, exactly: normal codes by moving the fields into place (exponent bias
// 7 -> 127), subnormals (exponent 0) as m x 2^-9, the NaN codes 0x7f / 0xff to NaN.
MLA_AVX512_INLINE __m512 e4m3_to_ps(__m128i b) {
  const __m512i x = _mm512_cvtepu8_epi32(b);
  const __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
  const __m512i normal = _mm512_add_epi32(_mm512_slli_epi32(mag, 20), _mm512_set1_epi32(120 << 23));
  const __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(0x1p-9f));
  const __mmask16 is_sub = _mm512_cmplt_epi32_mask(mag, _mm512_set1_epi32(8));
  const __mmask16 is_nan = _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f));
  __m512i v = _mm512_mask_blend_epi32(is_sub, normal, _mm512_castps_si512(sub));
  v = _mm512_mask_blend_epi32(is_nan, v, _mm512_set1_epi32(0x7fc00000));
  return _mm512_castsi512_ps(_mm512_or_si512(v, sign));
}

// One 656-byte fp8 token -> 576 bf16: latent bf16(e4m3 x scale), rope copied.
MLA_AVX512_INLINE void fp8_token_to_bf16(const uint8_t* src, uint16_t* dst) {
  for (int g = 0; g < kFp8Tiles; ++g) {
    float sc;
    std::memcpy(&sc, src + kFp8ScaleOffset + 4 * g, 4);
    const __m512 s = _mm512_set1_ps(sc);
    for (int c = g * kFp8Tile; c < (g + 1) * kFp8Tile; c += 32) {
      const __m512 lo = _mm512_mul_ps(
          e4m3_to_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c))), s);
      const __m512 hi = _mm512_mul_ps(
          e4m3_to_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c + 16))), s);
      _mm512_storeu_si512(dst + c, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
  std::memcpy(dst + kLatentDim, src + kFp8RopeOffset, 2 * kRopeDim);
}

// The step's n fp8 tokens widened into conv [n_pad][576] (kptr[t] -> row t; rows past n -> zero),
// prefetching the tokens kPrefetchDist positions ahead (11 lines of a 656-byte token).
inline void fp8_step_tokens(const KernelArgs& a, int t0, int n, int n_pad, const uint16_t* zero,
                            uint16_t* conv, const uint16_t** kptr) {
  const DecodeParams& p = *a.p;
  const CacheView& cv = *a.cache;
  const int bs = cv.block_size();
  const int32_t* table = p.block_table + int64_t(a.seq) * p.max_blocks_per_seq;
  auto token = [&](int pos) {
    return cv.fp8 + int64_t(table[pos / bs]) * cv.kv_block_stride + (pos % bs) * cv.kv_token_stride;
  };
  for (int t = 0; t < n; ++t) {
    const int ahead = t0 + t + kPrefetchDist;
    if (ahead < a.kv_end) {
      const uint8_t* f = token(ahead);
      for (int c = 0; c < kFp8TokenBytes; c += 64) prefetch_line(f + c);
      prefetch_line(f + kFp8TokenBytes - 1);
    }
    fp8_token_to_bf16(token(t0 + t), conv + size_t(t) * kQkDim);
    kptr[t] = conv + size_t(t) * kQkDim;
  }
  for (int t = n; t < n_pad; ++t) kptr[t] = zero;
}

// ---- QK: s[t][r] for RV row vectors (16 rows each) x NT tokens ---------------------------------
// qp points at the tile's first row in [288][rs]; k at the first token's pairs, tokens 288 pairs
// apart; s at [t0][r0] in [T][rs].
// pf: npf tokens' cache rows to prefetch, one line (of 18 a token) per k-step.
template <int RV, int NT>
MLA_AVX512_INLINE void qk_tile(const uint32_t* qp, int64_t rs, const uint32_t* k, float* s,
                               const uint16_t* const* pf = nullptr, int npf = 0) {
  __m512 acc[NT][RV];
  for (int j = 0; j < NT; ++j)
    for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_setzero_ps();
  const int pf_lines = npf * (kQkDim / 32);
  for (int kp = 0, pt = 0, pl = 0; kp < kPairs; ++kp) {
    if (kp < pf_lines) {
      prefetch_line(pf[pt] + 32 * pl);
      if (++pl == kQkDim / 32) pl = 0, ++pt;
    }
    __m512bh q[RV];
    for (int v = 0; v < RV; ++v) q[v] = (__m512bh)_mm512_load_si512(qp + kp * rs + 16 * v);
    for (int j = 0; j < NT; ++j) {
      const __m512bh kb = (__m512bh)_mm512_set1_epi32(int(k[j * kPairs + kp]));
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_dpbf16_ps(acc[j][v], q[v], kb);
    }
  }
  for (int j = 0; j < NT; ++j)
    for (int v = 0; v < RV; ++v) _mm512_store_ps(s + j * rs + 16 * v, acc[j][v]);
}

// One 16-token tile of keys against row vectors [0, nrv); the first register tile prefetches
// the npf (<= 16) tokens' rows at pf (288 k-steps, 16 x 18 lines).
void qk_token_tile(const uint32_t* qp, int64_t rs, int nrv, const uint32_t* k, float* s,
                   const uint16_t* const* pf, int npf) {
  int v = 0;
  for (; v + 3 <= nrv; v += 3) {
    qk_tile<3, 8>(qp + 16 * v, rs, k, s + 16 * v, pf, v == 0 ? npf : 0);
    qk_tile<3, 8>(qp + 16 * v, rs, k + 8 * kPairs, s + 8 * rs + 16 * v);
  }
  if (nrv - v == 2) {
    qk_tile<2, 8>(qp + 16 * v, rs, k, s + 16 * v, pf, v == 0 ? npf : 0);
    qk_tile<2, 8>(qp + 16 * v, rs, k + 8 * kPairs, s + 8 * rs + 16 * v);
  } else if (nrv - v == 1) {
    qk_tile<1, 16>(qp + 16 * v, rs, k, s + 16 * v, pf, v == 0 ? npf : 0);
  }
}

// ---- PV (+ UP): R rows x 64 dims ---------------------------------------------------------------
// vdpbf16ps wants V as pairs of tokens per dim. They are interleaved in registers as the tile
// loads them, from the two tokens' cache rows (vpunpck{l,h}wd: one shuffle per 4 dot products
// at 6 rows, which Zen 4 issues beside them), rather than repacked into scratch per step: the
// repack's stores cost about 10% of the step at 16 rows, the shuffles under 2%.
//
// The unpacks work within 128-bit lanes, so the accumulators hold the dims permuted: in each
// group of 32 dims, register X holds dims {0-3, 8-11, 16-19, 24-27} and register Y the others.
// go stays in that order across steps; unpermute_dims restores it at the end.
template <int R, bool kResident>
MLA_AVX512_INLINE void pv_tile(const uint16_t* const* kptr, int d0, const uint32_t* pp, int64_t rs,
                               int npairs, float* acc_out, const float* alpha) {
  constexpr int ND = kPvDims / 16;
  __m512 acc[R][ND];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < ND; ++d) acc[r][d] = _mm512_setzero_ps();
  for (int j = 0; j < npairs; ++j) {
    const uint16_t* ta = kptr[2 * j] + d0;
    const uint16_t* tb = kptr[2 * j + 1] + d0;
    __m512bh v[ND];
    for (int d = 0; d < ND; d += 2) {
      const __m512i a = _mm512_loadu_si512(ta + 16 * d), b = _mm512_loadu_si512(tb + 16 * d);
      v[d] = (__m512bh)_mm512_unpacklo_epi16(a, b);
      v[d + 1] = (__m512bh)_mm512_unpackhi_epi16(a, b);
    }
    for (int r = 0; r < R; ++r) {
      const __m512bh pb = (__m512bh)_mm512_set1_epi32(int(pp[j * rs + r]));
      for (int d = 0; d < ND; ++d) acc[r][d] = _mm512_dpbf16_ps(acc[r][d], v[d], pb);
    }
  }
  for (int r = 0; r < R; ++r) {
    float* o = acc_out + r * kLatentDim;
    if constexpr (kResident) {
      const __m512 a = _mm512_set1_ps(alpha[r]);
      for (int d = 0; d < ND; ++d)
        _mm512_store_ps(o + 16 * d, _mm512_fmadd_ps(_mm512_load_ps(o + 16 * d), a, acc[r][d]));
    } else {
      for (int d = 0; d < ND; ++d) _mm512_store_ps(o + 16 * d, acc[r][d]);
    }
  }
}

template <bool kResident>
void pv_rows(int R, const uint16_t* const* kptr, int d0, const uint32_t* pp, int64_t rs, int npairs,
             float* acc, const float* alpha) {
  switch (R) {
    case 1:
      pv_tile<1, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
    case 2:
      pv_tile<2, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
    case 3:
      pv_tile<3, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
    case 4:
      pv_tile<4, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
    case 5:
      pv_tile<5, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
    default:
      pv_tile<6, kResident>(kptr, d0, pp, rs, npairs, acc, alpha);
      break;
  }
}

// All rows x all dims. Row tiles are balanced (16 rows: 6 + 5 + 5, not 6 + 6 + 4) so that no
// tile is left with too few rows to hide the dot-product latency.
template <bool kResident>
void pv_all(int rows, const uint16_t* const* kptr, const uint32_t* pp, int64_t rs, int npairs,
            float* acc, const float* alpha) {
  const int ntiles = (rows + kPvRows - 1) / kPvRows;
  int r0 = 0;
  for (int t = 0; t < ntiles; ++t) {
    const int r1 = int(int64_t(rows) * (t + 1) / ntiles);
    for (int d0 = 0; d0 < kLatentDim; d0 += kPvDims)
      pv_rows<kResident>(r1 - r0, kptr, d0, pp + r0, rs, npairs,
                         acc + int64_t(r0) * kLatentDim + d0, alpha + r0);
    r0 = r1;
  }
}

// The inverse of PV's dim order, for one row of 512 accumulators (in place allowed).
void unpermute_dims(const float* go, float* o) {
  alignas(64) static const int32_t kLo[16] = {0, 1, 2, 3, 16, 17, 18, 19,
                                              4, 5, 6, 7, 20, 21, 22, 23};
  alignas(64) static const int32_t kHi[16] = {8,  9,  10, 11, 24, 25, 26, 27,
                                              12, 13, 14, 15, 28, 29, 30, 31};
  const __m512i lo = _mm512_load_si512(kLo), hi = _mm512_load_si512(kHi);
  for (int d = 0; d < kLatentDim; d += 32) {
    const __m512 x = _mm512_loadu_ps(go + d), y = _mm512_loadu_ps(go + d + 16);
    _mm512_storeu_ps(o + d, _mm512_permutex2var_ps(x, lo, y));
    _mm512_storeu_ps(o + d + 16, _mm512_permutex2var_ps(x, hi, y));
  }
}

// ---- the query, once per item -------------------------------------------------------------------

// qp[kp][r] = pair kp of query row r, for row vectors of 16 rows; rows >= rows are zero.
void pack_queries(const ItemRows& ir, int rows_pad, int64_t rs, uint32_t* qp) {
  for (int r0 = 0; r0 < rows_pad; r0 += 16) {
    const uint32_t* src[16];
    for (int j = 0; j < 16; ++j)
      src[j] = r0 + j < ir.rows ? reinterpret_cast<const uint32_t*>(ir.q(r0 + j)) : nullptr;
    for (int kb = 0; kb < kPairs; kb += 16) {
      __m512i m[16];
      for (int j = 0; j < 16; ++j)
        m[j] = src[j] ? _mm512_loadu_si512(src[j] + kb) : _mm512_setzero_si512();
      transpose16x16_epi32(m);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(qp + (kb + j) * rs + r0, m[j]);
    }
  }
}

// ---- SM: scores of a step -> bf16 probability pairs, running max and sum ------------------------
// Returns whether any score of the step (visible or not) was NaN or Inf.
bool softmax_step(const float* s, int64_t rs, int rows_pad, int ntok, const int32_t* last, int t0,
                  float c, float* m, float* l, float* alpha, uint32_t* pp) {
  // vpermw indices interleaving p[2j] (words 0..15) and p[2j+1] (words 16..31) per row.
  alignas(64) static const uint16_t kIlv[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i ilv = _mm512_load_si512(kIlv);
  const __m512 cv = _mm512_set1_ps(c);
  __mmask16 bad_any = 0;
  for (int r0 = 0; r0 < rows_pad; r0 += 16) {
    const __m512i lim = _mm512_sub_epi32(_mm512_load_si512(last + r0), _mm512_set1_epi32(t0));
    __mmask16 bad_vis, bad_lanes;
    const __m512 mx = rows16_masked_max(s + r0, rs, ntok, lim, cv, &bad_vis, &bad_lanes);
    bad_any |= bad_lanes;
    __m512 a;
    const __m512 m_use = rows16_advance_max(m + r0, mx, &a, bad_vis);
    __m512 sum0 = _mm512_setzero_ps(), sum1 = sum0;
    for (int t = 0; t < ntok; t += 2) {
      const __m512 p0 = rows16_prob(s + t * rs + r0, t, lim, cv, m_use);
      const __m512 p1 = rows16_prob(s + (t + 1) * rs + r0, t + 1, lim, cv, m_use);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      const __m512i pk = (__m512i)_mm512_cvtne2ps_pbh(p1, p0);
      _mm512_store_si512(pp + (t / 2) * rs + r0, _mm512_permutexvar_epi16(ilv, pk));
    }
    _mm512_store_ps(l + r0, _mm512_fmadd_ps(_mm512_load_ps(l + r0), a, _mm512_add_ps(sum0, sum1)));
    _mm512_store_ps(alpha + r0, a);
  }
  return bad_any != 0;
}

// ---- the kernel ---------------------------------------------------------------------------------

template <KvDType KV>
void run(const KernelArgs& a, Scratch& scratch) {
  constexpr bool kFp8 = KV == KvDType::fp8;
  const ItemRows ir(a);
  const int rows = ir.rows;
  const int rows_pad = (rows + 15) & ~15;
  const int nrv = rows_pad / 16;
  const int64_t rs = lanes_row_stride(rows_pad);
  const int T = a.chunk * kKvTile;  // a multiple of kTokTile
  const bool resident = a.up == UpForm::resident;

  ScratchCarver sizer(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    ScratchCarver cv(pass ? static_cast<unsigned char*>(scratch.get(sizer.used())) : nullptr);
    uint32_t* qp = cv.take<uint32_t>(size_t(kPairs) * rs);
    const RowState rows_state(cv, rows_pad);
    float *m = rows_state.m, *l = rows_state.l, *alpha = rows_state.alpha;
    int32_t* last = rows_state.last;
    float* s = cv.take<float>(size_t(T) * rs);
    uint32_t* pp = cv.take<uint32_t>(size_t(T / 2) * rs);
    float* acc = cv.take<float>(size_t(rows) * kLatentDim);  // go (resident) or lo (spill)
    uint16_t* stage = cv.take<uint16_t>(size_t(kTokTile) * kQkDim);
    uint16_t* zero = cv.take<uint16_t>(kQkDim);
    const uint16_t** kptr = cv.take<const uint16_t*>(T);
    const uint16_t** pfptr = cv.take<const uint16_t*>(std::max(T, kPrefetchDist));
    uint16_t* conv = cv.take<uint16_t>(kFp8 ? size_t(T) * kQkDim : 0);  // fp8: the step widened
    if (pass == 0) {
      sizer = cv;
      continue;
    }

    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    if constexpr (!kFp8) prefetch_rows16(pfptr, token_ptrs_clipped(a, a.kv_begin, kPrefetchDist, pfptr));
    pack_queries(ir, rows_pad, rs, qp);
    rows_state.init(ir, rows_pad);
    std::memset(zero, 0, kQkDim * sizeof(uint16_t));
    for (int r = 0; r < rows; ++r)
      std::memset(resident ? acc + size_t(r) * kLatentDim : ir.o(r), 0, kLatentDim * sizeof(float));

    const float c = a.p->softmax_scale * kLog2e;
    StageMarks marks(a.stages, rows);
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0);
      marks.step(step, n);
      const int ntok = (n + kTokTile - 1) / kTokTile * kTokTile;  // n rounded up to tiles
      // What the step's QK tiles prefetch: the positions kPrefetchDist after its own (fp8: the
      // conversion prefetches instead, its reads are the cache's).
      int npf = 0;
      if constexpr (kFp8) {
        fp8_step_tokens(a, t0, n, ntok, zero, conv, kptr);
      } else {
        step_token_ptrs(a, t0, n, ntok, zero, kptr);
        npf = token_ptrs_clipped(a, t0 + kPrefetchDist, n, pfptr);
      }

      // QK, one 16-token tile at a time: keys straight from the cache where the tile is
      // contiguous there, else from a staging copy.
      for (int t = 0; t < ntok; t += kTokTile) {
        bool contiguous = true;
        const auto base = reinterpret_cast<uintptr_t>(kptr[t]);
        for (int j = 1; j < kTokTile; ++j)
          contiguous &=
              reinterpret_cast<uintptr_t>(kptr[t + j]) - base == j * sizeof(uint16_t) * kQkDim;
        const uint16_t* k = kptr[t];
        if (!contiguous) {
          for (int j = 0; j < kTokTile; ++j)
            std::memcpy(stage + j * kQkDim, kptr[t + j], kQkDim * sizeof(uint16_t));
          k = stage;
        }
        qk_token_tile(qp, rs, nrv, reinterpret_cast<const uint32_t*>(k), s + t * rs, pfptr + t,
                      std::clamp(npf - t, 0, kTokTile));
      }

      marks.done(Stage::QK);
      // fp8 tokens are bf16 by now (a NaN tile scale widens to NaN), so one exponent mask serves.
      if (softmax_step(s, rs, rows_pad, ntok, last, t0, c, m, l, alpha, pp))
        drop_nonfinite_tokens(kptr, n, zero, 0x7f80);
      marks.done(Stage::SM);

      const int npairs = (n + 1) / 2;
      if (resident) {
        pv_all<true>(rows, kptr, pp, rs, npairs, acc, alpha);
        marks.done(Stage::PV);
      } else {
        pv_all<false>(rows, kptr, pp, rs, npairs, acc, alpha);
        marks.done(Stage::PV);
        up_spill(ir, acc, alpha);
      }
      marks.done(Stage::UP);  // resident: UP (acc x alpha) runs inside PV's tiles, timed there
    }
    // go is in PV's dim order: put it back before normalizing.
    for (int r = 0; r < rows; ++r)
      unpermute_dims(resident ? acc + size_t(r) * kLatentDim : ir.o(r), ir.o(r));
    finalize_rows(ir, nullptr, m, l);
  }
}

}  // namespace
}  // namespace mla::cpu
