// The latent rotation of many rows at once (issue 20), for the decode path: the query's latent
// parts before the kernels and the output rows after them, when the cache is rotated and the
// caller's q and o are not. AVX-512 where the CPU has it (hadamard_avx512.cc: one row in 32
// registers), else the cache layer's portable transform; both run the same butterflies in the same
// order, so they give the same bits. Rows are split across the pool's workers.
#pragma once

#include <cstdint>

#include "mla/cache.h"

namespace mla::cpu {

// Rows (a, b, c), a < n0, b < n1, c < n2, at base + a * s0 + b * s1 + c * s2: the first 512 values
// of each (the o rows of any OutputStrides, or a dense [rows, 576] query with n0 = n1 = 1).
struct LatentRows {
  float* base = nullptr;
  int64_t n0 = 1, n1 = 1, n2 = 0;
  int64_t s0 = 0, s1 = 0, s2 = 0;
};

// x R (inverse = false) or x R^T (inverse = true) on every row; threads: pool workers (0: all).
void hadamard_rows(KvRotation r, bool inverse, const LatentRows& rows, int threads,
                   bool isa_portable = false);

// Internal: hadamard_avx512.cc, called only after hadamard_avx512_supported(). `scale`: the signs
// times 1/sqrt(512), applied before the transform (pre) or after it (post).
bool hadamard_avx512_supported();
void hadamard_row_avx512(float* x, const float* scale, bool post);

}  // namespace mla::cpu
