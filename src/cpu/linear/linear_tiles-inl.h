// The projection kernel on the AMX tile unit (linear.h, DESIGN §10), one body for the real
// instructions (linear_avx512amx.cc) and the scalar emulation (linear_avx512amxemu.cc).
//
// Tiles: C0..C3 accumulators (fp32 16 x 16), A4/A5 two token tiles, B6/B7 two weight tiles:
//
//            B6 (rows nb)   B7 (rows nb + 1)
//   A4 (mt)      C0             C1
//   A5 (mt + 1)  C2             C3
//
// Split activations (TileProduct::split, up to 16 tokens): x = hi + lo, both bf16, token tile j's
// hi in A tile 2 j and its lo in 2 j + 1, so A4/A5 are always one token tile's pair and C0 + C2
// (C1 + C3) its result: x kept to about 16 bits for twice the tile work (linear.h says when).
// Per 32 input columns: 2 A and 2 B loads for 4 tdpbf16ps; each weight tile read from memory once.
// Include only from those two files (anonymous namespace, built with their flags).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/attention/amx/amx_tiles-inl.h"
#include "cpu/linear/linear.h"

namespace mla::cpu {
namespace {

// C tile (mt, nb) of the worker's accumulators: acc[(nb - nb0) * m_tiles + mt][16][16].
inline float* acc_tile(const TileProduct& p, int64_t nb0, int64_t nb, int64_t mt) {
  return p.acc + ((nb - nb0) * p.m_tiles + mt) * 256;
}

// Input blocks [k0, k1) of token tiles mt, mt + 1 and row blocks nb, nb + 1 (acc: first chunk or
// not); b0 / b1: row blocks nb's and nb + 1's weight tiles from input block k0 on (1 KB each).
template <bool TwoM, bool TwoN>
inline void tiles_block(const TileProduct& p, int64_t nb0, int64_t nb, int64_t mt, int64_t k0,
                        int64_t k1, const uint16_t* b0, const uint16_t* b1) {
  const int64_t as = p.m_tiles * 512;  // one input block's A tiles
  const uint16_t* a0 = p.a + mt * 512 + k0 * as;
  const uint16_t* a1 = a0 + 512;
  float* c0 = acc_tile(p, nb0, nb, mt);
  float* c1 = acc_tile(p, nb0, nb + 1, mt);
  float* c2 = c0 + 256;
  float* c3 = c1 + 256;
  if (k0 == 0) {
    amx::zero<0>();
    if constexpr (TwoN) amx::zero<1>();
    if constexpr (TwoM) amx::zero<2>();
    if constexpr (TwoM && TwoN) amx::zero<3>();
  } else {
    amx::load<0>(c0, 64);
    if constexpr (TwoN) amx::load<1>(c1, 64);
    if constexpr (TwoM) amx::load<2>(c2, 64);
    if constexpr (TwoM && TwoN) amx::load<3>(c3, 64);
  }
  for (int64_t k = 0; k < k1 - k0; ++k) {
    amx::load<4>(a0 + k * as, 64);
    amx::load<6>(b0 + k * 512, 64);
    amx::dpbf16<0, 4, 6>();
    if constexpr (TwoN) {
      amx::load<7>(b1 + k * 512, 64);
      amx::dpbf16<1, 4, 7>();
    }
    if constexpr (TwoM) {
      amx::load<5>(a1 + k * as, 64);
      amx::dpbf16<2, 5, 6>();
      if constexpr (TwoN) amx::dpbf16<3, 5, 7>();
    }
  }
  amx::store<0>(c0, 64);
  if constexpr (TwoN) amx::store<1>(c1, 64);
  if constexpr (TwoM) amx::store<2>(c2, 64);
  if constexpr (TwoM && TwoN) amx::store<3>(c3, 64);
}

// Rows of one C tile (or, split, the sum of the hi and lo tiles) for tokens 16 tt.. and rows 16 nb..
// into y, only the stored tokens and rows.
inline void tiles_write(const TileProduct& p, int64_t nb, int64_t tt, const float* c,
                        const float* c_lo) {
  const int64_t t0 = tt * 16, r0 = nb * 16;
  const int64_t tn = std::min<int64_t>(16, p.n - t0), rn = std::min<int64_t>(16, p.out - r0);
  for (int64_t m = 0; m < tn; ++m) {
    float* y = p.y + (t0 + m) * p.ldy + r0;
    float v[16];
    for (int64_t j = 0; j < rn; ++j) v[j] = c_lo ? c[m * 16 + j] + c_lo[m * 16 + j] : c[m * 16 + j];
    if (p.row_scale)
      for (int64_t j = 0; j < rn; ++j) y[j] = v[j] * p.row_scale[r0 + j];
    else
      for (int64_t j = 0; j < rn; ++j) y[j] = v[j];
  }
}

// int8 weight tiles -> bf16 (exact: every int8 is a bf16), 32 a step.
inline void widen_i8_tiles(const int8_t* src, uint16_t* dst, int64_t tiles) {
  for (int64_t i = 0; i < tiles * 512; i += 32) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16))));
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

