// The int8-cache attention kernels for AVX2 CPUs without AVX-512 (DESIGN §3, §4), one body for
// two instruction sets: S_nope and P.V are exact integer products, on vpmaddwd (G = 2: pairs of
// int16, any AVX2 CPU; decode_i8_avx2.cc) or on the VEX vpdpbusd of AVX-VNNI (G = 4: quads of
// u8 x s8 into int32, Alder Lake and later client cores, Sapphire Rapids and later Xeons, Zen 5;
// decode_i8_avx2vnni.cc); S_rope an fp32 FMA product. Each .cc instantiates it with its own
// flags; everything here is in an anonymous namespace (isa.h).
//
// Why vpmaddwd (int16 x int16 -> pairs summed into int32) and not vpmaddubsw: AVX2's only u8 x s8
// product, vpmaddubsw, sums each pair of products into a *saturating* int16. With the u8 operand
// 0..255 and the s8 operand +-127 a pair reaches 2 * 255 * 127 = 64770 > 32767, so it would
// clip exactly where accuracy matters: P' near its row maximum (peaked scores, spread 1-3, and
// attention sinks) against large latents, and the key's flip to u8 in QK. Fitting it would take
// P or the query down to 7 bits, doubling their quantization error (DESIGN §3 asks 8-bit P,
// §6 bounds the error). vpmaddwd on sign-extended operands is exact (|pair| <= 2 * 255 * 127
// fits int32 with room; sums over a step of T tokens stay below 2^31 for T < 33000) and does the
// same 16 products per multiply instruction as vpmaddubsw + vpmaddwd(1) do 32 per two, so on
// the multiply pipes it is as fast as the saturating form (the vpaddd that accumulates runs on
// the other vector pipes). The operands are widened once per step, shared by every row:
//
//   q16  [256][rs] u32    pairs (q8[2c], q8[2c+1]) of int16, rows in lanes      once per item
//   qr   [64][rs]  f32    query rope, rows in lanes                             once per item
//   k16  [10][512] i16    10 tokens of keys (two QK tiles), sign-extended       per 10 tokens
//   kr   [10][64]  f32    their rope, widened                                   per 10 tokens
//   s    [T][rs]   f32    scores -> p' = p * value scale                        per step
//   pp   [T/2][rs] u32    pairs (p8[2j], p8[2j+1]) of int16 (0..255)            per step (SM)
//   v16  [32][T/2][16] u32  pairs (v[2j][d], v[2j+1][d]) of int16, by 16-dim block  per step
//   go   [rows][512] f32  the accumulator (resident) or this step's lo (spill)
//
//   QK_nope  acc[t][rows] += vpmaddwd(q16[c/2][rows], broadcast k16[t][c..c+1])   (exact int32)
//   QK_rope  s = acc * qs * ks[t] + sum_d qr[d][rows] * kr[t][d]                   (fp32 FMA)
//   SM   running max, p = 2^(s * c - m), row sums; p' = p * token scale; each row's largest p'
//        of the step is applied exactly in fp32 (ptop, top), the others quantized to u8 against
//        the largest of them (DESIGN §3: the row maximum within the step), as the portable and
//        AVX-512 kernels do, so one sink does not cost the rest of the step their resolution
//   PV   acc[row][16 dims] += vpmaddwd(v16[blk][j], broadcast pp[j][row])       (exact int32)
//   UP   lo = acc * dq[row] + ptop[row] * v[top][d] (x channel scale); go = go * alpha + lo in
//        the PV register epilogue (resident), or lo to scratch and a pass over the output rows
//        (spill, the seed's old form)
//
// Register tiles (16 ymm; objdump shows no ymm stack traffic or register copies in them): QK 2
// row vectors x 5 tokens (10 accumulators, 2 query registers, the broadcast key, one product; at
// 2 x 6 GCC 12 fills the loop with register copies and the tile ran 15% slower), 1 x 10 for an
// odd last row vector; PV 6 rows x 16 dims (12 accumulators, 2 value registers, a broadcast p, one
// product). PV walks the row tiles outermost: a tile's pp (4 KiB at T = 256) stays in L1 while
// v16 streams in order from L2 (0.60-0.63 -> 0.64 of the floor at 256 rows, chunk 4, over walking
// the dim blocks outermost with pp read from L2, one line per pair).
//
// With AVX-VNNI (G = 4) the same walk runs on groups of 4: vpdpbusd multiplies u8 by s8 and adds
// each lane's 4 products into its int32 accumulator exactly (no saturation, no widening, no
// separate add: 32 products per instruction against vpmaddwd's 16). The arrays hold quads
// instead of pairs: q8 [128][rs] s8 x 4 (rows in lanes), the staged keys as u8 (k + 128: the
// xor of the sign bit) with 128 * sum(q) taken off each row's S_nope, pp [T/4][rs] u8 x 4 and
// v8 [32][T/4][16] s8 x 4. With no product register the QK tile holds 2 row vectors x 6 tokens.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "cpu/attention/avx2/avx2_common.h"
#include "cpu/attention/isa.h"
#include "cpu/attention/quantize.h"
#include "mla/dtype.h"

