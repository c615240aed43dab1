// The fp8-cache attention kernel for AVX-512 BF16 CPUs (FlashMLA's 656-byte e4m3 tokens, widened
// to bf16 in registers; body: bf16dot_avx512-inl.h). This CPU has no fp8 arithmetic, so the
// products are the bf16 kernel's. Its own file: one instantiation file per dtype and ISA.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own _mm512_undefined_* trip -Wmaybe-uninitialized where they are inlined (GCC bug
// 105593); the pragma has to precede <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu/attention/avx512/bf16dot_avx512-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_fp8_avx512bf16{.name = "decode_fp8_avx512bf16",
                                              .kv = KvDType::fp8,
                                              .portable = false,
                                              .isa = Isa::avx512,
                                              .supported = cpu_has_avx512_set,
                                              .run = run<KvDType::fp8>,
                                              .stages = item_stages};

}  // namespace mla::cpu
