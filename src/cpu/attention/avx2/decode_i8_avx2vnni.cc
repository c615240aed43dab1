// The int8-cache kernel on AVX2 with AVX-VNNI (the VEX vpdpbusd on ymm: u8 x s8 quads into int32,
// exact). The body: i8_avx2-inl.h. Placed before decode_i8_avx2 in the registry: --isa avx2 picks
// it where the CPU has AVX-VNNI; the vpmaddwd kernel stays selectable by name.
#include "cpu/attention/avx2/i8_avx2-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_i8_avx2vnni{.name = "decode_i8_avx2vnni",
                                           .kv = KvDType::int8,
                                           .portable = false,
                                           .isa = Isa::avx2,
                                           .supported = cpu_has_avx2vnni_set,
                                           .run = run<4>,
                                           .stages = item_stages};

}  // namespace mla::cpu
