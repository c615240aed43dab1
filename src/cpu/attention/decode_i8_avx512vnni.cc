// The int8-cache attention kernel for AVX-512 VNNI CPUs (DESIGN §3, §4, §7): S_nope and P.V run
// on vpdpbusd (u8 x s8 -> int32, 64 products per instruction), S_rope on vdpbf16ps. Its own file:
// one instantiation file per dtype and ISA.
//
// The item's rows (r = i * nh + h) go in tiles of 32 (and one of 16 for the rest); each row tile
// walks the whole KV range in steps of T = chunk * 64 tokens, so that its output accumulator stays
// in L1/L2 from the first step to the last (the seed's "GO move" on a CPU: 32 rows x 512 fp32,
// 64 KiB) while the keys stream from L3 at a few bytes per dot product. Per step:
//
//   QK  s[t][rows] = S_nope * qs * ks[t] + S_rope          rows in the lanes of each vector
//         S_nope: acc[t][rows] += (k[t][4g..4g+3] ^ 0x80) . q8[4g..4g+3][rows]
//         the key is the u8 operand: 4 channels broadcast straight from the cache and flipped
//         to u8 by one vpxord {1to16}; the query, packed once per item, is the s8 operand; the
//         flip adds 128 * sum_c q8[c], a per-row constant the accumulators start from negated:
//         exact, and nothing per token to precompute.
//   SM  running max down the token axis (no horizontal reductions), p = 2^(s * c - m), row sums,
//       P' = P * value scale quantized to u8 against each row's maximum within the step,
//       packed 4 tokens per 32-bit lane: pp[t/4][rows]
//   PV  acc[row][dims] += pp[t/4][row] . V[t..t+3][dims]   rows broadcast, 16 dims x 4 tokens per
//       vector: V is read straight from the cache, 64 channels of 4 tokens at a time, and
//       interleaved byte-wise in registers (4 unpacks), so no repacked copy of V is ever stored
//   UP  go[row][dims] = go * alpha[row] + acc * dq[row] in the PV register epilogue (resident),
//       or lo -> scratch and a separate pass over the output rows (spill, the seed's old form).
//
// Why no stored repack: on Zen 4 every 64-byte store takes about 1.6 issue slots from vpdpbusd,
// and a repack of V writes 512 bytes per token (measured: 10-12% of a 16-row item); the unpacks
// run on other pipes, in the shadow of the dot products. Likewise vfmadd, vmulps and vcmpps
// share the dot-product pipes while loads, adds, max, converts, shuffles, roundscale and scalef
// do not: the softmax uses exp2_fma5_ps and rescales lazily (softmax_rows) to stay off them.
//
// The byte interleave leaves the channels of each 64-channel group in a fixed order; go and lo
// hold them in that order and the final write (and the spill form's UP) put them back:
//
//   position p = g*64 + i*16 + L*4 + j   holds channel   d = g*64 + L*16 + i*4 + j
//
// (i: which unpack output, L: 128-bit lane, j: 32-bit element).
//
//   qp   [128][Rp] u32     4 latent channels of a query row, s8           once per item
//   qr   [32][Rp]  u32     2 rope values of a query row, bf16             once per item
//   tok  [range]           the range's latent rows in the cache           once per item
//   s    [T][RV][16] f32   scores of one row tile (RV vectors of 16 rows) per step
//   pp   [T/4][RV][16] u32 4 tokens' u8 probabilities of a row            per step
//   go   [32][512] f32     the row tile's output accumulator by position  per row tile
//
// Register tiles (32 zmm): QK 2 row vectors x 8 tokens or 1 x 16; PV 4 rows x 64 channels. The
// dot products are inline asm, so GCC 12 keeps every accumulator in its register (checked with
// objdump -d: no zmm stack traffic in the loops; the intrinsics version spilled them). Each tile
// runs at 0.98-1.0 of the vpdpbusd rate from L1/L2.

// GCC 12 also raises -Wuninitialized (not only -Wmaybe-uninitialized) on its own
// _mm512_undefined_* here (GCC bug 105593); like avx512_common.h's pragma, this must precede
// <immintrin.h>.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu/attention/avx512_common.h"  // first: see the note there
#include "cpu/attention/kernel.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

using namespace avx512;

constexpr int kGroups = kLatentDim / 4;   // QK nope k-steps: 4 channels each
constexpr int kRopePairs = kRopeDim / 2;  // QK rope k-steps: 2 bf16 each
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -__builtin_inff();
constexpr float kLazyRescale = 8.f;  // log2 units: p up to 256 between rescales

