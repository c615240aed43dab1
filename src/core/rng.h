// The project's one small random generator, splitmix64: fast, good enough for test data and random
// weights, and the same numbers on every platform and standard library (std::*_distribution are
// not). The harness's cases and `mla demo`'s weights draw from it. (tests/package/case.h keeps a C
// copy on purpose: the package test builds against the installed headers only.)
#pragma once

#include <cstdint>

namespace mla {

struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-1, 1), on a grid of 2^-23.
  float uniform() {
    return float(int64_t(next() >> 40) - (int64_t(1) << 23)) * (1.f / float(1 << 23));
  }
  // Uniform with unit variance: [-sqrt(3), sqrt(3)).
  float unit() { return (float(next() >> 40) * (1.f / 16777216.f) * 2.f - 1.f) * 1.7320508f; }
};

}  // namespace mla