namespace mla::cpu {
namespace {

using namespace avx2;

// G: values per 32-bit lane of the integer products (2: vpmaddwd on int16 pairs; 4: vpdpbusd on
// 8-bit quads).
template <int G>
constexpr int kQkTokens = G == 4 ? 6 : 5;  // tokens per QK register tile
template <int G>
constexpr int kTokTile = 2 * kQkTokens<G>;  // tokens staged at a time (keys / kr): two QK tiles
constexpr int kPvRows = 6;   // rows per PV register tile
template <int G>
constexpr int kGroups = kLatentDim / G;  // QK_nope k-steps of G channels
// The rows-in-lanes arrays (q16 in QK, pp in PV) are walked one cache line per k-step, 1 KiB
// apart at 256 rows, from L2: each tile prefetches the line this many k-steps ahead into L1.
constexpr int kQPrefetch = 8;
// Software prefetch distance in tokens: each QK tile prefetches the tokens this far ahead in the
// item's range, so the whole range is fetched once, a step ahead of its use.
constexpr int kPrefetchDist = 64;

// acc[i] += vpmaddwd(x[i], broadcast(32 bits at p)), i < N, as inline asm: with the intrinsics
// GCC 12 hoists every broadcast of a tile out of the k-step and spills accumulators to the stack
// to make room (checked with objdump); here each k-step holds just the broadcast and one product.
template <int N>
MLA_AVX2_INLINE void madd_bcast(__m256i (&acc)[N], const __m256i (&x)[N], const void* p) {
  static_assert(N == 2);
  __m256i b, t;
  asm("vpbroadcastd %[m], %[b]\n\t"
      "vpmaddwd %[b], %[x0], %[t]\n\t"
      "vpaddd %[t], %[a0], %[a0]\n\t"
      "vpmaddwd %[b], %[x1], %[t]\n\t"
      "vpaddd %[t], %[a1], %[a1]"
      : [a0] "+x"(acc[0]), [a1] "+x"(acc[1]), [b] "=&x"(b), [t] "=&x"(t)
      : [x0] "x"(x[0]), [x1] "x"(x[1]), [m] "m"(*static_cast<const int32_t*>(p)));
}
MLA_AVX2_INLINE void madd_bcast(__m256i (&acc)[1], const __m256i (&x)[1], const void* p) {
  __m256i b, t;
  asm("vpbroadcastd %[m], %[b]\n\t"
      "vpmaddwd %[b], %[x0], %[t]\n\t"
      "vpaddd %[t], %[a0], %[a0]"
      : [a0] "+x"(acc[0]), [b] "=&x"(b), [t] "=&x"(t)
      : [x0] "x"(x[0]), [m] "m"(*static_cast<const int32_t*>(p)));
}

#ifdef __AVXVNNI__
// acc[i] += vpdpbusd(u8 broadcast(32 bits at p), s8 x[i]): the VEX form ({vex}: the assembler
// would otherwise pick the EVEX one, which needs AVX-512).
MLA_AVX2_INLINE void dot_bcast(__m256i (&acc)[2], const __m256i (&x)[2], const void* p) {
  __m256i b;
  asm("vpbroadcastd %[m], %[b]\n\t"
      "%{vex%} vpdpbusd %[x0], %[b], %[a0]\n\t"
      "%{vex%} vpdpbusd %[x1], %[b], %[a1]"
      : [a0] "+x"(acc[0]), [a1] "+x"(acc[1]), [b] "=&x"(b)
      : [x0] "x"(x[0]), [x1] "x"(x[1]), [m] "m"(*static_cast<const int32_t*>(p)));
}
MLA_AVX2_INLINE void dot_bcast(__m256i (&acc)[1], const __m256i (&x)[1], const void* p) {
  __m256i b;
  asm("vpbroadcastd %[m], %[b]\n\t"
      "%{vex%} vpdpbusd %[x0], %[b], %[a0]"
      : [a0] "+x"(acc[0]), [b] "=&x"(b)
      : [x0] "x"(x[0]), [m] "m"(*static_cast<const int32_t*>(p)));
}
#endif

// The integer product of one k-step: G = 2 pairs (vpmaddwd), G = 4 quads (vpdpbusd).
template <int G, int N>
MLA_AVX2_INLINE void product_bcast(__m256i (&acc)[N], const __m256i (&x)[N], const void* p) {
#ifdef __AVXVNNI__
  if constexpr (G == 4) {
    dot_bcast(acc, x, p);
    return;
  }
#endif
  static_assert(G == 2 || G == 4);
  madd_bcast(acc, x, p);
}

// ---- QK: RV row vectors x NT tokens ------------------------------------------------------------
struct QkArgs {
  const uint32_t* q16;  // [256][rs] pairs (G = 2) or [128][rs] quads (G = 4), at the first row
  const int32_t* qsum;  // G = 4: [RV*8] 128 x the sum of each row's q8 (the keys' +128 offset)
  const float* qr;      // [64][rs] at the tile's first row
  int64_t rs;
  const float* qs;      // [RV*8] query scale (tensor scale folded in)
  const void* k16;      // [NT][512]: int16 (G = 2) or k + 128 as u8 (G = 4)
  const float* kr;      // [NT][64]
  const float* ks;      // [NT] token scales (token mode) or nullptr
  float* s;             // [NT][rs] at the tile's first row
};

template <int G, int RV, int NT>
__attribute__((noinline)) void qk_tile(const QkArgs& a) {
  __m256i acc[NT][RV];
#pragma GCC unroll 16
  for (int n = 0; n < NT; ++n)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) acc[n][v] = _mm256_setzero_si256();
  const uint32_t* q16 = a.q16;
  const int32_t* k32 = static_cast<const int32_t*>(a.k16);
  for (int c = 0; c < kGroups<G>; ++c, q16 += a.rs) {
    _mm_prefetch(reinterpret_cast<const char*>(q16 + kQPrefetch * a.rs), _MM_HINT_T0);
    __m256i q[RV];
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v)
      q[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q16 + 8 * v));
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) product_bcast<G>(acc[n], q, k32 + n * kGroups<G> + c);
  }
  if constexpr (G == 4) {  // the keys were k + 128
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) {
      const __m256i off = _mm256_load_si256(reinterpret_cast<const __m256i*>(a.qsum + 8 * v));
#pragma GCC unroll 16
      for (int n = 0; n < NT; ++n) acc[n][v] = _mm256_sub_epi32(acc[n][v], off);
    }
  }
  __m256 f[NT][RV];
  {
    __m256 qs[RV];
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) qs[v] = _mm256_load_ps(a.qs + 8 * v);
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n)
#pragma GCC unroll 2
      for (int v = 0; v < RV; ++v) {
        f[n][v] = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[n][v]), qs[v]);
        if (a.ks) f[n][v] = _mm256_mul_ps(f[n][v], _mm256_broadcast_ss(a.ks + n));
      }
  }
  const float* qr = a.qr;
  for (int d = 0; d < kRopeDim; ++d, qr += a.rs) {
    __m256 q[RV];
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) q[v] = _mm256_load_ps(qr + 8 * v);
#pragma GCC unroll 16
    for (int n = 0; n < NT; ++n) {
      const __m256 k = _mm256_broadcast_ss(a.kr + n * kRopeDim + d);
#pragma GCC unroll 2
      for (int v = 0; v < RV; ++v) f[n][v] = _mm256_fmadd_ps(q[v], k, f[n][v]);
    }
  }
