// A fork-join loop for the benchmark helpers' bulk work (filling caches, the BLAS baseline's
// element-wise stages). Threads are started per call: the helpers call it a few times per case or
// per sequence, where a thread start (tens of microseconds) is noise. The library's kernels have
// their own persistent pool; this is deliberately not it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace mla::bench {

// Calls fn(begin, end) on `threads` contiguous parts of [0, n), the first part on the calling
// thread.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  const int t = int(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
  if (t <= 1) {
    if (n > 0) fn(int64_t(0), n);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(t - 1);
  for (int i = 1; i < t; ++i) pool.emplace_back([&fn, i, t, n] { fn(n * i / t, n * (i + 1) / t); });
  fn(int64_t(0), n / t);
  for (auto& th : pool) th.join();
}

// Threads to use for bulk work when the caller does not say: every core.
inline int hardware_threads() { return int(std::max(1u, std::thread::hardware_concurrency())); }

}  // namespace mla::bench
