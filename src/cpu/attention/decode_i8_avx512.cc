// The int8-cache attention kernel for AVX-512 VNNI CPUs (DESIGN §3, §4, §7): S_nope and P.V run
// on vpdpbusd (u8 x s8 -> int32, 64 products per instruction), S_rope on vdpbf16ps. Its own file:
// one instantiation file per dtype and ISA.
//
// Rows (query token x head, r = i * nh + h) are held in the lanes of every vector, so the only
// operands that need a layout of their own are the query (packed once per work item) and V
// (repacked per step of T = chunk * 64 tokens):
//
//   qp  [128][Rp] u32     4 latent channels of a query row, as u8 (q8 + 128)     once per item
//   qr  [32][Rp]  u32     2 rope values of a query row, bf16                      once per item
//   K   cache             4 latent channels / 2 rope values of a token, broadcast straight from
//                         the cache (or from a staging copy for blocks of fewer than 16 tokens)
//   s   [T][RV][16] f32   scores of one row tile (RV vectors of 16 rows)
//   pp  [T/4][RV][16] u32 4 tokens' probabilities of a row, u8, quantized per row and step
//   vp  [T/4][512][4] s8  4 tokens' values of a latent channel                  repacked per step
//   go  [Rp/16][512][16] f32  output accumulator, rows in lanes (resident form)
//
// QK:  acc[t][rows] += qp[g][rows] . k[t][g]    (u8 query x s8 key; K is the broadcast operand,
//      which vpdpbusd needs signed, so the query carries the +128 and each token's accumulator
//      starts at -128 * sum_c k[t][c], computed during the V repack: the product is exact)
// SM:  running max down the token axis (no horizontal reductions), p = 2^(s * c - m), row sums,
//      P' = P * value scale quantized to u8 against each row's maximum within the step
// PV:  acc[d][rows] += pp[j][rows] . vp[j][d]   (u8 probabilities x s8 values, both exact)
// UP:  go[d][rows] = go * alpha[rows] + acc * dq[rows]  in the PV register epilogue (resident), or
//      lo -> scratch and a separate pass over the output rows (spill, the seed's old form).
//
// Per step, for each row tile: QK over the step's tokens -> SM -> PV with UP fused, so s and pp
// stay in L1 and only K, vp and go (L2) are shared by the row tiles.
//
// The V repack interleaves 4 tokens byte-wise with two in-lane unpacks per 64 values, which
// leaves the latent channels of each 64-channel group in a fixed permuted order:
//
//   position p = g*64 + i*16 + L*4 + j   holds channel   d = g*64 + L*16 + i*4 + j
//
// (i: which unpack output, L: 128-bit lane, j: 32-bit element). PV and go work in positions; the
// final write (and the spill form's UP) read positions back in channel order, so the permutation
// never shows outside this file and costs no shuffles in the repack.
//
// What the time goes to, besides the dot products (Zen 4, measured): vfmadd, vmulps, vcmpps and
// every 64-byte store take issue slots from vpdpbusd/vdpbf16ps (a store about 1.6), while loads,
// adds, max, converts, shuffles, roundscale and scalef do not. So the repack (512 bytes of stores
// per token) is what 16-row items pay most for; the next step's repack runs in slices between
// this step's PV tiles, which hides a little of it. The softmax uses an exp2 with 5 FMAs and
// rescales lazily (see softmax_rows), so most steps' UP is one FMA per accumulator.
//
// Register tiles (32 zmm): QK 2 row vectors x 8 tokens or 1 x 16, PV 2 x 12 positions or 1 x 24;
// the dot products are inline asm with the broadcast operand embedded ({1to16}), so GCC 12 keeps
// every accumulator in its register (checked with objdump -d: no zmm stack traffic in the k
// loops; the intrinsics version spilled them).
// GCC 12 also raises -Wuninitialized (not only -Wmaybe-uninitialized) on its own
// _mm512_undefined_* here (GCC bug 105593); like avx512_common.h's pragma, this must precede
// <immintrin.h>.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/attention/avx512_common.h"  // first: see the note there

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu/attention/kernel.h"
#include "cpu/attention/quantize.h"

