// The rows driver of the decode path's latent rotation (hadamard.h): the AVX-512 row where the CPU
// has it, the cache layer's portable transform elsewhere; rows split across the pool's workers.
#include "cpu/linear/hadamard.h"

#include <algorithm>

#include "cpu/attention/isa.h"
#include "cpu/thread_pool.h"

namespace mla::cpu {

// Baseline code: the check of exactly the instructions hadamard_avx512.cc is compiled with.
bool hadamard_avx512_supported() { return cpu_has_avx512_set(); }

namespace {

// The signs times 1/sqrt(512), rounded as src/cache/rotation.cc rounds them (the same literal).
const float* scaled_signs() {
  static const auto table = [] {
    struct T { alignas(64) float s[kLatentDim]; } t;
    const float norm = float(0.044194173824159220275);
    for (int c = 0; c < kLatentDim; ++c) t.s[c] = hadamard_signs()[c] * norm;
    return t;
  }();
  return table.s;
}

// Below this many rows one worker does it all: a row takes ~0.1 us, a pool dispatch a few.
constexpr int64_t kRowsPerWorker = 64;

// Runs fn(i) for i < n on enough workers that each has kRowsPerWorker rows or more.
template <class F>
void for_rows(int64_t n, int threads, F&& fn) {
  ThreadPool& pool = thread_pool(threads);
  const int64_t most = threads > 0 ? threads : pool.size();
  const int workers = int(std::clamp<int64_t>(n / kRowsPerWorker, 1, most));
  if (workers == 1) {
    for (int64_t i = 0; i < n; ++i) fn(i);
    return;
  }
  pool.run(workers, [&](int w) {
    for (int64_t i = n * w / workers; i < n * (w + 1) / workers; ++i) fn(i);
  });
}

void row(KvRotation r, bool inverse, bool fast, float* x) {
  if (fast)
    hadamard_row_avx512(x, scaled_signs(), inverse);
  else if (inverse)
    unrotate_latent(r, x);
  else
    rotate_latent(r, x);
}

}  // namespace

void hadamard_rows(KvRotation r, bool inverse, const LatentRows& rows, int threads,
                   bool isa_portable) {
  if (r == KvRotation::none) return;
  const int64_t n = rows.n0 * rows.n1 * rows.n2;
  if (n <= 0) return;
  const bool fast = !isa_portable && hadamard_avx512_supported();
  for_rows(n, threads, [&](int64_t i) {
    const int64_t c = i % rows.n2, b = (i / rows.n2) % rows.n1, a = i / (rows.n2 * rows.n1);
    row(r, inverse, fast, rows.base + a * rows.s0 + b * rows.s1 + c * rows.s2);
  });
}

void rotate_query(KvRotation r, DType q_dtype, const void* q, int64_t rows, DType kt,
                  uint16_t* out, int threads) {
  const bool fast = hadamard_avx512_supported();
  // One loop per type pair, so that the compiler vectorizes each conversion.
  const bool vec = fast && kt == DType::bf16 && q_dtype != DType::f16;
  for_rows(rows, threads, [&](int64_t i) {
    alignas(64) float x[kQkDim];
    const int64_t off = i * kQkDim;
    if (vec) {
      const size_t bytes = q_dtype == DType::f32 ? 4 : 2;
      return rotate_query_row_avx512(static_cast<const char*>(q) + off * bytes,
                                     q_dtype == DType::f32, out + off, scaled_signs());
    }
    if (q_dtype == DType::bf16) {
      const uint16_t* s = static_cast<const uint16_t*>(q) + off;
      for (int c = 0; c < kQkDim; ++c) x[c] = bf16_to_f32(s[c]);
    } else if (q_dtype == DType::f16) {
      const uint16_t* s = static_cast<const uint16_t*>(q) + off;
      for (int c = 0; c < kQkDim; ++c) x[c] = f16_to_f32(s[c]);
    } else {
      const float* s = static_cast<const float*>(q) + off;
      std::copy(s, s + kQkDim, x);
    }
    row(r, false, fast, x);
    uint16_t* d = out + off;
    if (kt == DType::f16)
      for (int c = 0; c < kQkDim; ++c) d[c] = f32_to_f16(x[c]);
    else
      for (int c = 0; c < kQkDim; ++c) d[c] = f32_to_bf16(x[c]);
  });
}

}  // namespace mla::cpu
