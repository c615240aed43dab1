// The projection kernel on the AMX tile unit (linear.h, DESIGN §10), one body for the real
// instructions (linear_avx512amx.cc) and the scalar emulation (linear_avx512amxemu.cc).
//
// Tiles: C0..C3 accumulators (fp32 16 x 16), A4/A5 two token tiles, B6/B7 two weight tiles:
//
//            B6 (rows nb)   B7 (rows nb + 1)
//   A4 (mt)      C0             C1
//   A5 (mt + 1)  C2             C3
//
// Per 32 input columns: 2 A and 2 B loads for 4 tdpbf16ps. Row-block pairs outside, token-tile
// pairs inside, so a pair's weight tiles (2 x in / 32 KB: at most 1 MB, o_proj's) come from memory
// once and from L2 for the further token pairs (batch > 32).
// Include only from those two files (anonymous namespace, built with their flags).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/attention/amx/amx_tiles-inl.h"
#include "cpu/linear/linear.h"

namespace mla::cpu {
namespace {

template <bool TwoM, bool TwoN>
inline void tiles_block(const TileProduct& p, int64_t nb, int64_t mt, float (*c)[16][16]) {
  const uint16_t* a0 = p.a + mt * 16 * p.a_ld;
  const uint16_t* a1 = a0 + 16 * p.a_ld;
  const uint16_t* b0 = p.b + nb * p.k_blocks * 512;
  const uint16_t* b1 = b0 + p.k_blocks * 512;
  const int64_t as = p.a_ld * 2;
  amx::zero<0>();
  if constexpr (TwoN) amx::zero<1>();
  if constexpr (TwoM) amx::zero<2>();
  if constexpr (TwoM && TwoN) amx::zero<3>();
  for (int64_t k = 0; k < p.k_blocks; ++k) {
    amx::load<4>(a0 + k * 32, as);
    amx::load<6>(b0 + k * 512, 64);
    amx::dpbf16<0, 4, 6>();
    if constexpr (TwoN) {
      amx::load<7>(b1 + k * 512, 64);
      amx::dpbf16<1, 4, 7>();
    }
    if constexpr (TwoM) {
      amx::load<5>(a1 + k * 32, as);
      amx::dpbf16<2, 5, 6>();
      if constexpr (TwoN) amx::dpbf16<3, 5, 7>();
    }
  }
  amx::store<0>(c[0], 64);
  if constexpr (TwoN) amx::store<1>(c[1], 64);
  if constexpr (TwoM) amx::store<2>(c[2], 64);
  if constexpr (TwoM && TwoN) amx::store<3>(c[3], 64);
}

// C tile i (token tile mt + i / 2, row block nb + i % 2) into y, only the stored tokens and rows.
inline void tiles_write(const TileProduct& p, int64_t nb, int64_t mt, int i, const float (*c)[16]) {
  const int64_t t0 = (mt + i / 2) * 16, r0 = (nb + i % 2) * 16;
  const int64_t tn = std::min<int64_t>(16, p.n - t0), rn = std::min<int64_t>(16, p.out - r0);
  for (int64_t m = 0; m < tn; ++m) {
    float* y = p.y + (t0 + m) * p.ldy + r0;
    if (p.row_scale)
      for (int64_t j = 0; j < rn; ++j) y[j] = c[m][j] * p.row_scale[r0 + j];
    else
      for (int64_t j = 0; j < rn; ++j) y[j] = c[m][j];
  }
}

inline void tiles_rows(const TileProduct& p, int64_t nb0, int64_t nb1) {
  amx::Session session;
  alignas(64) float c[4][16][16];
  for (int64_t nb = nb0; nb < nb1; nb += 2) {
    const bool two_n = nb + 1 < nb1;
    for (int64_t mt = 0; mt < p.m_tiles; mt += 2) {
      const bool two_m = mt + 1 < p.m_tiles;
      if (two_m && two_n) tiles_block<true, true>(p, nb, mt, c);
      else if (two_m) tiles_block<true, false>(p, nb, mt, c);
      else if (two_n) tiles_block<false, true>(p, nb, mt, c);
      else tiles_block<false, false>(p, nb, mt, c);
      for (int i = 0; i < 4; ++i)
        if ((two_m || i < 2) && (two_n || i % 2 == 0) && (mt + i / 2) * 16 < p.n)
          tiles_write(p, nb, mt, i, c[i]);
    }
  }
}

}  // namespace
}  // namespace mla::cpu
