// The fp16 attention kernel for AVX-512 CPUs: fp16 cache and fp16 query, widened to fp32 with
// vcvtph2ps and multiplied with fp32 FMA (x86 before AVX512-FP16 has no fp16 dot product). Its own
// file: one instantiation file per dtype and ISA.
//
// Layouts (T = chunk * 64 tokens per step; rs = rows rounded up to 16, plus 16 when that is an
// even number of cache lines):
//
//   qf  [576][rs]  f32   queries, rows in lanes           widened and transposed once per item
//   kf  [16][576]  f32   one 16-token tile of keys        widened per tile (tail: zeros)
//   s   [T][rs]    f32   scores, rows in lanes            QK: s[t][r] += qf[d][r] * kf[t][d]
//                        -> probabilities in place        SM
//   v   cache rows       values, widened as PV loads them
//   go  [rows][512] f32  dims in lanes                    PV: go[r][d] += p[t][r] * v[t][d]
//
// QK broadcasts fp32 keys from kf (vfmadd231ps with a {1to16} memory operand; fp16 has no
// broadcast-and-widen), each key widened once per step for all row tiles; PV widens V with
// vcvtph2ps memory operands, free beside the FMAs; p is broadcast straight from s. With the rows
// in the lanes SM needs no horizontal reduction. Measured on Zen 4 (k 4096, chunk 4, one core):
// 0.90-0.93 of the fp32-FMA peak at 256 rows, 0.78-0.85 at 16 rows.
//
// Register tiles as in the bf16 kernel: QK 3 row vectors x 8 tokens (24 accumulators), PV up to
// 6 rows x 64 dims (24 accumulators + 4 value registers).
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own _mm512_undefined_* trip -Wmaybe-uninitialized where they are inlined (GCC bug
// 105593); the pragma has to precede <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cstring>

#include "cpu/attention/avx512/avx512_common.h"
#include "cpu/attention/kernel.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

using namespace avx512;

constexpr int kTokTile = 16;  // tokens per QK tile loop
constexpr int kPvDims = 64;   // dims per PV register tile (4 zmm)
constexpr int kPvRows = 6;    // rows per PV register tile

// Software prefetch distance in tokens (avx512_common.h).
constexpr int kPrefetchDist = 64;

// ---- QK: s[t][r] for RV row vectors (16 rows each) x NT tokens ---------------------------------
// qf at the tile's first row in [576][rs]; k at the first token in [T][576]; s at [t0][r0].
template <int RV, int NT>
MLA_AVX512_INLINE void qk_tile(const float* qf, int64_t rs, const float* k, float* s) {
  __m512 acc[NT][RV];
  for (int j = 0; j < NT; ++j)
    for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_setzero_ps();
  for (int d = 0; d < kQkDim; ++d) {
    __m512 q[RV];
    for (int v = 0; v < RV; ++v) q[v] = _mm512_load_ps(qf + d * rs + 16 * v);
    for (int j = 0; j < NT; ++j) {
      const __m512 kb = _mm512_set1_ps(k[j * kQkDim + d]);
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_fmadd_ps(q[v], kb, acc[j][v]);
    }
  }
  for (int j = 0; j < NT; ++j)
    for (int v = 0; v < RV; ++v) _mm512_store_ps(s + j * rs + 16 * v, acc[j][v]);
}

void qk_token_tile(const float* qf, int64_t rs, int nrv, const float* k, float* s) {
  int v = 0;
  for (; v + 3 <= nrv; v += 3) {
    qk_tile<3, 8>(qf + 16 * v, rs, k, s + 16 * v);
    qk_tile<3, 8>(qf + 16 * v, rs, k + 8 * kQkDim, s + 8 * rs + 16 * v);
  }
  if (nrv - v == 2) {
    qk_tile<2, 8>(qf + 16 * v, rs, k, s + 16 * v);
    qk_tile<2, 8>(qf + 16 * v, rs, k + 8 * kQkDim, s + 8 * rs + 16 * v);
  } else if (nrv - v == 1) {
    qk_tile<1, 16>(qf + 16 * v, rs, k, s + 16 * v);
  }
}

// ---- PV (+ UP): R rows x 64 dims ---------------------------------------------------------------
// V is widened as the tile loads it, straight from the tokens' fp16 cache rows (vcvtph2ps with a
// memory operand: measured free beside 24 FMAs per token at 6 rows). p at the tile's first row in
// [T][rs]; acc at [r0][d0] in [rows][512]. Resident: go = go * alpha + lo in the register
// epilogue; spill: acc gets lo.
// pf: npf tokens of the next step whose lines at d0 (and, for d0 < 128, rope line d0 / 64) the
// tile prefetches, one token per 2 of the step (pv_all spreads them over its tiles).
template <int R, bool kResident>
MLA_AVX512_INLINE void pv_tile(const uint16_t* const* kptr, int d0, const float* p, int64_t rs,
                               int ntok, float* acc_out, const float* alpha,
                               const uint16_t* const* pf, int npf) {
  constexpr int ND = kPvDims / 16;
  __m512 acc[R][ND];
  for (int r = 0; r < R; ++r)
    for (int d = 0; d < ND; ++d) acc[r][d] = _mm512_setzero_ps();
  for (int t = 0; t < ntok; ++t) {
    if (!(t & 1) && t / 2 < npf) {
      const uint16_t* f = pf[t / 2];
      prefetch_line(f + d0);
      prefetch_line(f + d0 + 32);
      if (d0 < 2 * kRopeDim) prefetch_line(f + kLatentDim + d0 / 2);
    }
    const uint16_t* v = kptr[t] + d0;
    __m512 vv[ND];
    for (int d = 0; d < ND; ++d)
      vv[d] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + 16 * d)));
    for (int r = 0; r < R; ++r) {
      const __m512 pb = _mm512_set1_ps(p[t * rs + r]);
      for (int d = 0; d < ND; ++d) acc[r][d] = _mm512_fmadd_ps(vv[d], pb, acc[r][d]);
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
void pv_rows(int R, const uint16_t* const* kptr, int d0, const float* p, int64_t rs, int ntok,
             float* acc, const float* alpha, const uint16_t* const* pf, int npf) {
  switch (R) {
    case 1:
      pv_tile<1, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
    case 2:
      pv_tile<2, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
    case 3:
      pv_tile<3, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
    case 4:
      pv_tile<4, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
    case 5:
      pv_tile<5, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
    default:
      pv_tile<6, kResident>(kptr, d0, p, rs, ntok, acc, alpha, pf, npf);
      break;
  }
}

// All rows x all dims, in balanced row tiles (16 rows: 6 + 5 + 5). The npf tokens at pf (of the
// next step) are prefetched spread over the row tiles, each tile a share of them.
template <bool kResident>
void pv_all(int rows, const uint16_t* const* kptr, const float* p, int64_t rs, int ntok, float* acc,
            const float* alpha, const uint16_t* const* pf, int npf) {
  const int ntiles = (rows + kPvRows - 1) / kPvRows;
  int r0 = 0;
  for (int t = 0; t < ntiles; ++t) {
    const int r1 = int(int64_t(rows) * (t + 1) / ntiles);
    const int f0 = int(int64_t(npf) * t / ntiles), f1 = int(int64_t(npf) * (t + 1) / ntiles);
    for (int d0 = 0; d0 < kLatentDim; d0 += kPvDims)
      pv_rows<kResident>(r1 - r0, kptr, d0, p + r0, rs, ntok, acc + int64_t(r0) * kLatentDim + d0,
                         alpha + r0, pf + f0, f1 - f0);
    r0 = r1;
  }
}

// ---- conversions -------------------------------------------------------------------------------

// qf[d][r] = query row r, dim d, widened; rows >= rows are zero.
void pack_queries(const ItemRows& ir, int rows_pad, int64_t rs, float* qf) {
  for (int r0 = 0; r0 < rows_pad; r0 += 16) {
    for (int d0 = 0; d0 < kQkDim; d0 += 16) {
      __m512i m[16];
      for (int j = 0; j < 16; ++j)
        m[j] = r0 + j < ir.rows ? _mm512_castps_si512(_mm512_cvtph_ps(_mm256_loadu_si256(
                                      reinterpret_cast<const __m256i*>(ir.q(r0 + j) + d0))))
                                : _mm512_setzero_si512();
      transpose16x16_epi32(m);
      for (int j = 0; j < 16; ++j) _mm512_store_si512(qf + (d0 + j) * rs + r0, m[j]);
    }
  }
}

// kf[t] = key t widened to fp32, for the n tokens of one QK tile; the first npf tokens' rows at
// pf are prefetched meanwhile, one line per 32 values widened.
void widen_keys(const uint16_t* const* kptr, int ntok, float* kf, const uint16_t* const* pf,
                int npf) {
  for (int t = 0; t < ntok; ++t) {
    const uint16_t* src = kptr[t];
    const uint16_t* ahead = t < npf ? pf[t] : nullptr;
    float* dst = kf + int64_t(t) * kQkDim;
    for (int d = 0; d < kQkDim; d += 32) {
      if (ahead) prefetch_line(ahead + d);
      _mm512_store_ps(
          dst + d, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + d))));
      _mm512_store_ps(dst + d + 16, _mm512_cvtph_ps(_mm256_loadu_si256(
                                        reinterpret_cast<const __m256i*>(src + d + 16))));
    }
  }
}