#pragma GCC unroll 16
  for (int n = 0; n < NT; ++n)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) _mm256_store_ps(a.s + n * a.rs + 8 * v, f[n][v]);
}

// ---- PV (+ UP): R rows x 16 dims ---------------------------------------------------------------

struct PvArgs {
  const uint32_t* v16;  // [npairs][16] the dim block's value pairs (G = 2) or quads (G = 4)
  const uint32_t* pp;   // [npairs][rs] at the tile's first row
  int64_t rs;
  int npairs;           // groups of G tokens
  int d0;
  const float* dq;     // [R] p8 dequantization (x tensor scale)
  const float* alpha;  // [R]
  const float* ptop;   // [R] the step's largest p' (x tensor scale), applied in fp32
  const int32_t* top;  // [R] its token in the step
  const int8_t* const* tok;  // the step's latent rows
  const float* cs;     // [512] channel scales (channel mode) or nullptr
  float* go;           // [R][512] at the tile's first row: accumulator (resident) or lo (spill)
};

template <int G, int R, bool kResident>
__attribute__((noinline)) void pv_tile(const PvArgs& a) {
  __m256i acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const uint32_t* v16 = a.v16;
  const uint32_t* pp = a.pp;
  for (int j = 0; j < a.npairs; ++j, v16 += 16, pp += a.rs) {
    _mm_prefetch(reinterpret_cast<const char*>(pp + kQPrefetch * a.rs), _MM_HINT_T0);
    const __m256i v0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(v16));
    const __m256i v1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(v16 + 8));
    const __m256i v[2] = {v0, v1};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) product_bcast<G>(acc[r], v, pp + r);
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const __m256 dq = _mm256_broadcast_ss(a.dq + r), pt = _mm256_broadcast_ss(a.ptop + r);
    const int8_t* vt = a.tok[a.top[r]] + a.d0;
    float* g = a.go + r * kLatentDim + a.d0;
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i) {
      const __m256 v = _mm256_cvtepi32_ps(
          _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(vt + 8 * i))));
      __m256 lo = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][i]), dq, _mm256_mul_ps(v, pt));
      if (a.cs) lo = _mm256_mul_ps(lo, _mm256_loadu_ps(a.cs + a.d0 + 8 * i));
      if constexpr (kResident)
        lo = _mm256_fmadd_ps(_mm256_load_ps(g + 8 * i), _mm256_broadcast_ss(a.alpha + r), lo);
      _mm256_store_ps(g + 8 * i, lo);
    }
  }
}