// Blocks shorter than this are staged into a contiguous copy per step, so QK tiles stay long.
constexpr int kMinDirectBlock = 16;

// Software prefetch distance in tokens (avx512_common.h): what a row tile's first step has
// prefetched ahead of its QK; later steps' first T / 2 tokens come from the previous step's PV.
// 32 to 128 measured alike at 16 rows from DRAM.
constexpr int kPrefetchDist = 64;

// QK register tiles per count of row vectors RV (16 rows each): tokens per tile, a divisor of 64
// so that tiles never straddle a block of 16, 64 or 128 tokens. The rows are covered by tiles of
// kMainRV vectors and at most one of 1. Measured at 256 rows, within noise of each other: 2 x 8,
// 2 x 12, 3 x 8; 4 x 6 was 3 points slower.
template <int RV>
struct QkShape;
template <>
struct QkShape<1> {
  static constexpr int kTokens = 16;
};
template <>
struct QkShape<2> {
  static constexpr int kTokens = 8;
};
constexpr int kMainRV = 2;
// PV register tile: rows x 64 channels (4 accumulators a row). 4 and 6 rows run alike.
constexpr int kPvRows = 4;

// 32 bits at any address (the broadcast operands: 4 int8 or 2 bf16).
typedef int32_t i32_unaligned __attribute__((may_alias, aligned(1)));

// The dot products as inline asm: GCC 12 compiles the intrinsics' accumulator chains into
// register copies and stack stores inside the loops; the tied "+v" operand keeps each
// accumulator in one register.
// acc += u8 . s8 (vpdpbusd).
MLA_AVX512_INLINE void dpbusd(__m512i& acc, __m512i u8, __m512i s8) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
}
// acc += a . broadcast(2 bf16 at p) (vdpbf16ps with an embedded broadcast).
MLA_AVX512_INLINE void dpbf16_bcast(__m512& acc, __m512i a, const void* p) {
  asm("vdpbf16ps %2%{1to16%}, %1, %0"
      : "+v"(acc)
      : "v"(a), "m"(*static_cast<const i32_unaligned*>(p)));
}
// broadcast(4 bytes at p) ^ flip, one instruction (vpxord {1to16}); off the dot-product pipes.
MLA_AVX512_INLINE __m512i xor_bcast(__m512i flip, const void* p) {
  __m512i r;
  asm("vpxord %2%{1to16%}, %1, %0"
      : "=v"(r)
      : "v"(flip), "m"(*static_cast<const i32_unaligned*>(p)));
  return r;
}

