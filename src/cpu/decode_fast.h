// The fast CPU decode: plan, kernels on the thread pool, split-KV reduction.
#pragma once

#include "mla/attention.h"

namespace mla {

// Called by decode() after validation. q is in q_dtype; it is converted to the kernel's type.
void decode_fast(const DecodeParams& p, DType q_dtype, const void* q, const PagedLatentCache& cache,
                 const DecodeOptions& opt, float* o, float* lse);

}  // namespace mla