template <int G, bool kResident, int... I>
void pv_call(int R, const PvArgs& a, std::integer_sequence<int, I...>) {
  static constexpr void (*kFns[])(const PvArgs&) = {&pv_tile<G, I + 1, kResident>...};
  kFns[R - 1](a);
}

// All rows x all dims, row tiles outermost (the tile's pp stays in L1 while v16 streams in order);
// row tiles balanced (16 rows: 6 + 5 + 5, not 6 + 6 + 4).
template <int G, bool kResident>
void pv_all(int rows, const PvArgs& base, const uint32_t* v16, int64_t vblk,
            const float* alpha_all) {
  const int ntiles = (rows + kPvRows - 1) / kPvRows;
  int r0 = 0;
  for (int t = 0; t < ntiles; ++t) {
    const int r1 = int(int64_t(rows) * (t + 1) / ntiles);
    for (int b = 0; b < kLatentDim / 16; ++b) {
      PvArgs a = base;
      a.v16 = v16 + b * vblk;
      a.d0 = 16 * b;
      a.pp = base.pp + r0;
      a.dq = base.dq + r0;
      a.alpha = alpha_all + r0;
      a.ptop = base.ptop + r0;
      a.top = base.top + r0;
      a.go = base.go + int64_t(r0) * kLatentDim;
      pv_call<G, kResident>(r1 - r0, a, std::make_integer_sequence<int, kPvRows>{});
    }
    r0 = r1;
  }
}

// ---- SM ----------------------------------------------------------------------------------------

struct SmArgs {
  float* s;  // [ntok][rs]
  int64_t rs;
  int rows_pad, n, ntok, t0;
  const int32_t* last;
  float c;            // softmax_scale * log2(e)
  const float* ks;    // [ntok] token scales (token mode) or nullptr
  float tensor;       // tensor scale (1 in other modes)
  float *m, *l, *alpha, *dq, *ptop;
  int32_t* top;
  uint32_t* pp;       // [ntok/G][rs]
};

