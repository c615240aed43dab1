// The bf16- and fp8-cache attention kernels on the AMX tile unit (bf16_amx_avx512-inl.h; one file
// for both formats, which differ only in run_bf16_amx's template argument), built with the
// AMX instructions: offered where the CPU has AMX and the OS grants the tile state (isa.h).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#pragma GCC diagnostic ignored "-Wunused-function"  // the bf16-dot kernel's own pieces it shares

#include "cpu/attention/amx/bf16_amx_avx512-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_bf16_avx512amx{.name = "decode_bf16_avx512amx",
                                              .kv = KvDType::bf16,
                                              .portable = false,
                                              .isa = Isa::amx,
                                              .supported = cpu_has_amx_set,
                                              .run = run_bf16_amx<KvDType::bf16>,
                                              .stages = item_stages};

extern const KernelInfo decode_fp8_avx512amx{.name = "decode_fp8_avx512amx",
                                             .kv = KvDType::fp8,
                                             .portable = false,
                                             .isa = Isa::amx,
                                             .supported = cpu_has_amx_set,
                                             .run = run_bf16_amx<KvDType::fp8>,
                                             .stages = item_stages};

}  // namespace mla::cpu