namespace mla::cpu {
namespace {

using namespace avx512;

constexpr int kGroups = kLatentDim / 4;  // QK nope k-steps: 4 channels each
constexpr int kRopePairs = kRopeDim / 2; // QK rope k-steps: 2 bf16 each
constexpr int kVRowBytes = kLatentDim * 4;  // one 4-token group of repacked V
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kNegInf = -__builtin_inff();
constexpr float kLazyRescale = 8.f;  // log2 units: p up to 256 between rescales

// Blocks shorter than this are staged into a contiguous copy per step, so QK tiles stay long.
constexpr int kMinDirectBlock = 16;

// 32 bits at any address (the broadcast operands: 4 int8 or 2 bf16).
typedef int32_t i32_unaligned __attribute__((may_alias, aligned(1)));

// acc += a . broadcast(32 bits at p), as one instruction with an embedded broadcast. Written as
// inline asm because GCC 12 compiles the intrinsics' accumulator chains into register copies and
// stack stores inside the k loops (the tied "+v" operand keeps each accumulator in one register).
MLA_AVX512_INLINE void dpbusd_bcast(__m512i& acc, __m512i a, const void* p) {
  asm("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*static_cast<const i32_unaligned*>(p)));
}
MLA_AVX512_INLINE void dpbf16_bcast(__m512& acc, __m512i a, const void* p) {
  asm("vdpbf16ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*static_cast<const i32_unaligned*>(p)));
}

// Carves one scratch buffer into 64-byte aligned arrays (a first pass with a null base sizes it).
class Carver {
 public:
  explicit Carver(unsigned char* base) : base_(base) {}
  template <class T>
  T* take(size_t n) {
    T* p = reinterpret_cast<T*>(base_ + off_);
    off_ += (n * sizeof(T) + 63) & ~size_t(63);
    return p;
  }
  size_t used() const { return off_; }

 private:
  unsigned char* base_;
  size_t off_ = 0;
};

// 16 bf16 values widened to fp32.
MLA_AVX512_INLINE __m512 bf16x16_to_ps(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// Position of latent channel d in the repacked layout (see the header comment).
constexpr int position_of(int d) {
  return (d & ~63) + ((d >> 2) & 3) * 16 + ((d >> 4) & 3) * 4 + (d & 3);
}

// ---- QK: one tile of N tokens x RV row vectors ---------------------------------------------------

struct QkRows {
  const uint8_t* qp;   // [128][rs] u32 at the tile's first row
  const uint16_t* qr;  // [32][rs] u32 (bf16 pairs) at the tile's first row
  int64_t rs;          // row stride of qp / qr in u32 (Rp)
  const float* qs;     // [RV*16] query scale (tensor scale folded in)
  const int32_t* lim;  // [RV*16] last visible position
};

// s[t][v][16] = (S_nope * qs * ks[t] + S_rope) for tokens k (latent, 512 bytes apart) and kr
// (rope, 64 bf16 apart); positions past lim[] get -inf. mx[v] = max(mx[v], s[.][v]).
// kTok: per-token key scales ks (token mode), else 1.
template <int N, int RV, bool kTok>
__attribute__((noinline)) void qk_tile(const QkRows& q, const int8_t* k, const uint16_t* kr,
                                       const int32_t* ksum_neg, const float* ks, int pos0,
                                       bool mask, float* s, float* mx) {
  __m512i acc[N][RV];
#pragma GCC unroll 24
  for (int n = 0; n < N; ++n) {
    const __m512i init = _mm512_set1_epi32(ksum_neg[n]);  // -128 * sum_c k[n][c]
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[n][v] = init;
  }
  const uint8_t* qp = q.qp;
  const int64_t step = q.rs * 4;
  for (int g = 0; g < kGroups; ++g) {
    __m512i b[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) b[v] = _mm512_load_si512(qp + 64 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) dpbusd_bcast(acc[n][v], b[v], k + n * kLatentDim + 4 * g);
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
  for (int j = 0; j < kRopePairs; ++j) {
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
      if (mask) {
        const __mmask16 vis = _mm512_cmpge_epi32_mask(lim[v], _mm512_set1_epi32(pos0 + n));
        x = _mm512_mask_mov_ps(ninf, vis, x);
      }
      _mm512_store_ps(s + (n * RV + v) * 16, x);
      m[v] = _mm512_max_ps(m[v], x);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < RV; ++v) _mm512_store_ps(mx + 16 * v, m[v]);
}

using QkFn = void (*)(const QkRows&, const int8_t*, const uint16_t*, const int32_t*, const float*,
                      int, bool, float*, float*);

// Table of qk_tile<n, RV, kTok> for n = 1..N, so a tile cut short by a block boundary or the end
// of the range still runs in one call.
template <int RV, bool kTok, int... I>
constexpr auto qk_table(std::integer_sequence<int, I...>) {
  return std::array<QkFn, sizeof...(I)>{&qk_tile<I + 1, RV, kTok>...};
}

// ---- PV (+ UP): N positions x RV row vectors -------------------------------------------------

enum class Epi { first, rescale, add, spill };  // go = lo*dq | go*alpha + lo*dq | go + lo*dq | lo

struct PvArgs {
  const int8_t* vp;      // [T/4][512][4] repacked values
  const uint8_t* pp;     // [T/4][RV][16] u32 probabilities of the tile
  int groups;            // T/4 of this step
  const float* alpha;    // [RV*16]
  const float* dq;       // [RV*16] p-dequant (x tensor scale)
  const float* cs;       // [512] channel scales by position (channel mode)
  float* go;             // [RV][512][16] accumulator (resident) or int32 lo (spill)
};

template <int N, int RV, Epi E, bool kChan>
__attribute__((noinline)) void pv_tile(const PvArgs& a, int p0) {
  const int8_t* vp = a.vp + 4 * p0;
  const uint8_t* pp = a.pp;
  const int groups = a.groups;
  float* const go = a.go + p0 * 16;
  const float* const cs = a.cs + p0;
  __m512i acc[N][RV];
#pragma GCC unroll 24
  for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) acc[n][v] = _mm512_setzero_si512();
  for (int j = 0; j < groups; ++j) {
    __m512i b[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) b[v] = _mm512_load_si512(pp + 64 * v);
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) dpbusd_bcast(acc[n][v], b[v], vp + 4 * n);
    vp += kVRowBytes;
    pp += 64 * RV;
  }
  if constexpr (E == Epi::spill) {
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n)
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) _mm512_store_si512(go + (v * kLatentDim + n) * 16, acc[n][v]);
  } else {
    __m512 dq[RV], al[RV];
#pragma GCC unroll 4
    for (int v = 0; v < RV; ++v) {
      dq[v] = _mm512_load_ps(a.dq + 16 * v);
      al[v] = E == Epi::rescale ? _mm512_load_ps(a.alpha + 16 * v) : _mm512_setzero_ps();
    }
#pragma GCC unroll 24
    for (int n = 0; n < N; ++n) {
      const __m512 c = kChan ? _mm512_set1_ps(cs[n]) : _mm512_setzero_ps();
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        float* g = go + (v * kLatentDim + n) * 16;
        const __m512 d = kChan ? _mm512_mul_ps(dq[v], c) : dq[v];
        const __m512 lo = _mm512_cvtepi32_ps(acc[n][v]);
        __m512 r;
        if constexpr (E == Epi::first) r = _mm512_mul_ps(lo, d);
        if constexpr (E == Epi::rescale)
          r = _mm512_fmadd_ps(lo, d, _mm512_mul_ps(_mm512_load_ps(g), al[v]));
        if constexpr (E == Epi::add) r = _mm512_fmadd_ps(lo, d, _mm512_load_ps(g));
        _mm512_store_ps(g, r);
      }
    }
  }
}

// ---- the per-step V repack ----------------------------------------------------------------------

// vp[j][p][0..3] = the 4 tokens' values at position p (see the header), for 4 tokens k0..k3
// (512 bytes each); ksum_neg[0..3] = -128 * the tokens' sums of latent values.
MLA_AVX512_INLINE void repack4(const int8_t* const k[4], int8_t* vp, int32_t* ksum_neg) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 8
  for (int c = 0; c < kLatentDim; c += 64) {
    __m512i a = _mm512_loadu_si512(k[0] + c), b = _mm512_loadu_si512(k[1] + c);
    __m512i e = _mm512_loadu_si512(k[2] + c), d = _mm512_loadu_si512(k[3] + c);
    // One load per 64 bytes: without this GCC folds each load into all three of its users,
    // which triples the load traffic, the repack's bottleneck.
    asm("" : "+v"(a), "+v"(b), "+v"(e), "+v"(d));
    s0 = _mm512_dpbusd_epi32(s0, ones, a);
    s1 = _mm512_dpbusd_epi32(s1, ones, b);
    s2 = _mm512_dpbusd_epi32(s2, ones, e);
    s3 = _mm512_dpbusd_epi32(s3, ones, d);
    const __m512i ab_lo = _mm512_unpacklo_epi8(a, b), ab_hi = _mm512_unpackhi_epi8(a, b);
    const __m512i ed_lo = _mm512_unpacklo_epi8(e, d), ed_hi = _mm512_unpackhi_epi8(e, d);
    int8_t* out = vp + 4 * c;
    _mm512_store_si512(out, _mm512_unpacklo_epi16(ab_lo, ed_lo));
    _mm512_store_si512(out + 64, _mm512_unpackhi_epi16(ab_lo, ed_lo));
    _mm512_store_si512(out + 128, _mm512_unpacklo_epi16(ab_hi, ed_hi));
    _mm512_store_si512(out + 192, _mm512_unpackhi_epi16(ab_hi, ed_hi));
  }
  // Horizontal sums of the 4 accumulators at once: pairwise interleave-and-add.
  const __m512i t01 = _mm512_add_epi32(_mm512_unpacklo_epi32(s0, s1), _mm512_unpackhi_epi32(s0, s1));
  const __m512i t23 = _mm512_add_epi32(_mm512_unpacklo_epi32(s2, s3), _mm512_unpackhi_epi32(s2, s3));
  // Per 128-bit lane: (s0, s1, s0, s1) and (s2, s3, s2, s3) partial sums.
  const __m512i u = _mm512_add_epi32(_mm512_unpacklo_epi64(t01, t23), _mm512_unpackhi_epi64(t01, t23));
  // Per 128-bit lane: (s0, s1, s2, s3); add the four lanes.
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(u), _mm512_extracti64x4_epi64(u, 1));
  const __m128i q = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(ksum_neg), _mm_mullo_epi32(q, _mm_set1_epi32(-128)));
}