template <int G>
void softmax_step(const SmArgs& a) {
  const __m256 cv = _mm256_set1_ps(a.c);
  const int ibits = 32 - __builtin_clz(unsigned(std::max(a.ntok - 1, 1)));
  const __m256i keep = _mm256_set1_epi32(int(~((1u << ibits) - 1)));
  const __m256i cap = _mm256_set1_epi32(255), zero = _mm256_setzero_si256();
  const int64_t rs = a.rs;
  for (int r0 = 0; r0 < a.rows_pad; r0 += 8) {
    // Tokens [n, ntok) (the last QK tile's tail: the next step's tokens, or zero rows) are
    // invisible like the masked ones.
    const __m256i lim = _mm256_min_epi32(
        _mm256_sub_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(a.last + r0)),
                         _mm256_set1_epi32(a.t0)),
        _mm256_set1_epi32(a.n - 1));
    // A NaN or Inf score the row can see (its query, a key's rope or a token scale from
    // non-finite data) makes its m NaN (DESIGN §6). int8 values are finite, so unlike the 16-bit
    // kernels no token needs dropping for P.V.
    __m256 bad_vis, bad_any;
    const __m256 mx = rows8_masked_max(a.s + r0, rs, a.ntok, lim, cv, &bad_vis, &bad_any);
    __m256 al;
    const __m256 m_use = rows8_advance_max(a.m + r0, mx, &al, bad_vis);
    // Pass 1: p (row sums), p' = p * token scale (kept in s), the two largest p' and the top
    // token: the largest key of p' bits (>= 0, so ordered as integers) with the token index in
    // the low bits (ties within the dropped bits go to the later token; any choice is exact,
    // the other is then quantized and capped at 255).
    __m256 sum = _mm256_setzero_ps(), m1 = sum, m2 = sum;
    __m256i key = zero;
    for (int t = 0; t < a.ntok; ++t) {
      float* st = a.s + t * rs + r0;
      const __m256 vis = visible(lim, t);
      const __m256 p = _mm256_and_ps(vis, exp2_ps(_mm256_sub_ps(scaled_score(_mm256_load_ps(st), cv), m_use)));
      sum = _mm256_add_ps(sum, p);
      // Masked again: a NaN scale of a token the row cannot see must not reach it.
      const __m256 q = a.ks ? _mm256_and_ps(vis, _mm256_mul_ps(p, _mm256_broadcast_ss(a.ks + t)))
                            : p;
      m2 = _mm256_max_ps(m2, _mm256_min_ps(m1, q));
      m1 = _mm256_max_ps(m1, q);
      key = _mm256_max_epi32(
          key, _mm256_or_si256(_mm256_and_si256(_mm256_castps_si256(q), keep),
                               _mm256_set1_epi32(t)));
      _mm256_store_ps(st, q);
    }
    // Pass 2: u8 against m2 (255 / m2; 0 where the row has no second token).
    const __m256 inv = _mm256_and_ps(_mm256_cmp_ps(m2, _mm256_setzero_ps(), _CMP_GT_OQ),
                                     _mm256_div_ps(_mm256_set1_ps(255.f), m2));
    auto quant = [&](const float* st) {
      const __m256i x = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_load_ps(st), inv));
      return _mm256_max_epi32(_mm256_min_epi32(x, cap), zero);  // overflow (INT_MIN) -> 0
    };
    for (int t = 0; t < a.ntok; t += G) {
      __m256i w = quant(a.s + t * rs + r0);
      for (int j = 1; j < G; ++j)
        w = _mm256_or_si256(w, _mm256_slli_epi32(quant(a.s + (t + j) * rs + r0), 32 / G * j));
      _mm256_store_si256(reinterpret_cast<__m256i*>(a.pp + (t / G) * rs + r0), w);
    }
    // The top token of each row: its p' (x tensor scale) to ptop, its p8 to 0.
    alignas(32) int32_t kt[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(kt), key);
    for (int e = 0; e < 8; ++e) {
      const int t = kt[e] & int((1u << ibits) - 1), r = r0 + e;
      a.top[r] = t;
      a.ptop[r] = a.s[t * rs + r] * a.tensor;
      if constexpr (G == 2)
        reinterpret_cast<uint16_t*>(a.pp + (t / 2) * rs + r)[t & 1] = 0;
      else
        reinterpret_cast<uint8_t*>(a.pp + (t / 4) * rs + r)[t & 3] = 0;
    }
    _mm256_store_ps(a.l + r0, _mm256_fmadd_ps(_mm256_load_ps(a.l + r0), al, sum));
    _mm256_store_ps(a.alpha + r0, al);
    _mm256_store_ps(a.dq + r0, _mm256_mul_ps(m2, _mm256_set1_ps(a.tensor / 255.f)));
  }
}

// ---- the item ----------------------------------------------------------------------------------

