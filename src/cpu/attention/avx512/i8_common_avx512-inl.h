// The int8 AVX-512 VNNI kernel's shared pieces (decode_i8_avx512vnni.cc): constants, the inline-asm
// dot products, the position order of the PV accumulators, the item and step state. Include it
// only from that file (and its stage headers): an anonymous namespace, built with its flags.

#pragma once

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

#include "cpu/attention/avx512/avx512_common.h"  // first: see the note there
#include "cpu/attention/kernel.h"
#include "cpu/attention/softmax_state.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

using namespace avx512;

constexpr int kGroups = kLatentDim / 4;   // QK nope k-steps: 4 channels each
constexpr int kRopePairs = kRopeDim / 2;  // QK rope k-steps: 2 bf16 each
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
// 2 x 12, 3 x 8; 4 x 6 was 3 points slower. With group scales a tile keeps an fp32 sum of the
// scaled group dot products besides the int32 accumulators, so it has half the tokens (kGrpTokens)
// to stay within the 32 registers.
template <int RV>
struct QkShape;
template <>
struct QkShape<1> {
  static constexpr int kTokens = 16;
  static constexpr int kGrpTokens = 8;
};
template <>
struct QkShape<2> {
  static constexpr int kTokens = 8;
  static constexpr int kGrpTokens = 4;
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

// Everything one work item keeps across its row tiles and steps.
struct Item {
  const KernelArgs* a;
  const CacheView* cache;
  const uint16_t* rope;  // the cache's rope rows (slot 0)
  int R, Rp, nh;
  bool tok, resident, staged;
  int gsz;          // group modes: channels per scale group (32, 64, 128); 0 otherwise
  int ng;           // scale groups: 512 / gsz in group modes, else 1 (the per-group arrays below)
  float c2;         // |softmax_scale| * log2(e)
  float tensor;     // tensor scale (1 in other modes)
  const float* cs;  // channel scales (channel mode) or nullptr
  const uint8_t* qp;
  const uint16_t* qr;
  const int32_t* qsum_neg;  // [ng][Rp] -128 * sum of q8 over the group's channels
  const float* qs;
  const int32_t* lim;
  float *m, *l, *alpha;
  float* dq;            // [ng][Rp] p dequantization (x tensor scale)
  float* ptop;          // [ng][Rp] the step's largest P' of each row x tensor scale, applied in fp32
  int32_t* top;         // [ng][Rp] its token in the step
  float* go;            // the row tile's [32][512]: accumulator (resident) or lo (spill)
  const float* cs_pos;  // channel scales by position
  float* s;             // [T][RV][16] the row tile's scores in the step
  uint8_t* pp;          // [ng][T/4][RV][16] u32 its probabilities, per scale group
  int64_t pp_group;     // pp's scale-group stride in u32 (T/4 * 16 * kMainRV)
};

// One step's tokens.
struct Step {
  int t0, n, groups;
  bool first;
  const int64_t* slot;       // [n]
  const int8_t* const* tok;  // [4 * groups] latent rows; a zero row past the range
  const float* ks;           // [4 * groups][ng] token or group scales (token / group modes; 0
                             // past the range)
  const int8_t* kstage;      // staging copies (blocks shorter than kMinDirectBlock)
  const uint16_t* rstage;
  int pf_from;               // QK prefetches the step's tokens from here on (those before
                             // were prefetched by the previous step's PV or the row tile's start)
};

}  // namespace
}  // namespace mla::cpu
