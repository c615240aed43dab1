// The bf16 attention kernel for AVX2 + FMA CPUs (Haswell, Zen 1 and later without AVX-512): the
// fp body of decode_fp_avx2.h with bf16 widened to fp32 by moving it into the high half of each
// 32-bit lane (bf16 is the top 16 bits of an fp32). Its own file: one instantiation per dtype
// and ISA.
#include "cpu/attention/avx2/decode_fp_avx2.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

struct Bf16Widen {
  // PV's 16 values a token give the even dims in one vector and the odd dims in the other: one
  // 32-byte load and two single-cycle bit operations, no shuffle.
  static constexpr bool kPermuted = true;
  static constexpr uint16_t kExpMask = 0x7f80;  // NaN / Inf: exponent all ones
  static __m256 widen8(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static void pv16(const uint16_t* p, __m256* even, __m256* odd) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    *even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    *odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u))));
  }
};

void run(const KernelArgs& a, Scratch& scratch) { avx2::fp_run<Bf16Widen>(a, scratch); }

}  // namespace

extern const KernelInfo decode_bf16_avx2{.name = "decode_bf16_avx2",
                                         .kv = KvDType::bf16,
                                         .portable = false,
                                         .isa = Isa::avx2,
                                         .supported = cpu_has_avx2_set,
                                         .run = run,
                                         .stages = item_stages};

}  // namespace mla::cpu
