// PV and UP of the int8 AVX-512 VNNI kernel (decode_i8_avx512vnni.cc): the register tiles of rows x
// 64 channels with their epilogues, and the spill form's separate UP pass. Include it only from
// that file.

#pragma once

#include "cpu/attention/avx512/i8_common_avx512-inl.h"

namespace mla::cpu {
namespace {

// ---- PV (+ UP): RT rows x 64 channels -----------------------------------------------------------

enum class Epi { first, rescale, add, spill };  // go = lo*dq | go*alpha + lo*dq | go + lo*dq | lo

struct PvArgs {
  const int8_t* const* tok;  // [4 * groups] the tokens' latent rows (a zero row past the range)
  const uint32_t* pp;        // [groups][ps] 4 tokens' u8 probabilities, at the tile's first row
                             // (of the block's scale group; pv_rows picks it)
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
  // Scale groups (group modes): gsz channels each (0 outside the group modes); the next group's
  // pp at + pp_group, its dq / ptop / top at + gstride.
  int gsz;
  int64_t pp_group, gstride;
};

// kSplit (group32): the block's channels [d0, d0 + 32) are one scale group, [d0 + 32, d0 + 64) the
// next; they sit in 128-bit lanes 0-1 and 2-3 of every vector (the interleave stays within
// lanes), so the second group's P, dq, ptop and top token go to the upper 8 lanes (mask 0xff00).
template <int RT, Epi E, bool kChan, bool kSplit>
__attribute__((noinline)) void pv_tile(const PvArgs& a, int d0) {
  constexpr __mmask16 kHi = 0xff00;
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
      __m512i p =
          _mm512_set1_epi32(static_cast<const i32_unaligned*>(static_cast<const void*>(pp))[r]);
      if constexpr (kSplit)
        p = _mm512_mask_set1_epi32(
            p, kHi,
            static_cast<const i32_unaligned*>(static_cast<const void*>(pp + a.pp_group))[r]);
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
      __m512 dq = _mm512_set1_ps(a.dq[r]);
      if constexpr (kSplit) dq = _mm512_mask_mov_ps(dq, kHi, _mm512_set1_ps(a.dq[r + a.gstride]));
      const __m512 al = E == Epi::rescale ? _mm512_set1_ps(a.alpha[r]) : dq;
      // The top token, applied exactly: its 64 channels interleaved like V above (each byte in
      // the top of its 32-bit lane, so 2^24 times its value; ptop carries the 2^-24).
      __m512 pt = _mm512_set1_ps(a.ptop[r] * 0x1p-24f);
      const __m512i zero = _mm512_setzero_si512();
      __m512i xt = _mm512_loadu_si512(a.tok[a.top[r]] + d0);
      if constexpr (kSplit) {
        pt = _mm512_mask_mov_ps(pt, kHi, _mm512_set1_ps(a.ptop[r + a.gstride] * 0x1p-24f));
        xt = _mm512_mask_mov_epi32(xt, kHi, _mm512_loadu_si512(a.tok[a.top[r + a.gstride]] + d0));
      }
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
// Group modes: each block reads its scale group's P, dq, ptop and top (kSplit: two groups).
template <Epi E, bool kChan, bool kSplit, int... I>
void pv_rows_impl(const PvArgs& a, int rows, std::integer_sequence<int, I...>) {
  using Fn = void (*)(const PvArgs&, int);
  static constexpr Fn kTail[] = {&pv_tile<I + 1, E, kChan, kSplit>...};  // 1..kPvRows rows
  for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
    PvArgs t = a;
    const int g = a.gsz ? d0 / a.gsz : 0;
    for (int r = 0; r < rows; r += kPvRows) {
      const int n = std::min(kPvRows, rows - r);
      t.pp = a.pp + g * a.pp_group + r;
      t.alpha = a.alpha + r;
      t.dq = a.dq + g * a.gstride + r;
      t.ptop = a.ptop + g * a.gstride + r;
      t.top = a.top + g * a.gstride + r;
      t.go = a.go + int64_t(r) * kLatentDim;
      t.pf_n = r == 0 ? a.pf_n : 0;
      if (n == kPvRows)
        pv_tile<kPvRows, E, kChan, kSplit>(t, d0);
      else
        kTail[n - 1](t, d0);
    }
  }
}

template <bool kChan, bool kSplit>
void pv_rows(const PvArgs& a, int rows, Epi e) {
  constexpr auto seq = std::make_integer_sequence<int, kPvRows>{};
  switch (e) {
    case Epi::first:
      pv_rows_impl<Epi::first, kChan, kSplit>(a, rows, seq);
      break;
    case Epi::rescale:
      pv_rows_impl<Epi::rescale, kChan, kSplit>(a, rows, seq);
      break;
    case Epi::add:
      pv_rows_impl<Epi::add, kChan, kSplit>(a, rows, seq);
      break;
    case Epi::spill:
      pv_rows_impl<Epi::spill, false, kSplit>(a, rows, seq);
      break;
  }
}

// UP, the seed's old form: lo (int32, rows x positions) from scratch, the accumulator in the
// output rows, read and written back every step.
void update_spill(const Item& it, const Step& st, int r0, int rows) {
  const KernelArgs& a = *it.a;
  const int32_t* lo = reinterpret_cast<const int32_t*>(it.go);
  for (int e = 0; e < rows; ++e) {
    const int r = r0 + e;
    float* o = a.o + (r / it.nh) * a.o_stride_i + (r % it.nh) * a.o_stride_h;
    const __m512 al = _mm512_set1_ps(it.alpha[r]);
    for (int d0 = 0; d0 < kLatentDim; d0 += 64) {
      __m512 x[4];
      for (int i = 0; i < 4; ++i)
        x[i] = _mm512_cvtepi32_ps(_mm512_load_si512(lo + e * kLatentDim + d0 + 16 * i));
      positions_to_channels(x);
      for (int i = 0; i < 4; ++i) {
        // The 16 channels' scale group (group modes; else the one "group" 0).
        const int64_t gr = (it.gsz ? (d0 + 16 * i) / it.gsz : 0) * int64_t(it.Rp) + r;
        const __m512 dq = _mm512_set1_ps(it.dq[gr]), pt = _mm512_set1_ps(it.ptop[gr]);
        const int8_t* vt = st.tok[it.top[gr]];  // the top token, applied exactly
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


}  // namespace
}  // namespace mla::cpu