// 16 bf16 values widened to fp32.
MLA_AVX512_INLINE __m512 bf16x16_to_ps(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// Position of latent channel d in go / lo / the PV accumulators (see the header comment).
constexpr int position_of(int d) {
  return (d & ~63) + ((d >> 2) & 3) * 16 + ((d >> 4) & 3) * 4 + (d & 3);
}

// 64 values by position (4 vectors) -> by channel: a 4 x 4 transpose of 128-bit blocks.
MLA_AVX512_INLINE void positions_to_channels(__m512 z[4]) {
  const __m512 t0 = _mm512_shuffle_f32x4(z[0], z[1], 0x44),
               t1 = _mm512_shuffle_f32x4(z[0], z[1], 0xee);
  const __m512 t2 = _mm512_shuffle_f32x4(z[2], z[3], 0x44),
               t3 = _mm512_shuffle_f32x4(z[2], z[3], 0xee);
  z[0] = _mm512_shuffle_f32x4(t0, t2, 0x88);
  z[1] = _mm512_shuffle_f32x4(t0, t2, 0xdd);
  z[2] = _mm512_shuffle_f32x4(t1, t3, 0x88);
  z[3] = _mm512_shuffle_f32x4(t1, t3, 0xdd);
}

// ---- QK: one tile of N tokens x RV row vectors --------------------------------------------------

struct QkRows {
  const uint8_t* qp;        // [128][rs] u32 (4 x s8) at the tile's first row
  const uint16_t* qr;       // [32][rs] u32 (bf16 pairs) at the tile's first row
  int64_t rs;               // row stride of qp / qr in u32 (Rp)
  const int32_t* qsum_neg;  // [RV*16] -128 * sum_c q8[c]
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
// (rope, 64 bf16 apart); positions past lim[] get -inf where `mask`. mx[v] = max(mx[v], s[.][v]),
// NaN for a row with a non-finite visible score.
// kTok: per-token key scales ks (token mode), else 1.
template <int N, int RV, bool kTok>
__attribute__((noinline)) void qk_tile(const QkRows& q, const int8_t* k, const uint16_t* kr,
                                       const float* ks, int pos0, bool mask, float* s, float* mx,
                                       const QkPrefetch& pf) {
  __m512i acc[N][RV];
  {
    __m512i init[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) init[v] = _mm512_load_si512(q.qsum_neg + 16 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) acc[n][v] = init[v];
  }
  const __m512i flip = _mm512_set1_epi8(char(0x80));
  const uint8_t* qp = q.qp;
  const int64_t step = q.rs * 4;
  // One latent line of the prefetched tokens per k-step (8 lines a token, 128 k-steps).
  const int pf_lines = 8 * pf.n;
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
  __m512 f[N][RV];
  {
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

// Table of qk_tile<n, RV, kTok> for n = 1..N, so a tile cut short by a block boundary or the end
// of the range still runs in one call.
template <int RV, bool kTok, int... I>
constexpr auto qk_table(std::integer_sequence<int, I...>) {
  return std::array<QkFn, sizeof...(I)>{&qk_tile<I + 1, RV, kTok>...};
}

template <int RV>
const std::array<QkFn, QkShape<RV>::kTokens>& qk_fns(bool tok) {
  constexpr int N = QkShape<RV>::kTokens;
  static const auto t = qk_table<RV, true>(std::make_integer_sequence<int, N>{});
  static const auto f = qk_table<RV, false>(std::make_integer_sequence<int, N>{});
  return tok ? t : f;
}

// ---- PV (+ UP): RT rows x 64 channels -----------------------------------------------------------

enum class Epi { first, rescale, add, spill };  // go = lo*dq | go*alpha + lo*dq | go + lo*dq | lo

struct PvArgs {
  const int8_t* const* tok;  // [4 * groups] the tokens' latent rows (a zero row past the range)
  const uint32_t* pp;        // [groups][ps] 4 tokens' u8 probabilities, at the tile's first row
  int64_t ps;                // pp's group stride in u32
  int groups;                // groups of 4 tokens in the step
  const float* alpha;        // [RT] per row
  const float* dq;           // [RT] per row: p dequantization (x tensor scale)
  const float* cs;           // [512] channel scales by position (channel mode)
  float* go;                 // [RT][512] by position: the accumulator (resident) or int32 lo
  const float* ptop;         // [RT] per row: the step's largest P' (x tensor scale), applied in fp32
  const int32_t* top;        // [RT] per row: its token in the step (tok[top])
  // Tokens (of the next step) whose channel block d0 the tile prefetches, 2 per group of the
  // step: latent rows pf_tok[i], rope rows rope + 64 * pf_slot[i] (line d0 / 64 of them, d0 < 128).
  const int8_t* const* pf_tok;
  const int64_t* pf_slot;
  const uint16_t* rope;
  int pf_n;
};

template <int RT, Epi E, bool kChan>
__attribute__((noinline)) void pv_tile(const PvArgs& a, int d0) {
  __m512i acc[RT][4];
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) acc[r][i] = _mm512_setzero_si512();
  const int8_t* const* tok = a.tok;
  const uint32_t* pp = a.pp;
  for (int j = 0; j < a.groups; ++j, tok += 4, pp += a.ps) {
    if (2 * j < a.pf_n) {
      const int i = 2 * j, e = std::min(i + 2, a.pf_n);
      for (int u = i; u < e; ++u) {
        prefetch_line(a.pf_tok[u] + d0);
        if (d0 < 128) prefetch_line(a.rope + a.pf_slot[u] * kRopeDim + d0 / 2);
      }
    }
    // 64 channels of 4 tokens, interleaved to (t0 t1 t2 t3) bytes per channel.
    const __m512i x0 = _mm512_loadu_si512(tok[0] + d0), x1 = _mm512_loadu_si512(tok[1] + d0);
    const __m512i x2 = _mm512_loadu_si512(tok[2] + d0), x3 = _mm512_loadu_si512(tok[3] + d0);
    const __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), hi01 = _mm512_unpackhi_epi8(x0, x1);
    const __m512i lo23 = _mm512_unpacklo_epi8(x2, x3), hi23 = _mm512_unpackhi_epi8(x2, x3);
    const __m512i z[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                          _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) {
      const __m512i p =
          _mm512_set1_epi32(static_cast<const i32_unaligned*>(static_cast<const void*>(pp))[r]);
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) dpbusd(acc[r][i], p, z[i]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r) {
    float* g = a.go + r * kLatentDim + d0;
    if constexpr (E == Epi::spill) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) _mm512_store_si512(g + 16 * i, acc[r][i]);
    } else {
      const __m512 dq = _mm512_set1_ps(a.dq[r]);
      const __m512 al = E == Epi::rescale ? _mm512_set1_ps(a.alpha[r]) : dq;
      // The top token, applied exactly: its 64 channels interleaved like V above (each byte in
      // the top of its 32-bit lane, so 2^24 times its value; ptop carries the 2^-24).
      const __m512 pt = _mm512_set1_ps(a.ptop[r] * 0x1p-24f);
      const __m512i zero = _mm512_setzero_si512();
      const __m512i xt = _mm512_loadu_si512(a.tok[a.top[r]] + d0);
      const __m512i lt = _mm512_unpacklo_epi8(zero, xt), ht = _mm512_unpackhi_epi8(zero, xt);
      const __m512i vt[4] = {_mm512_unpacklo_epi16(zero, lt), _mm512_unpackhi_epi16(zero, lt),
                             _mm512_unpacklo_epi16(zero, ht), _mm512_unpackhi_epi16(zero, ht)};
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512 c = kChan ? _mm512_load_ps(a.cs + d0 + 16 * i) : dq;
        const __m512 d = kChan ? _mm512_mul_ps(dq, c) : dq;
        const __m512 lo = _mm512_cvtepi32_ps(acc[r][i]);
        __m512 x;
        if constexpr (E == Epi::first) x = _mm512_mul_ps(lo, d);
        if constexpr (E == Epi::rescale)
          x = _mm512_fmadd_ps(lo, d, _mm512_mul_ps(_mm512_load_ps(g + 16 * i), al));
        if constexpr (E == Epi::add) x = _mm512_fmadd_ps(lo, d, _mm512_load_ps(g + 16 * i));
        x = _mm512_fmadd_ps(_mm512_cvtepi32_ps(vt[i]), kChan ? _mm512_mul_ps(pt, c) : pt, x);
        _mm512_store_ps(g + 16 * i, x);
      }
    }
  }
}

