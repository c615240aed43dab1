// The bf16- and fp8-cache attention kernels on the AMX tile unit (bf16_amx_avx512-inl.h; one file
// for both formats, which differ only in run_bf16_amx's template argument), over the scalar
// tile emulation (amx_tiles-inl.h), so its logic runs in the tests on every AVX-512 CPU; never
// picked by --isa best, forced with --isa amx-emu.
#define MLA_AMX_EMULATE 1
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#pragma GCC diagnostic ignored "-Wunused-function"  // the bf16-dot kernel's own pieces it shares

#include "cpu/attention/amx/bf16_amx_avx512-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_bf16_avx512amxemu{.name = "decode_bf16_avx512amxemu",
                                                 .kv = KvDType::bf16,
                                                 .portable = false,
                                                 .isa = Isa::amx_emu,
                                                 .supported = cpu_has_avx512_set,
                                                 .run = run_bf16_amx<KvDType::bf16>,
                                                 .stages = item_stages};

extern const KernelInfo decode_fp8_avx512amxemu{.name = "decode_fp8_avx512amxemu",
                                                .kv = KvDType::fp8,
                                                .portable = false,
                                                .isa = Isa::amx_emu,
                                                .supported = cpu_has_avx512_set,
                                                .run = run_bf16_amx<KvDType::fp8>,
                                                .stages = item_stages};

}  // namespace mla::cpu
