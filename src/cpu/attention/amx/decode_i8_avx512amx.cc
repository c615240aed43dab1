// The int8-cache attention kernel on the AMX tile unit (i8_amx_avx512-inl.h), built with the AMX
// instructions: offered where the CPU has AMX and the kernel grants the tile state (isa.h).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/attention/amx/i8_amx_avx512-inl.h"

namespace mla::cpu {

void amx_tile_op_hw(int op, void* c, const void* a, const void* b) {
  amx::run_tile_op(amx::TileOp(op), c, a, b);
}

extern const KernelInfo decode_i8_avx512amx{.name = "decode_i8_avx512amx",
                                           .kv = KvDType::int8,
                                           .portable = false,
                                           .isa = Isa::amx,
                                           .supported = cpu_has_amx_set,
                                           .run = run_amx,
                                           .stages = stages_amx};

}  // namespace mla::cpu