// ---- the kernel -----------------------------------------------------------------------------------

// Register tile shapes per count of row vectors RV (16 rows each): tokens per QK tile (a divisor
// of 64, so that QK tiles never straddle a block of 16, 64 or 128 tokens) and positions per PV
// tile. The rows are covered by tiles of kMainRV vectors and at most one of 1. Measured at 256 rows
// (same within noise unless noted): QK 2 x 12 (with 4-token tails per block), 2 x 8, 3 x 8, and
// 4 x 6 (-3 points); PV 2 x 12 and 3 x 8. The micro-kernels run at 0.98-0.99 of the vpdpbusd
// rate from L1/L2; what the item loses is outside them (SM, epilogues, repack).
template <int RV> struct Shape;
template <> struct Shape<1> { static constexpr int kQk = 16, kPv = 24; };
template <> struct Shape<2> { static constexpr int kQk = 8, kPv = 12; };
constexpr int kMainRV = 2;

// Quantizes the item's query rows and packs them (qp, qr), rows in lanes; rows >= R are zero.
// The rounding is quantize_query_row's (q * (127 / max|q|), to nearest even), vectorized, so the
// kernel computes with exactly kernel_query_values(). The tensor scale is folded into qs.
// 16 rows at a time: each row's 64 channels (16 groups of 4 bytes) go into one register, and a
// 16 x 16 transpose turns them into 16 group vectors with the rows in the lanes.
void pack_queries(const KernelArgs& a, int nh, int R, int Rp, bool negate, const float* cs,
                  float tensor, uint8_t* qp, uint16_t* qr, float* qs) {
  const DecodeParams& p = *a.p;
  uint32_t* qp32 = reinterpret_cast<uint32_t*>(qp);
  uint32_t* qr32 = reinterpret_cast<uint32_t*>(qr);
  alignas(64) static const uint16_t kZero[kQkDim] = {};
  for (int r0 = 0; r0 < Rp; r0 += 16) {
    const uint16_t* src[16];
    __m512 inv[16];
    for (int e = 0; e < 16; ++e) {
      const int r = r0 + e;
      if (r >= R) {
        src[e] = kZero;
        inv[e] = _mm512_setzero_ps();
        qs[r] = 0.f;
        continue;
      }
      const int i = r / nh, h = a.head_begin + r % nh;
      src[e] = a.q + ((int64_t(a.seq) * p.q_len + i) * p.num_heads + h) * kQkDim;
      __m512 mx = _mm512_setzero_ps();
      for (int c = 0; c < kLatentDim; c += 16) {
        __m512 x = bf16x16_to_ps(src[e] + c);
        if (cs) x = _mm512_mul_ps(x, _mm512_loadu_ps(cs + c));
        mx = _mm512_max_ps(mx, _mm512_abs_ps(x));
      }
      const float m = _mm512_reduce_max_ps(mx);
      const float iv = m > 0.f ? 127.f / m : 0.f;
      qs[r] = m / 127.f * tensor;
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
          b[j] = _mm512_cvtepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(y), _mm512_set1_epi32(128)));
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

// Everything one work item keeps across its steps.
struct Item {
  const KernelArgs* a;
  const PagedLatentCache* cache;
  int R, Rp, nh;
  bool tok, resident, staged;
  float c2;             // |softmax_scale| * log2(e)
  float tensor;         // tensor scale (1 in other modes)
  const float* cs;      // channel scales (channel mode) or nullptr
  const uint8_t* qp;
  const uint16_t* qr;
  const float* qs;
  const int32_t* lim;
  float *m, *l, *alpha, *dq;
  float* go;            // resident: [Rp/16][512][16] f32; spill: one row tile's lo
  const float* cs_pos;  // channel scales by position
  float* s;             // [T][RVmax][16]
  uint8_t* pp;          // [T/4][RVmax][16] u32
  const int8_t* zero;   // 512 zero bytes: the latent of tokens past the range
};

// One step's gathered tokens. Two of them alternate: the next step's V repack runs in slices
// between this step's PV tiles, so that its stores (the repack is bound by L1/L2 write traffic)
// overlap the dot products instead of adding to them.
struct StepBuf {
  int t0 = 0, n = 0, groups = 0;
  int repacked = 0;      // groups of 4 tokens repacked so far
  int8_t* vp;            // [T/4][512][4]
  int32_t* ksum_neg;     // [T] -128 * sum of the token's latent values
  float* ks;             // [T] token scales (token mode; 0 past the range)
  int64_t* slot;         // [T]
};

// The current step: its tokens, and the next step's (repacked during this one).
struct Step {
  int t0, n, groups;
  bool first;
  const int8_t* vp;
  const int32_t* ksum_neg;
  const float* ks;
  const int64_t* slot;
  const int8_t* kstage;   // staging copies (blocks shorter than kMinDirectBlock)
  const uint16_t* rstage;
  StepBuf* next;          // nullptr in the last step
};

// Slots and key scales of the tokens [t0, t0 + n); nothing is repacked yet.
void prepare(const Item& it, StepBuf& b, int t0, int n) {
  const KernelArgs& a = *it.a;
  const DecodeParams& p = *a.p;
  const PagedLatentCache& cache = *it.cache;
  const int bs = cache.block_size();
  const int32_t* table = p.block_table + int64_t(a.seq) * p.max_blocks_per_seq;
  b.t0 = t0;
  b.n = n;
  b.groups = (n + 3) / 4;
  b.repacked = 0;
  int blk = t0 / bs, off = t0 % bs;
  for (int t = 0; t < n; ++t) {
    b.slot[t] = int64_t(table[blk]) * bs + off;
    if (++off == bs) off = 0, ++blk;
  }
  if (it.tok) {
    for (int t = 0; t < n; ++t) b.ks[t] = cache.token_scale(b.slot[t]);
    for (int t = n; t < 4 * b.groups; ++t) b.ks[t] = 0.f;
  }
}

// Repacks groups [b.repacked, g_end) of 4 tokens; tokens past the range are zeros, never cache
// reads.
void repack_to(const Item& it, StepBuf& b, int g_end) {
  for (int j = b.repacked; j < g_end; ++j) {
    const int8_t* k4[4];
    for (int e = 0; e < 4; ++e) {
      const int t = 4 * j + e;
      k4[e] = t < b.n ? it.cache->latent_i8(b.slot[t]) : it.zero;
    }
    repack4(k4, b.vp + int64_t(j) * kVRowBytes, b.ksum_neg + 4 * j);
  }
  b.repacked = std::max(b.repacked, g_end);
}

template <int RV>
const std::array<QkFn, Shape<RV>::kQk>& qk_fns(bool tok) {
  static const auto t = qk_table<RV, true>(std::make_integer_sequence<int, Shape<RV>::kQk>{});
  static const auto f = qk_table<RV, false>(std::make_integer_sequence<int, Shape<RV>::kQk>{});
  return tok ? t : f;
}

// All 512 positions for one row tile; after each tile, the next slice of `next`'s repack.
template <int RV, Epi E, bool kChan>
void pv_rows(const PvArgs& a, const Item& it, StepBuf* next) {
  constexpr int N = Shape<RV>::kPv, kTail = kLatentDim % N;
  constexpr int kTiles = kLatentDim / N + (kTail > 0);
  int p0 = 0;
  for (int i = 0; p0 + N <= kLatentDim; p0 += N, ++i) {
    pv_tile<N, RV, E, kChan>(a, p0);
    if (next) repack_to(it, *next, (i + 1) * next->groups / kTiles);
  }
  if constexpr (kTail > 0) pv_tile<kTail, RV, E, kChan>(a, p0);
}

template <int RV, bool kChan>
void pv_dispatch(const PvArgs& a, Epi e, const Item& it, StepBuf* next) {
  switch (e) {
    case Epi::first: pv_rows<RV, Epi::first, kChan>(a, it, next); break;
    case Epi::rescale: pv_rows<RV, Epi::rescale, kChan>(a, it, next); break;
    case Epi::add: pv_rows<RV, Epi::add, kChan>(a, it, next); break;
    case Epi::spill: pv_rows<RV, Epi::spill, false>(a, it, next); break;
  }
}

// QK: the step's tokens against row vectors [v0, v0 + RV): s (masked) and the step maximum mx.
template <int RV>
void qk_rows(const Item& it, const Step& st, int v0, float* mx) {
  constexpr int N = Shape<RV>::kQk;
  const int r0 = 16 * v0;
  const int bs = it.cache->block_size();
  int lim_min = std::numeric_limits<int>::max(), lim_max = -1;
  for (int r = r0; r < r0 + 16 * RV; ++r) {
    lim_min = std::min(lim_min, it.lim[r]);
    lim_max = std::max(lim_max, it.lim[r]);
  }
  const QkRows rows{it.qp + 4 * r0, it.qr + 2 * r0, it.Rp, it.qs + r0, it.lim + r0};
  const auto& fns = qk_fns<RV>(it.tok);
  const PagedLatentCache& cache = *it.cache;
  // (No software prefetch of the next step's keys: measured, it costs more than it saves.)
  for (int t = 0; t < st.n;) {
    // A tile of up to N tokens, consecutive in one block of the cache (or in the staging copy).
    const int len = it.staged ? std::min(N, st.n - t)
                              : std::min({N, st.n - t, bs - (st.t0 + t) % bs});
    const int pos0 = st.t0 + t;
    float* s = it.s + int64_t(t) * 16 * RV;
    if (pos0 > lim_max) {  // invisible to every row of the tile
      std::fill_n(s, len * 16 * RV, kNegInf);
    } else {
      const int8_t* k = it.staged ? st.kstage + int64_t(t) * kLatentDim
                                  : cache.latent_i8(st.slot[t]);
      const uint16_t* kr = it.staged ? st.rstage + int64_t(t) * kRopeDim
                                     : cache.rope_bf16(st.slot[t]);
      fns[len - 1](rows, k, kr, st.ksum_neg + t, st.ks + t, pos0, pos0 + len - 1 > lim_min, s, mx);
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
  __m512 m_use[RV], pm[RV], inv[RV], sum[RV], mxs[RV];
  bool same_max = true;
  for (int v = 0; v < RV; ++v) {
    const int rv = r0 + 16 * v;
    const __m512 x = _mm512_load_ps(mx + 16 * v);
    mxs[v] = x;
    // The step maximum in the scaled domain (-inf stays -inf even when c2 = 0).
    const __mmask16 any = _mm512_cmp_ps_mask(x, _mm512_set1_ps(kNegInf), _CMP_NEQ_OQ);
    const __m512 m_old = _mm512_load_ps(it.m + rv);
    const __m512 cand = _mm512_max_ps(m_old, _mm512_mask_mul_ps(x, any, x, c2));
    // Lazy rescaling: the reference maximum m moves only when the step's exceeds it by more than
    // kLazyRescale (or when there was none), so most steps leave go and l as they are (UP adds
    // without the multiply). Meanwhile p = 2^(s - m) may reach 2^kLazyRescale; go, l and lse are
    // all relative to the same m, so the algebra is unchanged, and P is quantized against its
    // own step maximum anyway.
    const __mmask16 move = _mm512_cmp_ps_mask(
        cand, _mm512_add_ps(m_old, _mm512_set1_ps(kLazyRescale)), _CMP_GT_OQ);
    const __m512 m_new = _mm512_mask_mov_ps(m_old, move, cand);
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
    return exp2_fma5_ps(_mm512_fmsub_ps(_mm512_load_ps(s), c2, m_use[v]));
  };
  auto quant = [&](__m512 p, int v) {
    return _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(p, inv[v])), cap);
  };
  auto inverse = [](__m512 x) {  // 255 / x, 0 where x = 0
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_maskz_div_ps(pos, _mm512_set1_ps(255.f), x);
  };
  uint32_t* pp = reinterpret_cast<uint32_t*>(it.pp);
  if (it.tok) {
    // p' = p * vs[t] has its maximum anywhere: pass 1 computes p' (kept in s) and its maximum,
    // pass 2 quantizes.
    for (int v = 0; v < RV; ++v) pm[v] = _mm512_setzero_ps();
    for (int t = 0; t < 4 * st.groups; t += 2) {
      float* s = it.s + t * ss;
      const __m512 vs0 = _mm512_set1_ps(st.ks[t]), vs1 = _mm512_set1_ps(st.ks[t + 1]);
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        const __m512 p0 = prob(s + 16 * v, v), p1 = prob(s + ss + 16 * v, v);
        sum[v] = _mm512_add_ps(sum[v], _mm512_add_ps(p0, p1));
        const __m512 q0 = _mm512_mul_ps(p0, vs0), q1 = _mm512_mul_ps(p1, vs1);
        pm[v] = _mm512_max_ps(pm[v], _mm512_max_ps(q0, q1));
        _mm512_store_ps(s + 16 * v, q0);
        _mm512_store_ps(s + ss + 16 * v, q1);
      }
    }
    for (int v = 0; v < RV; ++v) inv[v] = inverse(pm[v]);
    for (int j = 0; j < st.groups; ++j) {
      const float* s = it.s + 4 * j * ss;
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        const __m512i w01 = _mm512_or_si512(quant(_mm512_load_ps(s + 16 * v), v),
                                            _mm512_slli_epi32(quant(_mm512_load_ps(s + ss + 16 * v), v), 8));
        const __m512i w23 = _mm512_or_si512(_mm512_slli_epi32(quant(_mm512_load_ps(s + 2 * ss + 16 * v), v), 16),
                                            _mm512_slli_epi32(quant(_mm512_load_ps(s + 3 * ss + 16 * v), v), 24));
        _mm512_store_si512(pp + (j * RV + v) * 16, _mm512_or_si512(w01, w23));
      }
    }
  } else {
    // p' = p: its maximum is the p of the largest score, known before the exp pass.
    for (int v = 0; v < RV; ++v) {
      pm[v] = exp2_fma5_ps(_mm512_fmsub_ps(mxs[v], c2, m_use[v]));
      inv[v] = inverse(pm[v]);
    }
    for (int j = 0; j < st.groups; ++j) {
      const float* s = it.s + 4 * j * ss;
#pragma GCC unroll 4
      for (int v = 0; v < RV; ++v) {
        const __m512 p0 = prob(s + 16 * v, v), p1 = prob(s + ss + 16 * v, v);
        const __m512 p2 = prob(s + 2 * ss + 16 * v, v), p3 = prob(s + 3 * ss + 16 * v, v);
        sum[v] = _mm512_add_ps(sum[v], _mm512_add_ps(_mm512_add_ps(p0, p1), _mm512_add_ps(p2, p3)));
        const __m512i w01 = _mm512_or_si512(quant(p0, v), _mm512_slli_epi32(quant(p1, v), 8));
        const __m512i w23 = _mm512_or_si512(_mm512_slli_epi32(quant(p2, v), 16),
                                            _mm512_slli_epi32(quant(p3, v), 24));
        _mm512_store_si512(pp + (j * RV + v) * 16, _mm512_or_si512(w01, w23));
      }
    }
  }
  const __m512 dq_scale = _mm512_set1_ps(it.tensor / 255.f);
  for (int v = 0; v < RV; ++v) {
    const int rv = r0 + 16 * v;
    const __m512 l = _mm512_load_ps(it.l + rv);
    _mm512_store_ps(it.l + rv, _mm512_fmadd_ps(l, _mm512_load_ps(it.alpha + rv), sum[v]));
    _mm512_store_ps(it.dq + rv, _mm512_mul_ps(pm[v], dq_scale));
  }
  return same_max;
}

