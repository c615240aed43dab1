// kernel_q_dtype (include/mla/attention.h): the query type the fast kernels compute with. In the
// CPU layer because the driver (decode_fast.cc) converts the query to it; decode() and the
// attention layer, above, ask the same function.
#include "mla/attention.h"

namespace mla {

DType kernel_q_dtype(KvDType cache, DType requested) {
  (void)requested;
  return cache == KvDType::fp16 ? DType::f16 : DType::bf16;
}

}  // namespace mla
