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

}  // namespace

void hadamard_rows(KvRotation r, bool inverse, const LatentRows& rows, int threads,
                   bool isa_portable) {
  if (r == KvRotation::none) return;
  const int64_t n = rows.n0 * rows.n1 * rows.n2;
  if (n <= 0) return;
  const bool fast = !isa_portable && hadamard_avx512_supported();
  const float* scale = scaled_signs();
  auto one = [&](int64_t i) {
    const int64_t c = i % rows.n2, b = (i / rows.n2) % rows.n1, a = i / (rows.n2 * rows.n1);
    float* x = rows.base + a * rows.s0 + b * rows.s1 + c * rows.s2;
    if (fast)
      hadamard_row_avx512(x, scale, inverse);
    else if (inverse)
      unrotate_latent(r, x);
    else
      rotate_latent(r, x);
  };
  ThreadPool& pool = thread_pool(threads);
  const int workers = int(std::clamp<int64_t>(n / kRowsPerWorker, 1, threads > 0 ? threads : pool.size()));
  if (workers == 1) {
    for (int64_t i = 0; i < n; ++i) one(i);
    return;
  }
  pool.run(workers, [&](int w) {
    for (int64_t i = n * w / workers; i < n * (w + 1) / workers; ++i) one(i);
  });
}

}  // namespace mla::cpu