// UP, the seed's old form: lo (int32, positions x rows) from scratch, the accumulator in the
// output rows, read and written back every step.
template <int RV>
void update_spill(const Item& it, const Step& st, int v0) {
  const KernelArgs& a = *it.a;
  const int32_t* lo = reinterpret_cast<const int32_t*>(it.go);
  for (int v = 0; v < RV; ++v) {
    const int rv = 16 * (v0 + v);
    for (int cb = 0; cb < kLatentDim; cb += 16) {
      __m512i x[16];
      for (int e = 0; e < 16; ++e)
        x[e] = _mm512_load_si512(lo + (v * kLatentDim + position_of(cb + e)) * 16);
      transpose16x16_epi32(x);
      const __m512 csv = it.cs ? _mm512_loadu_ps(it.cs + cb) : _mm512_set1_ps(1.f);
      for (int e = 0; e < 16 && rv + e < it.R; ++e) {
        const int r = rv + e;
        float* o = a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h + cb;
        const __m512 lov =
            _mm512_mul_ps(_mm512_cvtepi32_ps(x[e]), _mm512_mul_ps(csv, _mm512_set1_ps(it.dq[r])));
        _mm512_storeu_ps(o, st.first ? lov
                                     : _mm512_fmadd_ps(_mm512_loadu_ps(o),
                                                       _mm512_set1_ps(it.alpha[r]), lov));
      }
    }
  }
}

