// The bf16- and fp8-cache attention kernel on AMX (docs/DESIGN.md §10): QK and P.V on tdpbf16ps
// (the tile unit), the softmax and the output update on AVX-512. Instantiated per cache format and
// per tile build (real instructions or their emulation, amx_tiles-inl.h) by the
// decode_{bf16,fp8}_avx512amx{,emu}.cc files.
//
// It shares the bf16-dot kernel's item plumbing (bf16dot_avx512-inl.h: the query pairs, the token
// walk, fp8 widened to bf16 per step, the softmax producing bf16 probability pairs with the rows in
// the lanes, the non-finite rule's token drop, the final write). Per step of T = chunk * 64 tokens:
//
//   stage  the step's tokens as contiguous A tiles: kt[16-token tile][18 k-steps][16][32 bf16]
//   QK     Sᵀ[tokens x rows] = K . Qᵀ for every row tile (2 token tiles x 2 row tiles of
//          accumulators), B = the query pairs repacked once per item as 1 KiB tiles; C is the
//          fp32 score, stored straight into s [T][rs] (rows in the lanes, as the softmax wants)
//   SM     softmax_step: masked maximum, p = 2^(s c - m), sums, P as bf16 pairs pp[t/2][rs]
//   PV     V interleaved by 2 tokens (tdpbf16ps's B layout, natural dim order) once per step;
//          per row tile P transposed to rows x tokens (A), C[16 rows x 16 dims] fp32
//   UP     resident: the accumulator go is C's own memory: each C tile is loaded from go, the
//          step's products added by the tile unit, and stored back; the vector units only scale
//          go by alpha in the steps where a row's maximum moved (alpha != 1). Spill: C to lo and
//          up_spill.

#pragma once

#include "cpu/attention/amx/amx_tiles-inl.h"
#include "cpu/attention/avx512/bf16dot_avx512-inl.h"

