// The one body of the bf16 and fp16 attention kernels for AVX2 + FMA + F16C CPUs, instantiated by
// decode_bf16_avx2.cc and decode_f16_avx2.cc with the format's widening to fp32 (bf16: a shift or
// a mask; fp16: vcvtph2ps). AVX2 has no bf16 or fp16 dot product, so every product of the decode
// (Q.K^T and P.V) is an fp32 FMA: the fp32 FMA rate is both formats' ceiling.
//
// Layouts (T = chunk * 64 tokens per step; rs = rows rounded up to 16, an odd number of cache
// lines apart, lanes_row_stride):
//
//   qf  [576][rs]  f32   queries, rows in lanes            widened and transposed once per item
//   kf  [6][576]   f32   one 6-token tile of keys          widened once per tile, for all rows
//   s   [T][rs]    f32   scores, rows in lanes             QK: s[t][r] += qf[d][r] * kf[t][d]
//                        -> probabilities in place         SM (masked max, exp2, sums)
//   v   cache rows       values, widened as PV loads them
//   go  [rows][512] f32  dims in lanes                     PV: go[r][d] += p[t][r] * v[t][d]
//
// With the rows in the lanes QK needs no key transpose and SM no horizontal reduction.
// Register tiles (16 ymm): QK 2 row vectors x 6 tokens (12 accumulators + 2 query registers +
// a broadcast key), 1 x 6 for an odd last row vector; PV 6 rows x 16 dims (12 accumulators, 2
// value registers, a broadcast p). Both hide the 4-cycle FMA latency at 2 FMAs a cycle.
#pragma once

#include <algorithm>
#include <cstring>
#include <utility>

#include "cpu/attention/avx2/avx2_common.h"

namespace mla::cpu::avx2 {
namespace {

constexpr int kFpTokTile = 6;  // tokens per QK tile (the key staging kf)
constexpr int kFpPvRows = 6;   // rows per PV register tile
// Software prefetch distance in tokens: each QK tile prefetches the tokens this far ahead in the
// item's range, so the whole range is fetched once, a step ahead of its use.
constexpr int kFpPrefetchDist = 64;

// ---- QK: s[t][r] for RV row vectors (8 rows each) x NT tokens ----------------------------------
template <int RV, int NT>
__attribute__((noinline)) void fp_qk_tile(const float* qf, int64_t rs, const float* kf,
                                          float* s) {
  __m256 acc[NT][RV];
#pragma GCC unroll 8
  for (int n = 0; n < NT; ++n)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) acc[n][v] = _mm256_setzero_ps();
  for (int d = 0; d < kQkDim; ++d) {
    __m256 q[RV];
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) q[v] = _mm256_load_ps(qf + d * rs + 8 * v);
#pragma GCC unroll 8
    for (int n = 0; n < NT; ++n) {
      const __m256 k = _mm256_broadcast_ss(kf + n * kQkDim + d);
#pragma GCC unroll 2
      for (int v = 0; v < RV; ++v) acc[n][v] = _mm256_fmadd_ps(q[v], k, acc[n][v]);
    }
  }
#pragma GCC unroll 8
  for (int n = 0; n < NT; ++n)
#pragma GCC unroll 2
    for (int v = 0; v < RV; ++v) _mm256_store_ps(s + n * rs + 8 * v, acc[n][v]);
}

// One token tile (kf) against row vectors [0, nrv).
inline void fp_qk_token_tile(const float* qf, int64_t rs, int nrv, const float* kf, float* s) {
  int v = 0;
  for (; v + 2 <= nrv; v += 2) fp_qk_tile<2, kFpTokTile>(qf + 8 * v, rs, kf, s + 8 * v);
  if (v < nrv) fp_qk_tile<1, kFpTokTile>(qf + 8 * v, rs, kf, s + 8 * v);
}