// rows [0, rows) x 512 channels: channel blocks outer, so that a block's 64 bytes x T tokens of V
// (16 KiB at T = 256) stay in L1 across the row tiles.
template <Epi E, bool kChan, int... I>
void pv_rows_impl(const PvArgs& a, int rows, std::integer_sequence<int, I...>) {
  using Fn = void (*)(const PvArgs&, int);
  static constexpr Fn kTail[] = {&pv_tile<I + 1, E, kChan>...};  // 1..kPvRows rows
  for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
    PvArgs t = a;
    for (int r = 0; r < rows; r += kPvRows) {
      const int n = std::min(kPvRows, rows - r);
      t.pp = a.pp + r;
      t.alpha = a.alpha + r;
      t.dq = a.dq + r;
      t.ptop = a.ptop + r;
      t.top = a.top + r;
      t.go = a.go + int64_t(r) * kLatentDim;
      t.pf_n = r == 0 ? a.pf_n : 0;
      if (n == kPvRows)
        pv_tile<kPvRows, E, kChan>(t, d0);
      else
        kTail[n - 1](t, d0);
    }
  }
}

template <bool kChan>
void pv_rows(const PvArgs& a, int rows, Epi e) {
  constexpr auto seq = std::make_integer_sequence<int, kPvRows>{};
  switch (e) {
    case Epi::first:
      pv_rows_impl<Epi::first, kChan>(a, rows, seq);
      break;
    case Epi::rescale:
      pv_rows_impl<Epi::rescale, kChan>(a, rows, seq);
      break;
    case Epi::add:
      pv_rows_impl<Epi::add, kChan>(a, rows, seq);
      break;
    case Epi::spill:
      pv_rows_impl<Epi::spill, false>(a, rows, seq);
      break;
  }
}

// ---- the item -----------------------------------------------------------------------------------

// Quantizes the item's query rows and packs them (qp, qr), rows in lanes; rows >= R are zero.
// The rounding is quantize_query_row's (cpu/attention/quantize.h: q * (127 / max|q|), to nearest
// even), vectorized, so the kernel computes with exactly kernel_query_values(). qs has the tensor
// scale folded in; qsum_neg = -128 * sum_c q8[c] corrects QK for the key's flip to u8.
// 16 rows at a time: each row's 64 channels (16 groups of 4 bytes) go into one register, and a
// 16 x 16 transpose turns them into 16 group vectors with the rows in the lanes.
void pack_queries(const KernelArgs& a, int nh, int R, int Rp, bool negate, const float* cs,
                  float tensor, uint8_t* qp, uint16_t* qr, int32_t* qsum_neg, float* qs) {
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
          b[j] = _mm512_cvtepi32_epi8(q8);
        }
        w[e] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_set_m128i(b[1], b[0])),
                                  _mm256_set_m128i(b[3], b[2]), 1);
      }
      transpose16x16_epi32(w);
      for (int g = 0; g < 16; ++g) _mm512_store_si512(qp32 + int64_t(c0 / 4 + g) * Rp + r0, w[g]);
    }
    for (int e = 0; e < 16; ++e) qsum_neg[r0 + e] = -128 * _mm512_reduce_add_epi32(sum[e]);
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

