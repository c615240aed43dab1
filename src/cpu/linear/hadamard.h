// The latent rotation of many rows at once (issue 20), for the decode path: the query's latent
// parts before the kernels and the output rows after them, when the cache is rotated and the
// caller's q and o are not. AVX-512 where the CPU has it (hadamard_avx512.cc: one row in 32
// registers), else the cache layer's portable transform; both run the same butterflies in the same
// order, so they give the same bits. Rows are split across the pool's workers.
#pragma once

#include <cstdint>

#include "mla/cache.h"
#include "mla/dtype.h"

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

// The query of a decode with a rotated cache: q [rows, 576] in q_dtype (f32, bf16, f16) -> out
// [rows, 576] in kt (bf16 or f16): the latent part rotated in fp32 and rounded once to kt, the
// rope part rounded as it is. Row by row, in L1, split across the pool's workers.
void rotate_query(KvRotation r, DType q_dtype, const void* q, int64_t rows, DType kt,
                  uint16_t* out, int threads);

// Internal: hadamard_avx512.cc, called only after hadamard_avx512_supported(). `scale`: the signs
// times 1/sqrt(512), applied before the transform (pre) or after it (post).
bool hadamard_avx512_supported();
void hadamard_row_avx512(float* x, const float* scale, bool post);
// One query row [576], f32 (q_f32) or bf16, rotated and rounded to bf16 (rotate_query's row).
void rotate_query_row_avx512(const void* q, bool q_f32, uint16_t* out, const float* scale);

}  // namespace mla::cpu
