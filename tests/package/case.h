/* One small decode case and the output comparison shared by the package's two users
 * (tests/package/): the C++ consumer built with find_package(mla) and the C program built with
 * gcc -std=c11 against mla.h. C11 and C++, header only (static functions), no library calls: the
 * programs compare the fast kernels against the library's float64 reference (decode with the
 * reference implementation) on these inputs.
 *
 *   2 sequences of 70 and 130 tokens, q_len 2, 16 heads, pages of 64 tokens scattered over a pool
 *   of 8 blocks (block_table below, -1 unused); every slot no sequence uses holds NaN, so a read
 *   outside the sequences shows in the output. */
#ifndef MLA_TESTS_PACKAGE_CASE_H
#define MLA_TESTS_PACKAGE_CASE_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

enum { CASE_BATCH = 2, CASE_Q_LEN = 2, CASE_HEADS = 16, CASE_BLOCK = 64, CASE_BLOCKS = 8,
       CASE_MAX_BLOCKS = 3, CASE_DIM = 576, CASE_DV = 512 };
static const int32_t case_seq_lens[CASE_BATCH] = {70, 130};
static const int32_t case_block_table[CASE_BATCH * CASE_MAX_BLOCKS] = {5, 2, -1, 0, 7, 3};

/* splitmix64: the same numbers on every platform and in both languages. */
static uint64_t case_next(uint64_t* s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
/* Uniform in [-1, 1). */
static float case_uniform(uint64_t* s) {
  return (float)((double)(case_next(s) >> 11) * 0x1p-53 * 2.0 - 1.0);
}
/* bf16 bits of a finite float, rounded to nearest even. */
static uint16_t case_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* The slot of token t of sequence b. */
static int64_t case_slot(int b, int t) {
  return (int64_t)case_block_table[b * CASE_MAX_BLOCKS + t / CASE_BLOCK] * CASE_BLOCK +
         t % CASE_BLOCK;
}

/* Fills kv [CASE_BLOCKS * CASE_BLOCK, 576] floats: random bf16-exact values where a sequence has a
 * token, NaN elsewhere; q16 [batch, q_len, heads, 576] random bf16 bits. */
static void case_fill(float* kv, uint16_t* q16) {
  const int64_t slots = (int64_t)CASE_BLOCKS * CASE_BLOCK;
  uint64_t seed = 17;
  for (int64_t i = 0; i < slots * CASE_DIM; ++i) kv[i] = NAN;
  for (int b = 0; b < CASE_BATCH; ++b)
    for (int t = 0; t < case_seq_lens[b]; ++t)
      for (int c = 0; c < CASE_DIM; ++c) {
        uint32_t u = (uint32_t)case_bf16(case_uniform(&seed)) << 16;
        memcpy(&kv[case_slot(b, t) * CASE_DIM + c], &u, 4);
      }
  for (int64_t i = 0; i < (int64_t)CASE_BATCH * CASE_Q_LEN * CASE_HEADS * CASE_DIM; ++i)
    q16[i] = case_bf16(case_uniform(&seed));
}

/* Compares o [rows, 512] and lse [rows] with the reference's, with the library's own tests'
 * bounds (src/ref/compare.cc): bf16 cache, relative norm error <= 5e-3, every row's <= 1e-2,
 * |lse - lse_ref| <= 1e-3; int8 cache (int8 = 1), 2e-2, 4e-2 and 1e-2; no value that is not
 * finite. Prints the errors; returns 1 when all hold. */
static int case_compare(const char* what, int int8, const float* o, const float* lse,
                        const float* ref_o, const float* ref_lse, int64_t rows) {
  double diff2 = 0, ref2 = 0, worst_row = 0, worst_lse = 0;
  int ok = 1;
  for (int64_t r = 0; r < rows; ++r) {
    double rd2 = 0, rr2 = 0;
    for (int d = 0; d < CASE_DV; ++d) {
      const double x = o[r * CASE_DV + d], y = ref_o[r * CASE_DV + d];
      if (!isfinite(x) || !isfinite(y)) ok = 0;
      rd2 += (x - y) * (x - y);
      rr2 += y * y;
    }
    diff2 += rd2;
    ref2 += rr2;
    if (rr2 > 0 && sqrt(rd2 / rr2) > worst_row) worst_row = sqrt(rd2 / rr2);
    if (!isfinite(lse[r]) || fabs((double)lse[r] - ref_lse[r]) > worst_lse)
      worst_lse = isfinite(lse[r]) ? fabs((double)lse[r] - ref_lse[r]) : INFINITY;
  }
  const double rel = ref2 > 0 ? sqrt(diff2 / ref2) : 0;
  ok = ok && ref2 > 0 && rel <= (int8 ? 2e-2 : 5e-3) && worst_row <= (int8 ? 4e-2 : 1e-2) &&
       worst_lse <= (int8 ? 1e-2 : 1e-3);
  printf("%s: %s (rel %.2e, worst row %.2e, lse %.1e)\n", what, ok ? "ok" : "FAILED", rel,
         worst_row, worst_lse);
  return ok;
}

#endif /* MLA_TESTS_PACKAGE_CASE_H */
