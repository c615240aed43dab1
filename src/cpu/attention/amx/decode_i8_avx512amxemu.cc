// The AMX int8 kernel (i8_amx_avx512-inl.h) over the scalar emulation of the tile operations
// (amx_tiles-inl.h): the same code as decode_i8_avx512amx, so its logic is tested on every
// AVX-512 CPU. Slow; never picked by --isa best (it comes after the portable kernel), forced with
// --isa amx-emu.
#define MLA_AMX_EMULATE 1
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/attention/amx/i8_amx_avx512-inl.h"

namespace mla::cpu {

void amx_tile_op_emu(int op, void* c, const void* a, const void* b) {
  amx::run_tile_op(amx::TileOp(op), c, a, b);
}

extern const KernelInfo decode_i8_avx512amxemu{.name = "decode_i8_avx512amxemu",
                                              .kv = KvDType::int8,
                                              .portable = false,
                                              .isa = Isa::amx_emu,
                                              .supported = cpu_has_avx512_set,
                                              .run = run_amx,
                                              .stages = stages_amx};

}  // namespace mla::cpu