// Everything one work item keeps across its row tiles and steps.
struct Item {
  const KernelArgs* a;
  const CacheView* cache;
  const uint16_t* rope;  // the cache's rope rows (slot 0)
  int R, Rp, nh;
  bool tok, resident, staged;
  float c2;         // |softmax_scale| * log2(e)
  float tensor;     // tensor scale (1 in other modes)
  const float* cs;  // channel scales (channel mode) or nullptr
  const uint8_t* qp;
  const uint16_t* qr;
  const int32_t* qsum_neg;
  const float* qs;
  const int32_t* lim;
  float *m, *l, *alpha, *dq;
  float* ptop;          // [Rp] the step's largest P' of each row x tensor scale, applied in fp32
  int32_t* top;         // [Rp] its token in the step
  float* go;            // the row tile's [32][512]: accumulator (resident) or lo (spill)
  const float* cs_pos;  // channel scales by position
  float* s;             // [T][RV][16] the row tile's scores in the step
  uint8_t* pp;          // [T/4][RV][16] u32 its probabilities
};

// One step's tokens.
struct Step {
  int t0, n, groups;
  bool first;
  const int64_t* slot;       // [n]
  const int8_t* const* tok;  // [4 * groups] latent rows; a zero row past the range
  const float* ks;           // [4 * groups] token scales (token mode; 0 past the range)
  const int8_t* kstage;      // staging copies (blocks shorter than kMinDirectBlock)
  const uint16_t* rstage;
  int pf_from;               // QK prefetches the step's tokens from here on (those before
                             // were prefetched by the previous step's PV or the row tile's start)
};

// QK: the step's tokens against row vectors [v0, v0 + RV): s (masked) and the step maximum mx.
template <int RV>
void qk_rows(const Item& it, const Step& st, int v0, float* mx) {
  constexpr int N = QkShape<RV>::kTokens;
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
  const auto& fns = qk_fns<RV>(it.tok);
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
      fns[len - 1](rows, k, kr, st.ks + t, pos0, pos0 + len - 1 > lim_min, s, mx, pf);
    }
    t += len;
  }
  // The last group of 4 tokens may be partial: its missing tokens are invisible.
  std::fill(it.s + int64_t(st.n) * 16 * RV, it.s + int64_t(st.groups) * 64 * RV, kNegInf);
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
  // s * c2 rounded before the subtraction, as the maximum was: the fused form left the row's
  // largest score up to half an ulp of s * c2 above m (2^(5e5) = inf at a softmax scale of 1e12).
  auto prob = [&](const float* s, int v) {
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
  const __m512 dq_scale = _mm512_set1_ps(it.tensor / 255.f);
  for (int v = 0; v < RV; ++v) {
    const int rv = r0 + 16 * v;
    const __m512 l = _mm512_load_ps(it.l + rv);
    _mm512_store_ps(it.l + rv, _mm512_fmadd_ps(l, _mm512_load_ps(it.alpha + rv), sum[v]));
    _mm512_store_ps(it.dq + rv, _mm512_mul_ps(m2[v], dq_scale));
  }
  return same_max;
}

// UP, the seed's old form: lo (int32, rows x positions) from scratch, the accumulator in the
// output rows, read and written back every step.
void update_spill(const Item& it, const Step& st, int r0, int rows) {
  const KernelArgs& a = *it.a;
  const int32_t* lo = reinterpret_cast<const int32_t*>(it.go);
  for (int e = 0; e < rows; ++e) {
    const int r = r0 + e;
    float* o = a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h;
    const __m512 dq = _mm512_set1_ps(it.dq[r]), al = _mm512_set1_ps(it.alpha[r]);
    const __m512 pt = _mm512_set1_ps(it.ptop[r]);
    const int8_t* vt = st.tok[it.top[r]];  // the top token, applied exactly
    for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
      __m512 x[4];
      for (int i = 0; i < 4; ++i)
        x[i] = _mm512_cvtepi32_ps(_mm512_load_si512(lo + e * kLatentDim + d0 + 16 * i));
      positions_to_channels(x);
      for (int i = 0; i < 4; ++i) {
        const __m512 d = it.cs ? _mm512_mul_ps(dq, _mm512_loadu_ps(it.cs + d0 + 16 * i)) : dq;
        float* oi = o + d0 + 16 * i;
        const __m512 y =
            st.first ? _mm512_mul_ps(x[i], d)
                     : _mm512_fmadd_ps(x[i], d, _mm512_mul_ps(_mm512_loadu_ps(oi), al));
        const __m512 v = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(vt + d0 + 16 * i))));
        const __m512 pc = it.cs ? _mm512_mul_ps(pt, _mm512_loadu_ps(it.cs + d0 + 16 * i)) : pt;
        _mm512_storeu_ps(oi, _mm512_fmadd_ps(v, pc, y));
      }
    }
  }
}