// ---- SM: scores -> fp32 probabilities in place, running max and sum -----------------------------
// Returns whether any score of the step (visible or not) was NaN or Inf.
bool softmax_step(float* s, int64_t rs, int rows_pad, int ntok, const int32_t* last, int t0,
                  float c, float* m, float* l, float* alpha) {
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
      float* s0 = s + t * rs + r0;
      float* s1 = s0 + rs;
      const __m512 p0 = rows16_prob(s0, t, lim, cv, m_use);
      const __m512 p1 = rows16_prob(s1, t + 1, lim, cv, m_use);
      sum0 = _mm512_add_ps(sum0, p0);
      sum1 = _mm512_add_ps(sum1, p1);
      _mm512_store_ps(s0, p0);
      _mm512_store_ps(s1, p1);
    }
    _mm512_store_ps(l + r0, _mm512_fmadd_ps(_mm512_load_ps(l + r0), a, _mm512_add_ps(sum0, sum1)));
    _mm512_store_ps(alpha + r0, a);
  }
  return bad_any != 0;
}

// ---- the kernel ---------------------------------------------------------------------------------

void run(const KernelArgs& a, Scratch& scratch) {
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
    float* qf = cv.take<float>(size_t(kQkDim) * rs);
    const RowState rows_state(cv, rows_pad);
    float *m = rows_state.m, *l = rows_state.l, *alpha = rows_state.alpha;
    int32_t* last = rows_state.last;
    float* s = cv.take<float>(size_t(T) * rs);
    float* kf = cv.take<float>(size_t(kTokTile) * kQkDim);
    float* acc = cv.take<float>(size_t(rows) * kLatentDim);  // go (resident) or lo (spill)
    uint16_t* zero = cv.take<uint16_t>(kQkDim);
    const uint16_t** kptr = cv.take<const uint16_t*>(T);
    const uint16_t** pfptr = cv.take<const uint16_t*>(std::max(T, kPrefetchDist));
    if (pass == 0) {
      sizer = cv;
      continue;
    }

    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    prefetch_rows16(pfptr, token_ptrs_clipped(a, a.kv_begin, kPrefetchDist, pfptr));
    pack_queries(ir, rows_pad, rs, qf);
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
      step_token_ptrs(a, t0, n, ntok, zero, kptr);
      // What the step's QK tiles prefetch: the step's positions from pf_from on, pf_from after
      // their own (those before were prefetched at the start or by the previous step's PV).
      const int pf_from = t0 == a.kv_begin ? kPrefetchDist : T / 2;
      const int npf = token_ptrs_clipped(a, t0 + pf_from, std::max(0, n - pf_from), pfptr);
      // QK one tile of keys at a time, widened into a buffer that stays in L1/L2 (widening the
      // whole step at once wrote 590 KB per step at chunk 4 and cost about 15% at 16 rows).
      for (int t = 0; t < ntok; t += kTokTile) {
        widen_keys(kptr + t, kTokTile, kf, pfptr + t, std::clamp(npf - t, 0, kTokTile));
        qk_token_tile(qf, rs, nrv, kf, s + t * rs);
      }
      marks.done(Stage::QK);
      if (softmax_step(s, rs, rows_pad, ntok, last, t0, c, m, l, alpha))
        drop_nonfinite_tokens(kptr, n, zero, 0x7c00);
      marks.done(Stage::SM);
      // PV prefetches the next step's first T / 2 positions (pfptr is free again after QK).
      const int npv = token_ptrs_clipped(a, t0 + n, T / 2, pfptr);
      if (resident) {
        pv_all<true>(rows, kptr, s, rs, n, acc, alpha, pfptr, npv);
        marks.done(Stage::PV);
      } else {
        pv_all<false>(rows, kptr, s, rs, n, acc, alpha, pfptr, npv);
        marks.done(Stage::PV);
        up_spill(ir, acc, alpha);
      }
      marks.done(Stage::UP);  // resident: UP (acc x alpha) runs inside PV's tiles, timed there
    }
    finalize_rows(ir, resident ? acc : nullptr, m, l);
  }
}

}  // namespace

extern const KernelInfo decode_f16_avx512f{.name = "decode_f16_avx512f",
                                         .kv = KvDType::fp16,
                                         .portable = false,
                                         .isa = Isa::avx512,
                                         .supported = cpu_has_avx512f_set,
                                         .run = run,
                                         .stages = item_stages};

}  // namespace mla::cpu
