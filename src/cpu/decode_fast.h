// The fast CPU decode: plan, kernels on the thread pool, split-KV reduction.
#pragma once

#include "mla/attention.h"

namespace mla {

// Called by decode() after validation and the plan's check. q is in q_dtype; it is converted to
// the kernel's type. workspace: plan.workspace_bytes() bytes, 64-byte aligned.
void decode_fast(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
                 const DecodeOptions& opt, const DecodePlan& plan, void* workspace, float* o,
                 float* lse);

}  // namespace mla
