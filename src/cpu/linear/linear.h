// Projections of the attention layer: y[n, out] = x[n, in] . W[out, in]^T with fp32 activations and
// weights read in their stored type (bf16, fp16, fp32, or fp8 e4m3 with a float32 scale per
// block), so at batch 1 each weight byte crosses the memory bus once and is widened in registers.
// The rows of W are split across the pool's workers; within a worker, tiles of 4 rows x up to 4
// tokens keep 16 accumulators in registers (AVX-512, linear_avx512.cc) so a weight row loaded from
// memory serves every token of the batch. A portable kernel (widen one row into L1, then dot it
// with every token) runs where AVX-512 is absent.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mla::cpu {

enum class WDType { bf16, f16, f32, fp8_e4m3 };
const char* wdtype_name(WDType t);
size_t wdtype_size(WDType t);

struct LinearWeight {
  int64_t out = 0, in = 0;
  WDType dtype = WDType::bf16;
  const void* w = nullptr;           // [out, ld] row-major; row r starts at w + r * ld elements
  int64_t ld = 0;
  // fp8 only: value = w * scale_inv[(row0 + r) / block_rows][c / block_cols] (scale_ld columns).
  const float* scale_inv = nullptr;
  int block_rows = 128, block_cols = 128;
  int64_t scale_ld = 0, row0 = 0;

  int64_t bytes() const;  // weight bytes read by one product (scales included)
  float at(int64_t r, int64_t c) const;  // one de-quantized element (slow; for tests and copies)
};

// y[t * ldy + r] = sum_c x[t * ldx + c] * W(r, c) for t < n, r < out. threads: pool workers
// (0: all CPUs). isa_portable forces the portable kernel (tests compare the two).
void linear(const LinearWeight& w, int64_t n, const float* x, int64_t ldx, float* y, int64_t ldy,
            int threads, bool isa_portable = false);

// Per-head products in one dispatch: for h < heads,
//   y[h * y_head + t * ldy + r] = sum_c x[h * x_head + t * ldx + c] * ws[h](r, c).
// (W_UK absorption and the W_UV einsum: 128 small products a step, which one pool run per product
// would spend a good part of on dispatch.) Every ws[h] must have the same out and in.
void linear_heads(const LinearWeight* ws, int heads, int64_t n, const float* x, int64_t ldx,
                  int64_t x_head, float* y, int64_t ldy, int64_t y_head, int threads,
                  bool isa_portable = false);

// Internal: the kernels over rows [r0, r1), in linear.cc and linear_avx512.cc.
void linear_rows_portable(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                          int64_t ldx, float* y, int64_t ldy, float* row_buf /*[in]*/);
bool linear_avx512_supported();  // linear.cc: cpu_has_avx512_set() (isa.h)
void linear_rows_avx512(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                        int64_t ldx, float* y, int64_t ldy);

}  // namespace mla::cpu