// One row tile through the step: QK -> SM -> PV (+ UP).
template <int RV>
void row_tile(const Item& it, const Step& st, int v0, const int8_t* const* pf_tok,
              const int64_t* pf_slot, int pf_n, StageMarks& marks) {
  alignas(64) float mx[16 * RV];
  std::fill_n(mx, 16 * RV, kNegInf);
  qk_rows<RV>(it, st, v0, mx);  // S_nope (int32) and the rope part together, per token tile
  marks.done(Stage::QK);
  const bool same_max = softmax_rows<RV>(it, st, v0, mx);
  marks.done(Stage::SM);
  const int r0 = 16 * v0;
  const int rows = std::min(16 * RV, it.R - r0);  // padding rows need no P.V
  const PvArgs pa{.tok = st.tok,
                  .pp = reinterpret_cast<const uint32_t*>(it.pp),
                  .ps = 16 * RV,
                  .groups = st.groups,
                  .alpha = it.alpha + r0,
                  .dq = it.dq + r0,
                  .cs = it.cs_pos,
                  .go = it.go,
                  .ptop = it.ptop + r0,
                  .top = it.top + r0,
                  .pf_tok = pf_tok,
                  .pf_slot = pf_slot,
                  .rope = it.rope,
                  .pf_n = pf_n};
  const Epi e = !it.resident ? Epi::spill
                : st.first   ? Epi::first
                : same_max   ? Epi::add
                             : Epi::rescale;
  if (it.cs)
    pv_rows<true>(pa, rows, e);
  else
    pv_rows<false>(pa, rows, e);
  marks.done(Stage::PV);
  if (!it.resident) update_spill(it, st, r0, rows);
  marks.done(Stage::UP);  // resident: UP runs in PV's epilogue, timed there
}

// Finalize rows [r0, r0 + rows): o = go / l, lse = ln2 * m + ln l; rows that saw no key: o = 0,
// lse = -inf; rows with m = NaN (a non-finite value seen): o = NaN, lse = NaN.
void finalize(const Item& it, int r0, int rows) {
  const KernelArgs& a = *it.a;
  for (int r = r0; r < r0 + rows; ++r) {
    float* o = a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h;
    const float l = it.l[r];
    float* lse = a.lse + (r / it.nh) * a.lse_stride_i + (r % it.nh) * a.lse_stride_h;
    if (std::isnan(it.m[r])) {  // the row saw a NaN or Inf
      *lse = __builtin_nanf("");
      std::fill_n(o, kLatentDim, __builtin_nanf(""));
      continue;
    }
    *lse = l > 0.f ? it.m[r] * kLn2 + std::log(l) : kNegInf;
    const __m512 inv = _mm512_set1_ps(l > 0.f ? 1.f / l : 0.f);
    if (it.resident) {
      const float* g = it.go + int64_t(r - r0) * kLatentDim;
      for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
        __m512 x[4];
        for (int i = 0; i < 4; ++i) x[i] = _mm512_mul_ps(_mm512_load_ps(g + d0 + 16 * i), inv);
        positions_to_channels(x);
        for (int i = 0; i < 4; ++i) _mm512_storeu_ps(o + d0 + 16 * i, x[i]);
      }
    } else {
      for (int d = 0; d < kLatentDim; d += 16)
        _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), inv));
    }
  }
}

