// The int8-cache kernel on AVX2 (vpmaddwd: exact on every AVX2 CPU). The body: i8_avx2-inl.h.
#include "cpu/attention/avx2/i8_avx2-inl.h"

namespace mla::cpu {

extern const KernelInfo decode_i8_avx2{.name = "decode_i8_avx2",
                                       .kv = KvDType::int8,
                                       .portable = false,
                                       .isa = Isa::avx2,
                                       .supported = cpu_has_avx2_set,
                                       .run = run<2>,
                                       .stages = item_stages};

}  // namespace mla::cpu