// q16 / qr / qs for rows [0, rows_pad): the latent quantized by quantize_query_row (the one
// rule, so q_used is exactly what this kernel computes with), channel scales folded in first,
// the tensor scale folded into qs; padding rows zero.
template <int G>
void pack_queries(const ItemRows& ir, int rows_pad, int64_t rs, const float* cs, float tensor,
                  uint32_t* q16, float* qr, float* qs, int32_t* qsum) {
  alignas(32) float x[kLatentDim];
  alignas(32) int8_t q8[kLatentDim];
  for (int r = 0; r < rows_pad; ++r) {
    if (r >= ir.rows) {
      for (int c = 0; c < kGroups<G>; ++c) q16[c * rs + r] = 0;
      for (int d = 0; d < kRopeDim; ++d) qr[d * rs + r] = 0.f;
      qs[r] = 0.f;
      qsum[r] = 0;
      continue;
    }
    const uint16_t* q = ir.q(r);
    for (int c = 0; c < kLatentDim; ++c) x[c] = bf16_to_f32(q[c]) * (cs ? cs[c] : 1.f);
    qs[r] = quantize_query_row(x, q8) * tensor;
    int32_t sum = 0;
    for (int c = 0; c < kGroups<G>; ++c) {
      uint32_t w = 0;
      for (int j = 0; j < G; ++j) {
        w |= (G == 2 ? uint32_t(uint16_t(int16_t(q8[G * c + j])))
                     : uint32_t(uint8_t(q8[G * c + j]))) << (32 / G * j);
        sum += q8[G * c + j];
      }
      q16[c * rs + r] = w;
    }
    qsum[r] = 128 * sum;
    for (int d = 0; d < kRopeDim; ++d) qr[d * rs + r] = bf16_to_f32(q[kLatentDim + d]);
  }
}

// v16 for the step's pairs of tokens, by 16-dim block: vpmovsxbw widens 16 dims of each token,
// the unpacks pair them within 128-bit lanes and the lane permutes put the dims back in order.
// G = 4: quads of tokens, the 16 dims' bytes interleaved by two rounds of unpacks.
template <int G>
void stage_values(const int8_t* const* tok, int npairs, int64_t vblk, uint32_t* v16) {
  if constexpr (G == 4) {
    for (int j = 0; j < npairs; ++j) {
      const int8_t* const* t4 = tok + 4 * j;
      for (int blk = 0; blk < kLatentDim / 16; ++blk) {
        __m128i x[4];
        for (int i = 0; i < 4; ++i)
          x[i] = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t4[i] + 16 * blk));
        const __m128i ab_lo = _mm_unpacklo_epi8(x[0], x[1]), ab_hi = _mm_unpackhi_epi8(x[0], x[1]);
        const __m128i cd_lo = _mm_unpacklo_epi8(x[2], x[3]), cd_hi = _mm_unpackhi_epi8(x[2], x[3]);
        __m128i* o = reinterpret_cast<__m128i*>(v16 + blk * vblk + 16 * j);
        _mm_store_si128(o, _mm_unpacklo_epi16(ab_lo, cd_lo));      // dims 0-3
        _mm_store_si128(o + 1, _mm_unpackhi_epi16(ab_lo, cd_lo));  // 4-7
        _mm_store_si128(o + 2, _mm_unpacklo_epi16(ab_hi, cd_hi));  // 8-11
        _mm_store_si128(o + 3, _mm_unpackhi_epi16(ab_hi, cd_hi));  // 12-15
      }
    }
    return;
  }
  for (int j = 0; j < npairs; ++j) {
    const int8_t* a = tok[2 * j];
    const int8_t* b = tok[2 * j + 1];
    for (int blk = 0; blk < kLatentDim / 16; ++blk) {
      const __m256i x =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16 * blk)));
      const __m256i y =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16 * blk)));
      const __m256i lo = _mm256_unpacklo_epi16(x, y), hi = _mm256_unpackhi_epi16(x, y);
      uint32_t* o = v16 + blk * vblk + 16 * j;
      _mm256_store_si256(reinterpret_cast<__m256i*>(o), _mm256_permute2x128_si256(lo, hi, 0x20));
      _mm256_store_si256(reinterpret_cast<__m256i*>(o + 8),
                         _mm256_permute2x128_si256(lo, hi, 0x31));
    }
  }
}

void prefetch_token(const int8_t* lat, const uint16_t* rope) {
  prefetch_bytes(lat, kLatentDim);
  prefetch_bytes(rope, kRopeDim * 2);
}

