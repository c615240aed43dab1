// The fp16 attention kernel for AVX2 + FMA + F16C CPUs: the fp body of decode_fp_avx2.h with fp16
// widened by vcvtph2ps (F16C). Its own file: one instantiation per dtype and ISA.
#include "cpu/attention/avx2/decode_fp_avx2.h"
#include "cpu/attention/isa.h"

namespace mla::cpu {
namespace {

struct F16Widen {
  static constexpr bool kPermuted = false;
  static constexpr uint16_t kExpMask = 0x7c00;  // NaN / Inf: exponent all ones
  static __m256 widen8(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void pv16(const uint16_t* p, __m256* lo, __m256* hi) {
    *lo = widen8(p);
    *hi = widen8(p + 8);
  }
};

void run(const KernelArgs& a, Scratch& scratch) { avx2::fp_run<F16Widen>(a, scratch); }

}  // namespace

extern const KernelInfo decode_f16_avx2{.name = "decode_f16_avx2",
                                        .kv = KvDType::fp16,
                                        .portable = false,
                                        .isa = Isa::avx2,
                                        .supported = cpu_has_avx2_set,
                                        .run = run,
                                        .stages = item_stages};

}  // namespace mla::cpu