namespace mla::cpu {
namespace {

constexpr int64_t kBTile = 1024;             // bytes of one tile operand block (16 x 64)
constexpr int kQkSteps = kQkDim / 32;        // QK k-steps: 32 bf16 each (18)
constexpr int kDimTiles = kLatentDim / 16;   // P.V's output tiles per row (32)

struct Bf16AmxBufs {
  int T;
  int64_t rs;
  uint8_t* qt;   // [rows_pad/16][18][16 pairs][16 rows] u32: the query as B tiles
  uint8_t* kt;   // [T/16][18][16 tokens][32 bf16]: the step's keys as A tiles
  uint8_t* v2;   // [T/32][32 dim tiles][16 pairs][16 dims x 2 tokens]: V as B tiles
  uint8_t* pt;   // [2][T/32][16 rows][16 pairs]: one row tile's P as A tiles
  float* go;     // [rows_pad][512] the accumulator (resident)
  float* lo;     // [rows][512] the step's P.V (spill)
};

// The query pairs qp [288][rs] -> qt: tile (v, k) = pairs [16 k, 16 k + 16) of rows [16 v, ...).
void pack_q_tiles_bf16(const uint32_t* qp, int64_t rs, int rows_pad, uint8_t* qt) {
  for (int v = 0; v < rows_pad / 16; ++v)
    for (int kp = 0; kp < kPairs; ++kp)
      _mm512_store_si512(qt + (int64_t(v) * kQkSteps * 16 + kp) * 64,
                         _mm512_load_si512(qp + kp * rs + 16 * v));
}

// Tokens kptr[0 .. ntok) (zero rows past the step) as QK's A tiles, up to a multiple of 64.
void stage_keys(const uint16_t* const* kptr, int ntok, const uint16_t* zero, uint8_t* kt) {
  const int n64 = (ntok + 63) & ~63;
  for (int t = 0; t < n64; ++t) {
    const uint16_t* src = t < ntok ? kptr[t] : zero;
    uint8_t* dst = kt + (t / 16) * kQkSteps * kBTile + (t % 16) * 64;
    for (int k = 0; k < kQkSteps; ++k)
      _mm512_store_si512(dst + k * kBTile, _mm512_loadu_si512(src + 32 * k));
  }
}

// V (the latent of kptr[0 .. 2 npairs)) interleaved by 2 tokens into v2, zero up to kpairs pairs:
// pair j's dims [16 nb, 16 nb + 16) are row j % 16 of tile (j / 16, nb), as (v[2j][d], v[2j+1][d]).
void build_v2(const uint16_t* const* kptr, int npairs, int kpairs, uint8_t* v2) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2,  34, 3,  35, 4,  36, 5,
                                               37, 6, 38, 7, 39, 8,  40, 9,  41, 10, 42,
                                               11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i ilo = _mm512_load_si512(kLo);
  const __m512i ihi = _mm512_add_epi16(ilo, _mm512_set1_epi16(16));
  for (int j = 0; j < kpairs; ++j) {
    uint8_t* dst = v2 + (j / 16) * kDimTiles * kBTile + (j % 16) * 64;
    if (j >= npairs) {
      for (int nb = 0; nb < kDimTiles; ++nb)
        _mm512_store_si512(dst + nb * kBTile, _mm512_setzero_si512());
      continue;
    }
    const uint16_t* a = kptr[2 * j];
    const uint16_t* b = kptr[2 * j + 1];
    for (int d = 0; d < kLatentDim; d += 32) {
      const __m512i x = _mm512_loadu_si512(a + d), y = _mm512_loadu_si512(b + d);
      _mm512_store_si512(dst + (d / 16) * kBTile, _mm512_permutex2var_epi16(x, ilo, y));
      _mm512_store_si512(dst + (d / 16 + 1) * kBTile, _mm512_permutex2var_epi16(x, ihi, y));
    }
  }
}

// QK for row tile [r0, r0 + 16 RV) over the step's ntok tokens: s[t][r0 ..] (stride rs).
template <int RV>
void qk_bf16_amx(const Bf16AmxBufs& b, int r0, int ntok, float* s) {
  constexpr int NT = 4 / RV;
  const uint8_t* q = b.qt + (r0 / 16) * kQkSteps * kBTile;
  const int64_t cs = b.rs * 4;  // C row stride in s, bytes
  for (int t0 = 0; t0 < ntok; t0 += 16 * NT) {
    const uint8_t* k = b.kt + (t0 / 16) * kQkSteps * kBTile;
    amx::zero<0>(), amx::zero<1>(), amx::zero<2>(), amx::zero<3>();
    for (int kk = 0; kk < kQkSteps; ++kk) {
      const uint8_t* bq = q + kk * kBTile;
      const uint8_t* a = k + kk * kBTile;
      if constexpr (RV == 2) {
        amx::load<4>(a, 64), amx::load<5>(a + kQkSteps * kBTile, 64);
        amx::load<6>(bq, 64), amx::load<7>(bq + kQkSteps * kBTile, 64);
        amx::dpbf16<0, 4, 6>(), amx::dpbf16<1, 4, 7>(), amx::dpbf16<2, 5, 6>(), amx::dpbf16<3, 5, 7>();
      } else {
        amx::load<7>(bq, 64);
        amx::load<4>(a, 64), amx::dpbf16<0, 4, 7>();
        amx::load<5>(a + kQkSteps * kBTile, 64), amx::dpbf16<1, 5, 7>();
        amx::load<6>(a + 2 * kQkSteps * kBTile, 64), amx::dpbf16<2, 6, 7>();
        amx::load<4>(a + 3 * kQkSteps * kBTile, 64), amx::dpbf16<3, 4, 7>();
      }
    }
    // C tile c = nt * RV + v: tokens t0 + 16 nt.., rows r0 + 16 v..; tokens past ntok (the
    // last block of 4 tiles) are not stored.
    auto at = [&](int c) { return s + (t0 + 16 * (c / RV)) * b.rs + r0 + 16 * (c % RV); };
    amx::store<0>(at(0), cs);
    if (RV == 2 || t0 + 16 < ntok) amx::store<1>(at(1), cs);
    if (t0 + 16 * (2 / RV) < ntok) amx::store<2>(at(2), cs);
    if (t0 + 16 * (3 / RV) < ntok) amx::store<3>(at(3), cs);
  }
}

// pp [pairs][rs] u32 -> pt [RV][kpairs / 16][16 rows][16 pairs], zero past npairs.
template <int RV>
void transpose_p_bf16(const uint32_t* pp, int64_t rs, int r0, int npairs, int kpairs,
                      uint8_t* pt) {
  for (int v = 0; v < RV; ++v)
    for (int j0 = 0; j0 < kpairs; j0 += 16) {
      __m512i w[16];
      for (int j = 0; j < 16; ++j)
        w[j] = j0 + j < npairs ? _mm512_load_si512(pp + (j0 + j) * rs + r0 + 16 * v)
                               : _mm512_setzero_si512();
      transpose16x16_epi32(w);
      uint8_t* dst = pt + (int64_t(v) * (kpairs / 16) + j0 / 16) * kBTile;
      for (int e = 0; e < 16; ++e) _mm512_store_si512(dst + 64 * e, w[e]);
    }
}

// PV of row tile [r0, r0 + 16 RV): C tiles over 16-dim tiles, accumulated onto acc (resident:
// go, loaded into C and stored back) or from zero into lo (spill).
template <int RV, bool kResident>
void pv_bf16_amx(const Bf16AmxBufs& b, int r0, int kpairs, float* acc) {
  constexpr int ND = 4 / RV;  // dim tiles per pass
  const int K = kpairs / 16;
  constexpr int64_t gs = kLatentDim * 4;  // acc row stride, bytes
  float* base = acc + int64_t(r0) * kLatentDim;
  for (int d0 = 0; d0 < kLatentDim; d0 += 16 * ND) {
    auto at = [&](int c) { return base + (c / ND) * 16 * kLatentDim + d0 + 16 * (c % ND); };
    if constexpr (kResident) {
      amx::load<0>(at(0), gs), amx::load<1>(at(1), gs), amx::load<2>(at(2), gs), amx::load<3>(at(3), gs);
    } else {
      amx::zero<0>(), amx::zero<1>(), amx::zero<2>(), amx::zero<3>();
    }
    for (int kk = 0; kk < K; ++kk) {
      const uint8_t* v = b.v2 + (kk * kDimTiles + d0 / 16) * kBTile;
      const uint8_t* p = b.pt + kk * kBTile;
      if constexpr (RV == 2) {
        amx::load<4>(p, 64), amx::load<5>(p + K * kBTile, 64);
        amx::load<6>(v, 64), amx::load<7>(v + kBTile, 64);
        amx::dpbf16<0, 4, 6>(), amx::dpbf16<1, 4, 7>(), amx::dpbf16<2, 5, 6>(), amx::dpbf16<3, 5, 7>();
      } else {
        amx::load<4>(p, 64);
        amx::load<5>(v, 64), amx::dpbf16<0, 4, 5>();
        amx::load<6>(v + kBTile, 64), amx::dpbf16<1, 4, 6>();
        amx::load<7>(v + 2 * kBTile, 64), amx::dpbf16<2, 4, 7>();
        amx::load<5>(v + 3 * kBTile, 64), amx::dpbf16<3, 4, 5>();
      }
    }
    amx::store<0>(at(0), gs), amx::store<1>(at(1), gs), amx::store<2>(at(2), gs), amx::store<3>(at(3), gs);
  }
}

inline int bf16_amx_rv(int nrv, int v0) { return nrv - v0 >= 2 ? 2 : 1; }

template <KvDType KV>
void run_bf16_amx(const KernelArgs& a, Scratch& scratch) {
  constexpr bool kFp8 = KV == KvDType::fp8;
  const ItemRows ir(a);
  const int rows = ir.rows;
  const int rows_pad = (rows + 15) & ~15;
  const int nrv = rows_pad / 16;
  const int64_t rs = lanes_row_stride(rows_pad);
  const int T = a.chunk * kKvTile;
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
    uint16_t* zero = cv.take<uint16_t>(kQkDim);
    const uint16_t** kptr = cv.take<const uint16_t*>(T);
    uint16_t* conv = cv.take<uint16_t>(kFp8 ? size_t(T) * kQkDim : 0);
    Bf16AmxBufs b{.T = T,
                  .rs = rs,
                  .qt = cv.take<uint8_t>(size_t(rows_pad) * kQkDim * 2),
                  .kt = cv.take<uint8_t>(size_t(T) * kQkDim * 2),
                  .v2 = cv.take<uint8_t>(size_t(T) * kLatentDim * 2),
                  .pt = cv.take<uint8_t>(size_t(32) * T * 2),
                  .go = cv.take<float>(resident ? size_t(rows_pad) * kLatentDim : 0),
                  .lo = cv.take<float>(resident ? 0 : size_t(rows_pad) * kLatentDim)};
    if (pass == 0) {
      sizer = cv;
      continue;
    }

    const amx::Session tiles;  // this thread's tile configuration, released at the end
    pack_queries(ir, rows_pad, rs, qp);
    pack_q_tiles_bf16(qp, rs, rows_pad, b.qt);
    rows_state.init(ir, rows_pad);
    std::memset(zero, 0, kQkDim * sizeof(uint16_t));
    if (resident) std::memset(b.go, 0, size_t(rows_pad) * kLatentDim * sizeof(float));
    for (int r = 0; r < rows && !resident; ++r)
      std::memset(ir.o(r), 0, kLatentDim * sizeof(float));

    const float c = a.p->softmax_scale * kLog2e;
    StageMarks marks(a.stages, rows);
    for (int t0 = a.kv_begin, step = 0; t0 < a.kv_end; t0 += T, ++step) {
      const int n = std::min(T, a.kv_end - t0);
      marks.step(step, n);
      const int ntok = (n + kTokTile - 1) / kTokTile * kTokTile;
      if constexpr (kFp8)
        fp8_step_tokens(a, t0, n, ntok, zero, conv, kptr);
      else
        step_token_ptrs(a, t0, n, ntok, zero, kptr);
      stage_keys(kptr, ntok, zero, b.kt);
      for (int v0 = 0; v0 < nrv; v0 += bf16_amx_rv(nrv, v0)) {
        if (bf16_amx_rv(nrv, v0) == 2)
          qk_bf16_amx<2>(b, 16 * v0, ntok, s);
        else
          qk_bf16_amx<1>(b, 16 * v0, ntok, s);
      }
      marks.done(Stage::QK);
      if (softmax_step(s, rs, rows_pad, ntok, last, t0, c, m, l, alpha, pp))
        drop_nonfinite_tokens(kptr, n, zero, 0x7f80);
      marks.done(Stage::SM);
      const int npairs = ntok / 2, kpairs = (npairs + 15) & ~15;
      build_v2(kptr, npairs, kpairs, b.v2);
      // Resident: go *= alpha where a row's maximum moved (alpha is 1 elsewhere, 0 at the first
      // step of a row, whose go is 0).
      if (resident)
        for (int r = 0; r < rows; ++r) {
          if (alpha[r] == 1.f) continue;
          const __m512 al = _mm512_set1_ps(alpha[r]);
          float* g = b.go + int64_t(r) * kLatentDim;
          for (int d = 0; d < kLatentDim; d += 16)
            _mm512_store_ps(g + d, _mm512_mul_ps(_mm512_load_ps(g + d), al));
        }
      for (int v0 = 0; v0 < nrv; v0 += bf16_amx_rv(nrv, v0)) {
        const int rv = bf16_amx_rv(nrv, v0);
        if (rv == 2) {
          transpose_p_bf16<2>(pp, rs, 16 * v0, npairs, kpairs, b.pt);
          if (resident)
            pv_bf16_amx<2, true>(b, 16 * v0, kpairs, b.go);
          else
            pv_bf16_amx<2, false>(b, 16 * v0, kpairs, b.lo);
        } else {
          transpose_p_bf16<1>(pp, rs, 16 * v0, npairs, kpairs, b.pt);
          if (resident)
            pv_bf16_amx<1, true>(b, 16 * v0, kpairs, b.go);
          else
            pv_bf16_amx<1, false>(b, 16 * v0, kpairs, b.lo);
        }
      }
      marks.done(Stage::PV);
      if (!resident) up_spill(ir, b.lo, alpha);
      marks.done(Stage::UP);  // resident: UP is C's load and store around PV, timed there
    }
    finalize_rows(ir, resident ? b.go : nullptr, m, l);
  }
}

}  // namespace
}  // namespace mla::cpu
