// The bf16-cache attention kernel for AVX-512 BF16 CPUs (body: bf16dot_avx512-inl.h). Its own
// file: one instantiation file per dtype and ISA.
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own _mm512_undefined_* trip -Wmaybe-uninitialized where they are inlined (GCC bug
// 105593); the pragma has to precede <immintrin.h>.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include "cpu/attention/avx512/bf16dot_avx512-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_bf16_avx512bf16{.name = "decode_bf16_avx512bf16",
                                               .kv = KvDType::bf16,
                                               .portable = false,
                                               .isa = Isa::avx512,
                                               .supported = cpu_has_avx512_set,
                                               .run = run<KvDType::bf16>,
                                               .stages = item_stages};

}  // namespace mla::cpu