// One row tile of RV vectors over the item's whole KV range: its accumulator stays in L1/L2 (the
// seed's "GO move" optimization on a CPU) while the keys stream from L3, a few bytes per dot
// product. The tokens' slots, rows and scales come precomputed for the range.
template <int RV>
void run_rows(const Item& it, int v0, const int64_t* slot, const int8_t* const* tok,
              const float* ks, int8_t* kstage, uint16_t* rstage) {
  const KernelArgs& a = *it.a;
  const int T = std::min(a.chunk, 1024) * kKvTile;  // as in run()
  if (v0 > 0 && !it.staged)  // the first row tile's were prefetched in run()
    prefetch_tokens(tok, slot, it.rope, std::min(a.kv_end - a.kv_begin, kPrefetchDist));
  StageMarks marks(a.stages, std::min(16 * RV, it.R - 16 * v0));
  for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
    const int n = std::min(T, a.kv_end - t0), i0 = t0 - a.kv_begin;
    marks.step(step, n);
    if (it.staged)
      for (int t = 0; t < n; ++t) {
        std::memcpy(kstage + int64_t(t) * kLatentDim, tok[i0 + t], kLatentDim);
        std::memcpy(rstage + int64_t(t) * kRopeDim, it.cache->rope_bf16(slot[i0 + t]),
                    kRopeDim * sizeof(uint16_t));
      }
    const Step st{.t0 = t0,
                  .n = n,
                  .groups = (n + 3) / 4,
                  .first = t0 == a.kv_begin,
                  .slot = slot + i0,
                  .tok = tok + i0,
                  .ks = ks + i0,
                  .kstage = kstage,
                  .rstage = rstage,
                  .pf_from = t0 == a.kv_begin ? kPrefetchDist : T / 2};
    // PV prefetches the next step's first T / 2 tokens, QK the step's others.
    const int next = i0 + n, ntok = a.kv_end - a.kv_begin;
    const int pf_n = it.staged ? 0 : std::clamp(ntok - next, 0, T / 2);
    row_tile<RV>(it, st, v0, tok + next, slot + next, pf_n, marks);
  }
  finalize(it, 16 * v0, std::min(16 * RV, it.R - 16 * v0));
}

