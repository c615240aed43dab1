// The latent rotation of a rotated cache (mla/cache.h, issue 20): R = D H / sqrt(512), D the fixed
// +-1 diagonal, H the 512-point Walsh-Hadamard matrix (symmetric, H H = 512 I), so R is orthogonal
// and R^T = H D / sqrt(512).
//
//   rotate    x R   = FWHT(x * d / sqrt(512))      (the sign and the scale first: one rounding)
//   unrotate  y R^T = FWHT(y) * d / sqrt(512)      (the scale last)
//
// The transform runs its 9 butterfly stages in the order h = 1, 2, 4, ..., 256; the AVX-512 rows
// of the decode path (src/cpu/linear/hadamard_avx512.cc) run the same stages in the same order, so
// both give the same bits. This is the portable one: the cache write's, one token at a time.
#include <cmath>
#include <cstdint>

#include "mla/cache.h"
#include "mla/status.h"

namespace mla {

const char* kv_rotation_name(KvRotation r) {
  return r == KvRotation::hadamard ? "hadamard" : "none";
}

KvRotation parse_kv_rotation(const std::string& s) {
  if (s == "none") return KvRotation::none;
  if (s == "hadamard") return KvRotation::hadamard;
  MLA_FAIL("unknown kv rotation '" << s << "' (expected none or hadamard)");
}

const char* fp8_scale_name(Fp8Scale s) { return s == Fp8Scale::pow2 ? "pow2" : "exact"; }

Fp8Scale parse_fp8_scale(const std::string& s) {
  if (s == "exact") return Fp8Scale::exact;
  if (s == "pow2") return Fp8Scale::pow2;
  MLA_FAIL("unknown fp8 scale '" << s << "' (expected exact or pow2)");
}

namespace {

struct Signs {
  float s[kLatentDim];
  Signs() {
    uint64_t state = kHadamardSeed;
    for (float& v : s) {  // splitmix64
      uint64_t z = (state += 0x9e3779b97f4a7c15ull);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
      z ^= z >> 31;
      v = (z >> 63) ? -1.f : 1.f;
    }
  }
};

const Signs& signs() {
  static const Signs s;
  return s;
}

// 1 / sqrt(512) = 2^-4.5, rounded once to the type.
template <class T> constexpr T kNorm = T(0.044194173824159220275);

// The unnormalized transform in place. Pairs (j, j + h) inside each block of 2h.
template <class T>
void fwht(T* x) {
  for (int h = 1; h < kLatentDim; h *= 2)
    for (int i = 0; i < kLatentDim; i += 2 * h)
      for (int j = i; j < i + h; ++j) {
        const T a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
}

template <class T>
void rotate_rows(KvRotation r, T* x, int64_t rows, int64_t stride, bool inverse) {
  if (r == KvRotation::none) return;
  const float* d = signs().s;
  for (int64_t row = 0; row < rows; ++row) {
    T* v = x + row * stride;
    if (!inverse)
      for (int c = 0; c < kLatentDim; ++c) v[c] *= T(d[c]) * kNorm<T>;
    fwht(v);
    if (inverse)
      for (int c = 0; c < kLatentDim; ++c) v[c] *= T(d[c]) * kNorm<T>;
  }
}

}  // namespace

const float* hadamard_signs() { return signs().s; }

void rotate_latent(KvRotation r, float* x, int64_t rows, int64_t stride) {
  rotate_rows(r, x, rows, stride, false);
}
void unrotate_latent(KvRotation r, float* x, int64_t rows, int64_t stride) {
  rotate_rows(r, x, rows, stride, true);
}
void rotate_latent(KvRotation r, double* x, int64_t rows, int64_t stride) {
  rotate_rows(r, x, rows, stride, false);
}
void unrotate_latent(KvRotation r, double* x, int64_t rows, int64_t stride) {
  rotate_rows(r, x, rows, stride, true);
}

}  // namespace mla