// One row tile through the step: QK -> SM -> PV (+ UP).
template <int RV>
void row_tile(const Item& it, const Step& st, int v0) {
  alignas(64) float mx[16 * RV];
  std::fill_n(mx, 16 * RV, kNegInf);
  qk_rows<RV>(it, st, v0, mx);
  const bool same_max = softmax_rows<RV>(it, st, v0, mx);
  const int r0 = 16 * v0;
  const PvArgs pa{st.vp, it.pp, st.groups, it.alpha + r0, it.dq + r0, it.cs_pos,
                  it.resident ? it.go + int64_t(v0) * kLatentDim * 16 : it.go};
  const Epi e = !it.resident ? Epi::spill
                : st.first   ? Epi::first
                : same_max   ? Epi::add
                             : Epi::rescale;
  // The next step's repack rides along with the first row tile's PV.
  StepBuf* next = v0 == 0 ? st.next : nullptr;
  if (it.cs)
    pv_dispatch<RV, true>(pa, e, it, next);
  else
    pv_dispatch<RV, false>(pa, e, it, next);
  if (!it.resident) update_spill<RV>(it, st, v0);
}

template <int RV>
void row_tile_any(const Item& it, const Step& st, int v0, int rv) {
  if constexpr (RV > 1) {
    if (rv < RV) return row_tile_any<RV - 1>(it, st, v0, rv);
  }
  row_tile<RV>(it, st, v0);
}

