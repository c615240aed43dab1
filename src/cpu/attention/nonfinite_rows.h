// The non-finite rule's token check shared by the 16-bit-cache kernels of every instruction set
// (avx2_common.h, avx512_common.h). Plain C++ in an anonymous namespace: each kernel file gets
// its own copy, built with its own instructions, never one the linker shares between them.
#pragma once

#include <cstdint>

#include "mla/cache.h"

namespace mla::cpu {
namespace {

// Whether a 16-bit cache row (576 values) holds a NaN or Inf: all exponent bits set, exp_mask
// 0x7f80 for bf16, 0x7c00 for fp16.
inline bool row16_nonfinite(const uint16_t* t, uint16_t exp_mask) {
  bool bad = false;
  for (int i = 0; i < kQkDim; ++i) bad |= (t[i] & exp_mask) == exp_mask;
  return bad;
}

// A step whose scores showed a non-finite value somewhere: the tokens holding NaN/Inf are
// replaced by the zero token for P.V, so rows that cannot see them (p = 0) do not get 0 * NaN;
// the rows that can see them are NaN already (their m).
inline void drop_nonfinite_tokens(const uint16_t** kptr, int n, const uint16_t* zero,
                                  uint16_t exp_mask) {
  for (int t = 0; t < n; ++t)
    if (row16_nonfinite(kptr[t], exp_mask)) kptr[t] = zero;
}

}  // namespace
}  // namespace mla::cpu