// ---- SM: scores of a step -> probabilities in place, running max and sum -----------------------
// Tokens [n, ntok) (the last QK tile's tail: the next step's tokens, or zero rows) are invisible.
// Returns whether any score of the step (visible or not) was NaN or Inf.
inline bool fp_softmax_step(float* s, int64_t rs, int rows_pad, int n, int ntok,
                            const int32_t* last, int t0, float c, float* m, float* l,
                            float* alpha) {
  const __m256 cv = _mm256_set1_ps(c);
  __m256 bad_any = _mm256_setzero_ps();
  for (int r0 = 0; r0 < rows_pad; r0 += 8) {
    const __m256i lim = _mm256_min_epi32(
        _mm256_sub_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(last + r0)),
                         _mm256_set1_epi32(t0)),
        _mm256_set1_epi32(n - 1));
    __m256 bad_vis, bad_lanes;
    const __m256 mx = rows8_masked_max(s + r0, rs, ntok, lim, cv, &bad_vis, &bad_lanes);
    bad_any = _mm256_or_ps(bad_any, bad_lanes);
    __m256 a;
    const __m256 m_use = rows8_advance_max(m + r0, mx, &a, bad_vis);
    __m256 sum0 = _mm256_setzero_ps(), sum1 = sum0;
    int t = 0;
    for (; t + 2 <= ntok; t += 2) {
      const __m256 p0 = rows8_prob(s + t * rs + r0, t, lim, cv, m_use);
      const __m256 p1 = rows8_prob(s + (t + 1) * rs + r0, t + 1, lim, cv, m_use);
      sum0 = _mm256_add_ps(sum0, p0);
      sum1 = _mm256_add_ps(sum1, p1);
      _mm256_store_ps(s + t * rs + r0, p0);
      _mm256_store_ps(s + (t + 1) * rs + r0, p1);
    }
    if (t < ntok) {
      const __m256 p0 = rows8_prob(s + t * rs + r0, t, lim, cv, m_use);
      sum0 = _mm256_add_ps(sum0, p0);
      _mm256_store_ps(s + t * rs + r0, p0);
    }
    _mm256_store_ps(l + r0,
                    _mm256_fmadd_ps(_mm256_load_ps(l + r0), a, _mm256_add_ps(sum0, sum1)));
    _mm256_store_ps(alpha + r0, a);
  }
  return _mm256_movemask_ps(bad_any) != 0;
}