// Finalize: o = go / l, lse = ln2 * m + ln l; rows that saw no key: o = 0, lse = -inf.
void finalize(const Item& it) {
  const KernelArgs& a = *it.a;
  auto out_row = [&](int r) { return a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h; };
  for (int rv = 0; rv < it.Rp; rv += 16) {
    const __m512 lv = _mm512_load_ps(it.l + rv);
    const __mmask16 seen = _mm512_cmp_ps_mask(lv, _mm512_setzero_ps(), _CMP_GT_OQ);
    const __m512 inv = _mm512_maskz_div_ps(seen, _mm512_set1_ps(1.f), lv);
    for (int e = 0; e < 16 && rv + e < it.R; ++e) {
      const int r = rv + e;
      a.lse[(r / it.nh) * a.lse_stride_i + (r % it.nh) * a.lse_stride_h] =
          it.l[r] > 0.f ? it.m[r] * kLn2 + std::log(it.l[r]) : kNegInf;
    }
    if (it.resident) {
      const float* gv = it.go + int64_t(rv) * kLatentDim;
      for (int cb = 0; cb < kLatentDim; cb += 16) {
        __m512i x[16];
        for (int e = 0; e < 16; ++e)
          x[e] = _mm512_castps_si512(_mm512_mul_ps(_mm512_load_ps(gv + position_of(cb + e) * 16), inv));
        transpose16x16_epi32(x);
        for (int e = 0; e < 16 && rv + e < it.R; ++e)
          _mm512_storeu_ps(out_row(rv + e) + cb, _mm512_castsi512_ps(x[e]));
      }
    } else {
      alignas(64) float invs[16];
      _mm512_store_ps(invs, inv);
      for (int e = 0; e < 16 && rv + e < it.R; ++e) {
        float* o = out_row(rv + e);
        const __m512 iv = _mm512_set1_ps(invs[e]);
        for (int d = 0; d < kLatentDim; d += 16)
          _mm512_storeu_ps(o + d, _mm512_mul_ps(_mm512_loadu_ps(o + d), iv));
      }
    }
  }
}