// Input chunks outside, so a chunk's A tiles (m_tiles x chunk KB, about 256 KB) stay in L2 while
// every row block's weight tiles stream past them once; the accumulators wait in p.acc between
// chunks. (Row blocks outside and the whole input inside re-read A from L3 for every row-block
// pair: o_proj at 64 tokens, 4 MB of split A, ran at 6 GB/s of weights.)
inline void tiles_rows(const TileProduct& p, int64_t nb0, int64_t nb1) {
  amx::Session session;
  // Why 256 KB: measured 32 KB .. 2 MB of A per chunk, all within the noise (the tile rate, about
  // 10 ns per tdpbf16ps with a tile load each, bounds the kernel, not where A comes from).
  // int8 weights: a chunk of the row-block pair's tiles widened into wide[] (2 x kI8Chunk KB).
  constexpr int64_t kI8Chunk = 32;
  alignas(64) uint16_t wide[2 * kI8Chunk * 512];
  const int64_t chunk = p.b_i8 ? kI8Chunk : std::max<int64_t>(8, 256 / p.m_tiles);
  for (int64_t k0 = 0; k0 < p.k_blocks; k0 += chunk) {
    const int64_t k1 = std::min(p.k_blocks, k0 + chunk);
    for (int64_t nb = nb0; nb < nb1; nb += 2) {
      const bool two_n = nb + 1 < nb1;
      const uint16_t *b0, *b1;
      if (p.b_i8) {
        widen_i8_tiles(p.b_i8 + (nb * p.k_blocks + k0) * 512, wide, k1 - k0);
        if (two_n) widen_i8_tiles(p.b_i8 + ((nb + 1) * p.k_blocks + k0) * 512, wide + kI8Chunk * 512, k1 - k0);
        b0 = wide, b1 = wide + kI8Chunk * 512;
      } else {
        b0 = p.b + (nb * p.k_blocks + k0) * 512, b1 = b0 + p.k_blocks * 512;
      }
      for (int64_t mt = 0; mt < p.m_tiles; mt += 2) {
        const bool two_m = mt + 1 < p.m_tiles;
        if (two_m && two_n) tiles_block<true, true>(p, nb0, nb, mt, k0, k1, b0, b1);
        else if (two_m) tiles_block<true, false>(p, nb0, nb, mt, k0, k1, b0, b1);
        else if (two_n) tiles_block<false, true>(p, nb0, nb, mt, k0, k1, b0, b1);
        else tiles_block<false, false>(p, nb0, nb, mt, k0, k1, b0, b1);
      }
    }
  }
  for (int64_t nb = nb0; nb < nb1; ++nb) {
    if (p.split) {  // hi and lo of token tile mt / 2
      for (int64_t mt = 0; mt < p.m_tiles; mt += 2)
        tiles_write(p, nb, mt / 2, acc_tile(p, nb0, nb, mt), acc_tile(p, nb0, nb, mt + 1));
    } else {
      for (int64_t mt = 0; mt < p.m_tiles; ++mt) tiles_write(p, nb, mt, acc_tile(p, nb0, nb, mt), nullptr);
    }
  }
}

}  // namespace
}  // namespace mla::cpu