// ---- PV (+ UP): R rows x 16 dims ---------------------------------------------------------------
// W::pv16 widens 16 values of a token's row into two vectors; for bf16 they hold the even and the
// odd dims (W::kPermuted), and go keeps that order until fp_finalize restores it.
template <class W, int R, bool kResident>
__attribute__((noinline)) void fp_pv_tile(const uint16_t* const* tok, int d0, const float* p,
                                          int64_t rs, int ntok, float* out, const float* alpha) {
  __m256 acc[R][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int t = 0; t < ntok; ++t) {
    __m256 v0, v1;
    W::pv16(tok[t] + d0, &v0, &v1);
    const float* pt = p + t * rs;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 pb = _mm256_broadcast_ss(pt + r);
      acc[r][0] = _mm256_fmadd_ps(v0, pb, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(v1, pb, acc[r][1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* o = out + r * kLatentDim;
    if constexpr (kResident) {
      const __m256 a = _mm256_broadcast_ss(alpha + r);
      _mm256_store_ps(o, _mm256_fmadd_ps(_mm256_load_ps(o), a, acc[r][0]));
      _mm256_store_ps(o + 8, _mm256_fmadd_ps(_mm256_load_ps(o + 8), a, acc[r][1]));
    } else {
      _mm256_store_ps(o, acc[r][0]);
      _mm256_store_ps(o + 8, acc[r][1]);
    }
  }
}

template <class W, bool kResident, int... I>
void fp_pv_rows(int R, const uint16_t* const* tok, int d0, const float* p, int64_t rs, int ntok,
                float* out, const float* alpha, std::integer_sequence<int, I...>) {
  using Fn = void (*)(const uint16_t* const*, int, const float*, int64_t, int, float*,
                      const float*);
  static constexpr Fn kFns[] = {&fp_pv_tile<W, I + 1, kResident>...};
  kFns[R - 1](tok, d0, p, rs, ntok, out, alpha);
}

// All rows x all dims. Row tiles are balanced (16 rows: 6 + 5 + 5, not 6 + 6 + 4) so that no tile
// is left with too few accumulators to hide the FMA latency.
template <class W, bool kResident>
void fp_pv_all(int rows, const uint16_t* const* tok, const float* p, int64_t rs, int ntok,
               float* acc, const float* alpha) {
  const int ntiles = (rows + kFpPvRows - 1) / kFpPvRows;
  int r0 = 0;
  for (int t = 0; t < ntiles; ++t) {
    const int r1 = int(int64_t(rows) * (t + 1) / ntiles);
    for (int d0 = 0; d0 < kLatentDim; d0 += 16)
      fp_pv_rows<W, kResident>(r1 - r0, tok, d0, p + r0, rs, ntok,
                               acc + int64_t(r0) * kLatentDim + d0, alpha + r0,
                               std::make_integer_sequence<int, kFpPvRows>{});
    r0 = r1;
  }
}

// ---- the item ----------------------------------------------------------------------------------

// qf[d][r] = query row r widened, rows in lanes; rows [rows, rows_pad) are zero.
template <class W>
void fp_pack_queries(const ItemRows& ir, int rows_pad, int64_t rs, float* qf) {
  alignas(32) float row[kQkDim];
  for (int r = 0; r < rows_pad; ++r) {
    if (r < ir.rows) {
      for (int d = 0; d < kQkDim; d += 8) _mm256_store_ps(row + d, W::widen8(ir.q(r) + d));
    } else {
      std::memset(row, 0, sizeof(row));
    }
    for (int d = 0; d < kQkDim; ++d) qf[d * rs + r] = row[d];
  }
}

template <class W>
void fp_run(const KernelArgs& a, Scratch& scratch) {
  const ItemRows ir(a);
  const int rows = ir.rows;
  const int rows_pad = (rows + 7) & ~7;
  const int nrv = rows_pad / 8;
  const int64_t rs = lanes_row_stride(rows_pad);
  const int T = a.chunk * kKvTile;
  const int Tpad = (T + kFpTokTile - 1) / kFpTokTile * kFpTokTile;
  const int ntok_item = a.kv_end - a.kv_begin;
  const bool resident = a.up == UpForm::resident;

  ScratchCarver sizer(nullptr);
  for (int pass = 0; pass < 2; ++pass) {
    ScratchCarver cv(pass ? static_cast<unsigned char*>(scratch.get(sizer.used())) : nullptr);
    float* qf = cv.take<float>(size_t(kQkDim) * rs);
    const RowState rows_state(cv, rows_pad);
    float *m = rows_state.m, *l = rows_state.l, *alpha = rows_state.alpha;
    int32_t* last = rows_state.last;
    float* s = cv.take<float>(size_t(Tpad) * rs);
    float* acc = cv.take<float>(size_t(rows) * kLatentDim);  // go (resident) or lo (spill)
    float* kf = cv.take<float>(size_t(kFpTokTile) * kQkDim);
    uint16_t* zero = cv.take<uint16_t>(kQkDim);
    // The range's token rows, then kFpTokTile zero rows for the last tile's tail.
    const uint16_t** tok = cv.take<const uint16_t*>(ntok_item + kFpTokTile);
    if (pass == 0) {
      sizer = cv;
      continue;
    }

    std::memset(zero, 0, kQkDim * sizeof(uint16_t));
    step_token_ptrs(a, a.kv_begin, ntok_item, ntok_item, nullptr, tok);
    std::fill(tok + ntok_item, tok + ntok_item + kFpTokTile, zero);
    // The first tokens, which no QK tile prefetches, start on their way while the queries are
    // packed.
    for (int t = 0; t < std::min(ntok_item, kFpPrefetchDist); ++t)
      prefetch_bytes(tok[t], kQkDim * 2);
    fp_pack_queries<W>(ir, rows_pad, rs, qf);
    rows_state.init(ir, rows_pad);
    for (int r = 0; r < rows; ++r)
      std::memset(resident ? acc + size_t(r) * kLatentDim : ir.o(r), 0, kLatentDim * sizeof(float));

    const float c = a.p->softmax_scale * kLog2e;
    StageMarks marks(a.stages, rows);
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0), i0 = t0 - a.kv_begin;
      marks.step(step, n);
      const int ntok = (n + kFpTokTile - 1) / kFpTokTile * kFpTokTile;
      const uint16_t** kp = tok + i0;
      for (int t = 0; t < ntok; t += kFpTokTile) {
        for (int j = 0; j < kFpTokTile; ++j) {
          // The token kFpPrefetchDist ahead, one line per 32 values widened: a burst of 18
          // prefetches a token stalls on the full miss buffers (measured at 16 rows).
          const int pf = i0 + t + j + kFpPrefetchDist;
          const uint16_t* pf_row = pf < ntok_item ? tok[pf] : nullptr;
          for (int d = 0; d < kQkDim; d += 8) {
            if (pf_row && d % 32 == 0) prefetch_line(pf_row + d);
            _mm256_store_ps(kf + j * kQkDim + d, W::widen8(kp[t + j] + d));
          }
        }
        fp_qk_token_tile(qf, rs, nrv, kf, s + t * rs);
      }
      marks.done(Stage::QK);
      if (fp_softmax_step(s, rs, rows_pad, n, ntok, last, t0, c, m, l, alpha))
        drop_nonfinite_tokens(kp, n, zero, W::kExpMask);
      marks.done(Stage::SM);
      if (resident) {
        fp_pv_all<W, true>(rows, kp, s, rs, n, acc, alpha);
        marks.done(Stage::PV);
      } else {
        fp_pv_all<W, false>(rows, kp, s, rs, n, acc, alpha);
        marks.done(Stage::PV);
        up_spill(ir, acc, alpha);
      }
      marks.done(Stage::UP);  // resident: UP (acc x alpha) runs inside PV's tiles, timed there
    }
    finalize_rows<W::kPermuted>(ir, resident ? acc : nullptr, m, l);
  }
}

}  // namespace
}  // namespace mla::cpu::avx2