void run(const KernelArgs& a, Scratch& scratch) {
  const DecodeParams& p = *a.p;
  const PagedLatentCache& cache = *a.cache;
  const int nh = a.head_end - a.head_begin;
  const int R = q_len_of(p, a.seq) * nh;
  const int Rp = (R + 15) & ~15;
  const int nrv = Rp / 16;
  const int T = a.chunk * kKvTile;
  const KvScale mode = cache.scale_mode();
  const bool resident = a.up == UpForm::resident;
  const bool staged = cache.block_size() < kMinDirectBlock;
  const int rv_max = std::min(nrv, kMainRV);

  Carver cv(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    if (pass) cv = Carver(static_cast<unsigned char*>(scratch.get(cv.used())));
    uint8_t* qp = cv.take<uint8_t>(size_t(kLatentDim) * Rp);
    uint16_t* qr = cv.take<uint16_t>(size_t(kRopeDim) * Rp);
    float* qs = cv.take<float>(Rp);
    int32_t* lim = cv.take<int32_t>(Rp);
    float* m = cv.take<float>(Rp);  // running max, in the base-2 scaled domain
    float* l = cv.take<float>(Rp);
    float* alpha = cv.take<float>(Rp);
    float* dq = cv.take<float>(Rp);
    float* go = cv.take<float>(size_t(kLatentDim) * (resident ? Rp : 16 * rv_max));
    StepBuf buf[2];
    for (StepBuf& b : buf) {
      b.vp = cv.take<int8_t>(size_t(T) * kLatentDim);
      b.ksum_neg = cv.take<int32_t>(T);
      b.ks = cv.take<float>(T);
      b.slot = cv.take<int64_t>(T);
    }
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
    pack_queries(a, nh, R, Rp, negate, cs, tensor, qp, qr, qs);
    if (cs)
      for (int d = 0; d < kLatentDim; ++d) cs_pos[position_of(d)] = cs[d];
    std::memset(zero, 0, kLatentDim);
    for (int r = 0; r < Rp; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
      // Padding rows see everything (their scores are 0, finite; their outputs are never written).
      lim[r] = r < R ? std::min(last_visible(p, a.seq, r / nh), a.kv_end - 1) : a.kv_end - 1;
    }
    const Item it{.a = &a, .cache = &cache, .R = R, .Rp = Rp, .nh = nh,
                  .tok = mode == KvScale::token, .resident = resident, .staged = staged,
                  .c2 = std::fabs(p.softmax_scale) * kLog2e, .tensor = tensor, .cs = cs,
                  .qp = qp, .qr = qr, .qs = qs, .lim = lim, .m = m, .l = l, .alpha = alpha,
                  .dq = dq, .go = go, .cs_pos = cs_pos, .s = s, .pp = pp, .zero = zero};

    prepare(it, buf[0], a.kv_begin, std::min(T, a.kv_end - a.kv_begin));
    repack_to(it, buf[0], buf[0].groups);
    for (int step = 0, t0 = a.kv_begin; t0 < a.kv_end; ++step, t0 += T) {
      StepBuf& cur = buf[step & 1];
      StepBuf* next = t0 + T < a.kv_end ? &buf[(step + 1) & 1] : nullptr;
      if (next) prepare(it, *next, t0 + T, std::min(T, a.kv_end - t0 - T));
      if (staged)
        for (int t = 0; t < cur.n; ++t) {
          std::memcpy(kstage + int64_t(t) * kLatentDim, cache.latent_i8(cur.slot[t]), kLatentDim);
          std::memcpy(rstage + int64_t(t) * kRopeDim, cache.rope_bf16(cur.slot[t]),
                      kRopeDim * sizeof(uint16_t));
        }
      const Step st{.t0 = t0, .n = cur.n, .groups = cur.groups, .first = step == 0, .vp = cur.vp,
                    .ksum_neg = cur.ksum_neg, .ks = cur.ks, .slot = cur.slot, .kstage = kstage,
                    .rstage = rstage, .next = next};
      for (int v0 = 0; v0 < nrv;) {
        const int rv = std::min(kMainRV, nrv - v0);
        row_tile_any<kMainRV>(it, st, v0, rv);
        v0 += rv;
      }
      if (next) repack_to(it, *next, next->groups);
    }
    finalize(it);
  }
}

bool supported() {
  return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512bf16");
}

}  // namespace

extern const KernelInfo kDecodeI8Avx512Vnni{.name = "decode_i8_avx512vnni", .kv = KvDType::int8,
                                            .portable = false, .supported = supported,
                                            .run = run};

}  // namespace mla::cpu