template <int G>
void run(const KernelArgs& a, Scratch& scratch) {
  constexpr int kTok = kTokTile<G>, kQkTok = kQkTokens<G>;
  const ItemRows ir(a);
  const CacheView& cache = *a.cache;
  const int rows = ir.rows;
  const int rows_pad = (rows + 7) & ~7;
  const int nrv = rows_pad / 8;
  const int64_t rs = lanes_row_stride(rows_pad);
  const int T = a.chunk * kKvTile;
  const int Tpad = (T + kTok - 1) / kTok * kTok;  // a multiple of G: kTok is
  const int64_t vblk = int64_t(Tpad / G) * 16;
  const int ntok_item = a.kv_end - a.kv_begin;
  const bool resident = a.up == UpForm::resident;
  const KvScale mode = cache.scale_mode();

  ScratchCarver sizer(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    ScratchCarver cv(pass ? static_cast<unsigned char*>(scratch.get(sizer.used())) : nullptr);
    uint32_t* q16 = cv.take<uint32_t>(size_t(kGroups<G>) * rs);
    int32_t* qsum = cv.take<int32_t>(rows_pad);
    float* qr = cv.take<float>(size_t(kRopeDim) * rs);
    float* qs = cv.take<float>(rows_pad);
    float* m = cv.take<float>(rows_pad);
    float* l = cv.take<float>(rows_pad);
    float* alpha = cv.take<float>(rows_pad);
    float* dq = cv.take<float>(rows_pad);
    float* ptop = cv.take<float>(rows_pad);
    int32_t* top = cv.take<int32_t>(rows_pad);
    int32_t* last = cv.take<int32_t>(rows_pad);
    float* s = cv.take<float>(size_t(Tpad) * rs);
    uint32_t* pp = cv.take<uint32_t>(size_t(Tpad / G) * rs);
    uint32_t* v16 = cv.take<uint32_t>(size_t(kLatentDim / 16) * vblk);
    float* go = cv.take<float>(size_t(rows) * kLatentDim);  // accumulator (resident) or lo
    int16_t* k16 = cv.take<int16_t>(size_t(kTok) * kLatentDim);  // G = 4: half used (u8)
    uint8_t* k8 = reinterpret_cast<uint8_t*>(k16);
    float* kr = cv.take<float>(size_t(kTok) * kRopeDim);
    int8_t* zero = cv.take<int8_t>(kLatentDim);
    uint16_t* zero_rope = cv.take<uint16_t>(kRopeDim);
    // The range's rows and token scales, then kTokTile zero rows (scale 0) for the last tail.
    const int npad = ntok_item + kTok;
    const int8_t** tok = cv.take<const int8_t*>(npad);
    const uint16_t** rope = cv.take<const uint16_t*>(npad);
    float* ks = cv.take<float>(npad);
    int64_t* slot = cv.take<int64_t>(ntok_item);
    if (pass == 0) {
      sizer = cv;
      continue;
    }

    std::memset(zero, 0, kLatentDim);
    std::memset(zero_rope, 0, kRopeDim * sizeof(uint16_t));
    step_slots(a, a.kv_begin, ntok_item, slot);
    for (int t = 0; t < ntok_item; ++t) {
      tok[t] = cache.latent_i8(slot[t]);
      rope[t] = cache.rope_bf16(slot[t]);
      ks[t] = mode == KvScale::token ? cache.token_scale(slot[t]) : 1.f;
    }
    std::fill(tok + ntok_item, tok + npad, zero);
    std::fill(rope + ntok_item, rope + npad, zero_rope);
    std::fill(ks + ntok_item, ks + npad, 0.f);
    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    for (int t = 0; t < std::min(ntok_item, kPrefetchDist); ++t) prefetch_token(tok[t], rope[t]);
    const float* cs = mode == KvScale::channel ? cache.channel_scales() : nullptr;
    const float tensor = mode == KvScale::tensor ? cache.tensor_scale() : 1.f;
    pack_queries<G>(ir, rows_pad, rs, cs, tensor, q16, qr, qs, qsum);
    for (int r = 0; r < rows_pad; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
      last[r] = ir.last(r);
    }
    for (int r = 0; r < rows; ++r)
      std::memset(resident ? go + size_t(r) * kLatentDim : ir.o(r), 0, kLatentDim * sizeof(float));

    const bool tok_mode = mode == KvScale::token;
    StageMarks marks(a.stages, rows);
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0), i0 = t0 - a.kv_begin;
      marks.step(step, n);
      const int ntok = (n + kTok - 1) / kTok * kTok;
      // QK_nope + QK_rope, one token tile at a time against every row.
      for (int t = 0; t < ntok; t += kTok) {
        for (int j = 0; j < kTok; ++j) {
          const int i = i0 + t + j;
          // The token kPrefetchDist ahead, one line per 64 channels staged: a burst of 10
          // prefetches a token stalls on the full miss buffers.
          const bool pf = i + kPrefetchDist < ntok_item;
          if (pf) prefetch_bytes(rope[i + kPrefetchDist], kRopeDim * 2);
          for (int c = 0; c < kLatentDim; c += 16) {
            if (pf && c % 64 == 0) prefetch_line(tok[i + kPrefetchDist] + c);
            const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(tok[i] + c));
            if constexpr (G == 2)
              _mm256_store_si256(reinterpret_cast<__m256i*>(k16 + j * kLatentDim + c),
                                 _mm256_cvtepi8_epi16(x));
            else  // k + 128 as u8
              _mm_store_si128(reinterpret_cast<__m128i*>(k8 + j * kLatentDim + c),
                              _mm_xor_si128(x, _mm_set1_epi8(char(0x80))));
          }
          for (int d = 0; d < kRopeDim; d += 8)
            _mm256_store_ps(kr + j * kRopeDim + d,
                            _mm256_castsi256_ps(_mm256_slli_epi32(
                                _mm256_cvtepu16_epi32(_mm_loadu_si128(
                                    reinterpret_cast<const __m128i*>(rope[i] + d))),
                                16)));
        }
        QkArgs qa{.q16 = q16, .qsum = qsum, .qr = qr, .rs = rs, .qs = qs, .k16 = k16, .kr = kr,
                  .ks = tok_mode ? ks + i0 + t : nullptr, .s = s + t * rs};
        int v = 0;
        for (; v + 2 <= nrv; v += 2) {
          QkArgs b = qa;
          b.q16 += 8 * v, b.qsum += 8 * v, b.qr += 8 * v, b.qs += 8 * v, b.s += 8 * v;
          for (int h = 0; h < kTok; h += kQkTok,
                   b.k16 = static_cast<const char*>(b.k16) + kQkTok * kLatentDim * 4 / G,
                   b.kr += kQkTok * kRopeDim, b.ks = b.ks ? b.ks + kQkTok : nullptr,
                   b.s += kQkTok * rs)
            qk_tile<G, 2, kQkTok>(b);
        }
        if (v < nrv) {
          QkArgs b = qa;
          b.q16 += 8 * v, b.qsum += 8 * v, b.qr += 8 * v, b.qs += 8 * v, b.s += 8 * v;
          qk_tile<G, 1, kTok>(b);
        }
      }
      marks.done(Stage::QK);  // S_nope (int32) and the rope part together, per token tile
      softmax_step<G>(SmArgs{.s = s, .rs = rs, .rows_pad = rows_pad, .n = n, .ntok = ntok, .t0 = t0,
                          .last = last, .c = a.p->softmax_scale * kLog2e,
                          .ks = tok_mode ? ks + i0 : nullptr, .tensor = tensor, .m = m, .l = l,
                          .alpha = alpha, .dq = dq, .ptop = ptop, .top = top, .pp = pp});
      marks.done(Stage::SM);
      // PV (+ UP); staging V into v16 counts as PV.
      const int npairs = (n + G - 1) / G;
      stage_values<G>(tok + i0, npairs, vblk, v16);
      const PvArgs pa{.pp = pp, .rs = rs, .npairs = npairs, .dq = dq, .ptop = ptop, .top = top,
                      .tok = tok + i0, .cs = cs, .go = go};
      if (resident) {
        pv_all<G, true>(rows, pa, v16, vblk, alpha);
        marks.done(Stage::PV);
      } else {
        pv_all<G, false>(rows, pa, v16, vblk, alpha);
        marks.done(Stage::PV);
        up_spill(ir, go, alpha);
      }
      marks.done(Stage::UP);  // resident: UP runs in PV's epilogue, timed there
    }
    finalize_rows<false>(ir, resident ? go : nullptr, m, l);
  }
}

}  // namespace
}  // namespace mla::cpu
