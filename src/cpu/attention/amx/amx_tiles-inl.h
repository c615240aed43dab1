// The AMX tile operations the AMX kernels use (docs/DESIGN.md §10), in one of two builds:
//
//   real       (the *_avx512amx.cc files, compiled with -mamx-tile -mamx-int8 -mamx-bf16): the
//              instructions, through GCC's intrinsics;
//   emulated   (the *_avx512amxemu.cc files, MLA_AMX_EMULATE defined): scalar C++ over eight
//              thread-local tile registers, with the instructions' documented semantics, so the
//              kernels' logic runs in ctest on every AVX-512 CPU, AMX or not.
//
// Every tile is configured as 16 rows x 64 bytes (palette 1). Operand forms (Intel SDM, TDP*):
//   dpbssd  C[16x16 i32] += A[16 x 64 s8] . B[16 x (16 x 4) s8]      per (m, n): sum over k, i < 4 of
//   dpbusd  C[16x16 i32] += A[16 x 64 u8] . B[16 x (16 x 4) s8]        A[m][4k+i] * B[k][4n+i]
//   dpbf16  C[16x16 f32] += A[16 x 32 bf16] . B[16 x (16 x 2) bf16]    per (m, n), k: two products
// B is "VNNI-packed": each of its 16 rows holds 16 columns of 4 (int8) or 2 (bf16) consecutive
// K values. Tile numbers are template arguments: the instructions encode them.
//
// Include only from the AMX kernel files: an anonymous namespace, built with their flags.
#pragma once

#include <cstdint>
#include <cstring>


namespace mla::cpu {
namespace {
namespace amx {

#if defined(MLA_AMX_EMULATE)

constexpr bool kEmulated = true;

// The tile registers of this thread.
struct TileFile {
  alignas(64) unsigned char t[8][16][64];
};
inline thread_local TileFile g_tiles;

inline void configure() { std::memset(&g_tiles, 0, sizeof g_tiles); }
inline void release() { std::memset(&g_tiles, 0, sizeof g_tiles); }

template <int T>
inline void zero() {
  std::memset(g_tiles.t[T], 0, sizeof g_tiles.t[T]);
}
template <int T>
inline void load(const void* base, int64_t stride) {
  for (int r = 0; r < 16; ++r)
    std::memcpy(g_tiles.t[T][r], static_cast<const unsigned char*>(base) + r * stride, 64);
}
template <int T>
inline void store(void* base, int64_t stride) {
  for (int r = 0; r < 16; ++r)
    std::memcpy(static_cast<unsigned char*>(base) + r * stride, g_tiles.t[T][r], 64);
}

template <class TA, int C, int A, int B>
inline void dp_int8() {
  int32_t c[16][16];
  std::memcpy(c, g_tiles.t[C], sizeof c);
  for (int m = 0; m < 16; ++m) {
    const TA* a = reinterpret_cast<const TA*>(g_tiles.t[A][m]);
    for (int k = 0; k < 16; ++k) {
      const int8_t* b = reinterpret_cast<const int8_t*>(g_tiles.t[B][k]);
      for (int n = 0; n < 16; ++n)
        c[m][n] += int32_t(a[4 * k]) * b[4 * n] + int32_t(a[4 * k + 1]) * b[4 * n + 1] +
                   int32_t(a[4 * k + 2]) * b[4 * n + 2] + int32_t(a[4 * k + 3]) * b[4 * n + 3];
    }
  }
  std::memcpy(g_tiles.t[C], c, sizeof c);
}
template <int C, int A, int B>
inline void dpbssd() {
  dp_int8<int8_t, C, A, B>();
}
template <int C, int A, int B>
inline void dpbusd() {
  dp_int8<uint8_t, C, A, B>();
}

// bf16 -> fp32; TDPBF16PS treats denormal inputs as zero.
inline float bf16_daz(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  if ((u & 0x7f800000u) == 0) return (u & 0x80000000u) ? -0.f : 0.f;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// C[m][n] += A[m][2k] * B[k][2n], then += A[m][2k+1] * B[k][2n+1], each rounded to fp32 (RNE),
// k ascending (the SDM's pseudo-code).
template <int C, int A, int B>
inline void dpbf16() {
  float c[16][16];
  std::memcpy(c, g_tiles.t[C], sizeof c);
  for (int m = 0; m < 16; ++m) {
    const uint16_t* a = reinterpret_cast<const uint16_t*>(g_tiles.t[A][m]);
    for (int k = 0; k < 16; ++k) {
      const uint16_t* b = reinterpret_cast<const uint16_t*>(g_tiles.t[B][k]);
      const float a0 = bf16_daz(a[2 * k]), a1 = bf16_daz(a[2 * k + 1]);
      for (int n = 0; n < 16; ++n) {  // each product is exact in fp32; two roundings
        c[m][n] += a0 * bf16_daz(b[2 * n]);
        c[m][n] += a1 * bf16_daz(b[2 * n + 1]);
      }
    }
  }
  std::memcpy(g_tiles.t[C], c, sizeof c);
}

#else

constexpr bool kEmulated = false;

// Palette 1, all eight tiles 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
  uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};

// The instructions as inline asm (tile numbers as "i" operands, printed by %c): GCC 12's
// intrinsics stringize their tile argument, so they take no template parameter, and their asm
// has no memory clobber, which would let the compiler move a store to a buffer past the tile
// load that reads it.
inline void configure() {
  static const TileConfig cfg;
  asm volatile("ldtilecfg %0" ::"m"(cfg));
}
inline void release() { asm volatile("tilerelease" ::: "memory"); }

template <int T>
inline void zero() {
  asm volatile("tilezero %%tmm%c0" ::"i"(T));
}
template <int T>
inline void load(const void* base, int64_t stride) {
  asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(stride), "i"(T) : "memory");
}
template <int T>
inline void store(void* base, int64_t stride) {
  asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(stride), "i"(T) : "memory");
}
template <int C, int A, int B>
inline void dpbssd() {
  asm volatile("tdpbssd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}
template <int C, int A, int B>
inline void dpbusd() {
  asm volatile("tdpbusd %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}
template <int C, int A, int B>
inline void dpbf16() {
  asm volatile("tdpbf16ps %%tmm%c2, %%tmm%c1, %%tmm%c0" ::"i"(C), "i"(A), "i"(B));
}

#endif

// One tile instruction on plain buffers (c, a, b: 16 rows x 64 bytes each, c updated), for the
// test that holds the emulation to the instruction (tests/test_amx.cc).
enum class TileOp { dpbssd, dpbusd, dpbf16 };
inline void run_tile_op(TileOp op, void* c, const void* a, const void* b) {
  configure();
  load<0>(c, 64), load<1>(a, 64), load<2>(b, 64);
  switch (op) {
    case TileOp::dpbssd: dpbssd<0, 1, 2>(); break;
    case TileOp::dpbusd: dpbusd<0, 1, 2>(); break;
    case TileOp::dpbf16: dpbf16<0, 1, 2>(); break;
  }
  store<0>(c, 64);
  release();
}

// Configures this thread's tiles for the scope, releases them at its end (also on an exception).
struct Session {
  Session() { configure(); }
  ~Session() { release(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

}  // namespace amx
}  // namespace
}  // namespace mla::cpu