void run(const KernelArgs& a, Scratch& scratch) {
  const DecodeParams& p = *a.p;
  const CacheView& cache = *a.cache;
  const int nh = a.head_end - a.head_begin;
  const int R = q_len_of(p, a.seq) * nh;
  const int Rp = (R + 15) & ~15;
  const int nrv = Rp / 16;
  // P.V sums up to 255 * 127 per token in int32: steps stay below 66k tokens.
  const int T = std::min(a.chunk, 1024) * kKvTile;
  const int bs = cache.block_size();
  const KvScale mode = cache.scale_mode();
  const bool resident = a.up == UpForm::resident;
  const bool staged = bs < kMinDirectBlock;
  const int rv_max = std::min(nrv, kMainRV);

  ScratchCarver cv(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass) cv = ScratchCarver(static_cast<unsigned char*>(scratch.get(cv.used())));
    uint8_t* qp = cv.take<uint8_t>(size_t(kLatentDim) * Rp);
    uint16_t* qr = cv.take<uint16_t>(size_t(kRopeDim) * Rp);
    int32_t* qsum_neg = cv.take<int32_t>(Rp);
    float* qs = cv.take<float>(Rp);
    int32_t* lim = cv.take<int32_t>(Rp);
    float* m = cv.take<float>(Rp);  // running max, in the base-2 scaled domain
    float* l = cv.take<float>(Rp);
    float* alpha = cv.take<float>(Rp);
    float* dq = cv.take<float>(Rp);
    float* ptop = cv.take<float>(Rp);
    int32_t* top = cv.take<int32_t>(Rp);
    float* go = cv.take<float>(size_t(kLatentDim) * 16 * rv_max);
    // Slots, latent rows and key scales of the whole range, the last group of 4 tokens padded
    // with a zero row (never a cache read) and scale 0.
    const int ntok = a.kv_end - a.kv_begin, npad = (ntok + 3) & ~3;
    int64_t* slot = cv.take<int64_t>(ntok);
    const int8_t** tok = cv.take<const int8_t*>(npad);
    float* ks = cv.take<float>(npad);
    int8_t* kstage = cv.take<int8_t>(staged ? size_t(T) * kLatentDim : 0);
    uint16_t* rstage = cv.take<uint16_t>(staged ? size_t(T) * kRopeDim : 0);
    float* s = cv.take<float>(size_t(T) * 16 * rv_max);
    uint8_t* pp = cv.take<uint8_t>(size_t(T) * 16 * rv_max);
    int8_t* zero = cv.take<int8_t>(kLatentDim);
    float* cs_pos = cv.take<float>(kLatentDim);
    if (pass == 0) continue;

    // A negative softmax scale is folded into the query (negating q8 and the rope bf16 is exact),
    // so the running maximum is taken over s * |scale| and the exp argument is never positive.
    const bool negate = p.softmax_scale < 0.f;
    const float* cs = mode == KvScale::channel ? cache.channel_scales() : nullptr;
    const float tensor = mode == KvScale::tensor ? cache.tensor_scale() : 1.f;
    const int32_t* table = p.block_table + int64_t(a.seq) * p.max_blocks_per_seq;
    for (int t = 0, blk = a.kv_begin / bs, off = a.kv_begin % bs; t < ntok; ++t) {
      slot[t] = int64_t(table[blk]) * bs + off;
      tok[t] = cache.latent_i8(slot[t]);
      if (++off == bs) off = 0, ++blk;
    }
    std::fill(tok + ntok, tok + npad, zero);
    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    if (!staged) prefetch_tokens(tok, slot, cache.rope_bf16(0), std::min(ntok, kPrefetchDist));
    pack_queries(a, nh, R, Rp, negate, cs, tensor, qp, qr, qsum_neg, qs);
    if (cs)
      for (int d = 0; d < kLatentDim; ++d) cs_pos[position_of(d)] = cs[d];
    std::memset(zero, 0, kLatentDim);
    // A non-finite token scale (a latent written from NaN/Inf) is replaced by 0 so that P' and
    // the step's quantization stay finite for the rows that cannot see the token; the rows that
    // can (a prefix of positions: lim >= bad_pos) start with m = NaN, as do rows whose query is
    // not finite (qs = NaN from pack_queries).
    int bad_pos = a.kv_end;
    if (mode == KvScale::token) {
      for (int t = 0; t < ntok; ++t) {
        ks[t] = cache.token_scale(slot[t]);
        if (!std::isfinite(ks[t])) {
          ks[t] = 0.f;
          bad_pos = std::min(bad_pos, a.kv_begin + t);
        }
      }
      std::fill(ks + ntok, ks + npad, 0.f);
    }
    for (int r = 0; r < Rp; ++r) {
      l[r] = 0.f;
      // Padding rows see everything (their scores are 0, finite; their outputs are never written).
      lim[r] = r < R ? std::min(last_visible(p, a.seq, r / nh), a.kv_end - 1) : a.kv_end - 1;
      m[r] = r < R && (lim[r] >= bad_pos || std::isnan(qs[r])) ? __builtin_nanf("") : kNegInf;
    }
    const Item it{.a = &a,
                  .cache = &cache,
                  .rope = cache.rope_bf16(0),
                  .R = R,
                  .Rp = Rp,
                  .nh = nh,
                  .tok = mode == KvScale::token,
                  .resident = resident,
                  .staged = staged,
                  .c2 = std::fabs(p.softmax_scale) * kLog2e,
                  .tensor = tensor,
                  .cs = cs,
                  .qp = qp,
                  .qr = qr,
                  .qsum_neg = qsum_neg,
                  .qs = qs,
                  .lim = lim,
                  .m = m,
                  .l = l,
                  .alpha = alpha,
                  .dq = dq,
                  .ptop = ptop,
                  .top = top,
                  .go = go,
                  .cs_pos = cs_pos,
                  .s = s,
                  .pp = pp};

    for (int v0 = 0; v0 < nrv;) {
      if (nrv - v0 >= kMainRV) {
        run_rows<kMainRV>(it, v0, slot, tok, ks, kstage, rstage);
        v0 += kMainRV;
      } else {
        run_rows<1>(it, v0, slot, tok, ks, kstage, rstage);
        v0 += 1;
      }
    }
  }
}

// Its stages: rows in tiles of 16 x kMainRV (the rest in tiles of 16), each tile through every
// step; QK computes S_nope (int32) and the rope part together, per token tile.
std::vector<StageOp> stages(int rows, int kv_begin, int kv_end, int chunk) {
  std::vector<StageOp> all;
  const int nrv = (rows + 15) / 16;
  for (int v0 = 0; v0 < nrv;) {
    const int rv = nrv - v0 >= kMainRV ? kMainRV : 1;
    const std::vector<StageOp> tile =
        item_stages(std::min(16 * rv, rows - 16 * v0), kv_begin, kv_end, std::min(chunk, 1024));
    all.insert(all.end(), tile.begin(), tile.end());
    v0 += rv;
  }
  return all;
}

}  // namespace

extern const KernelInfo decode_i8_avx512vnni{.name = "decode_i8_avx512vnni",
                                            .kv = KvDType::int8,
                                            .portable = false,
                                            .isa = Isa::avx512,
                                            .supported = cpu_has_avx512_set,
                                            .run = run,
                                            .stages = stages};

}  // namespace mla::cpu
