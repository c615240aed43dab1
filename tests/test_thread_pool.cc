// The persistent thread pool (src/cpu/thread_pool.h): every worker index runs exactly once per run,
// rapid back-to-back runs never deadlock, exceptions reach the caller, nested and serial reuse,
// per-worker scratch.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cpu/thread_pool.h"

namespace mla::cpu {
namespace {

TEST(ThreadPool, EveryWorkerOnceEveryRun) {
  ThreadPool pool(8);
  ASSERT_EQ(pool.size(), 8);
  for (int n = 1; n <= 8; ++n) {
    for (int rep = 0; rep < 50; ++rep) {
      std::vector<std::atomic<int>> hits(8);
      pool.run(n, [&](int w) { hits[w].fetch_add(1); });
      for (int w = 0; w < 8; ++w)
        ASSERT_EQ(hits[w].load(), w < n ? 1 : 0) << "n " << n << " w " << w;
    }
  }
}

TEST(ThreadPool, WorkerZeroIsTheCaller) {
  ThreadPool pool(3);
  std::thread::id ids[3];
  pool.run(3, [&](int w) { ids[w] = std::this_thread::get_id(); });
  EXPECT_EQ(ids[0], std::this_thread::get_id());
  EXPECT_NE(ids[1], ids[0]);
  EXPECT_NE(ids[2], ids[1]);
  // The same threads serve every run: no thread is created per call.
  std::thread::id again[3];
  pool.run(3, [&](int w) { again[w] = std::this_thread::get_id(); });
  for (int w = 0; w < 3; ++w) EXPECT_EQ(ids[w], again[w]);
}

TEST(ThreadPool, ManyRapidRuns) {
  for (int size : {2, 4, 8}) {
    ThreadPool pool(size);
    std::atomic<int64_t> sum{0};
    const int runs =
        size == 2 ? 10000 : 3000;  // more threads than 2 cores sleep and wake every run
    for (int r = 0; r < runs; ++r)
      pool.run(size, [&](int w) { sum.fetch_add(w + 1, std::memory_order_relaxed); });
    EXPECT_EQ(sum.load(), int64_t{runs} * size * (size + 1) / 2) << "size " << size;
  }
}

TEST(ThreadPool, RunsAfterSleeping) {
  // Workers that have gone to sleep (past their spin) must wake for the next run.
  ThreadPool pool(2);
  for (int r = 0; r < 5; ++r) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    std::atomic<int> hits{0};
    pool.run(2, [&](int) { hits.fetch_add(1); });
    EXPECT_EQ(hits.load(), 2);
  }
}

TEST(ThreadPool, ExceptionsReachTheCaller) {
  ThreadPool pool(4);
  for (int thrower : {0, 1, 3}) {
    std::atomic<int> ran{0};
    try {
      pool.run(4, [&](int w) {
        ran.fetch_add(1);
        if (w == thrower) throw std::runtime_error("worker " + std::to_string(w));
      });
      ADD_FAILURE() << "no exception from worker " << thrower;
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), "worker " + std::to_string(thrower));
    }
    EXPECT_EQ(ran.load(), 4) << "every worker still runs";
  }
  // Several throw: the lowest worker's exception wins. The pool stays usable.
  try {
    pool.run(4, [&](int w) {
      if (w >= 2) throw std::runtime_error("worker " + std::to_string(w));
    });
    ADD_FAILURE();
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()), "worker 2");
  }
  std::atomic<int> ran{0};
  pool.run(4, [&](int) { ran.fetch_add(1); });
  EXPECT_EQ(ran.load(), 4);
}

TEST(ThreadPool, NestedRunsRunInline) {
  ThreadPool pool(3);
  std::vector<std::atomic<int>> hits(9);
  pool.run(
      3, [&](int outer) { pool.run(3, [&](int inner) { hits[outer * 3 + inner].fetch_add(1); }); });
  for (int i = 0; i < 9; ++i) EXPECT_EQ(hits[i].load(), 1) << i;
  // A nested exception reaches the outer caller.
  EXPECT_THROW(pool.run(2,
                        [&](int outer) {
                          pool.run(2, [&](int inner) {
                            if (outer == 1 && inner == 1) throw std::logic_error("nested");
                          });
                        }),
               std::logic_error);
}

TEST(ThreadPool, SerialReuseAndConcurrentCallers) {
  ThreadPool pool(2);
  std::atomic<int64_t> total{0};
  auto caller = [&] {
    for (int r = 0; r < 2000; ++r) pool.run(2, [&](int w) { total.fetch_add(w + 1); });
  };
  std::thread other(caller);
  caller();
  other.join();
  EXPECT_EQ(total.load(), 2 * 2000 * 3);
}

TEST(ThreadPool, GrowsOnDemand) {
  ThreadPool pool(1);
  std::atomic<int> hits{0};
  pool.run(1, [&](int) { hits.fetch_add(1); });
  pool.run(5, [&](int) { hits.fetch_add(1); });
  EXPECT_EQ(pool.size(), 5);
  pool.grow(3);
  EXPECT_EQ(pool.size(), 5);
  pool.run(5, [&](int) { hits.fetch_add(1); });
  EXPECT_EQ(hits.load(), 11);
  pool.run(0, [&](int) { hits.fetch_add(1); });
  EXPECT_EQ(hits.load(), 11);
}

TEST(ThreadPool, ProcessWidePool) {
  ThreadPool& a = thread_pool(2);
  EXPECT_GE(a.size(), 2);
  ThreadPool& b = thread_pool(4);
  EXPECT_EQ(&a, &b);
  EXPECT_GE(b.size(), 4);
  EXPECT_GE(thread_pool(0).size(), ThreadPool::available_cpus());
  std::atomic<int> hits{0};
  b.run(4, [&](int) { hits.fetch_add(1); });
  EXPECT_EQ(hits.load(), 4);
}

TEST(ThreadPool, ScratchIsAlignedPerWorkerAndReused) {
  ThreadPool pool(4);
  std::vector<void*> first(4), second(4);
  pool.run(4, [&](int w) {
    first[w] = pool.scratch(w, 1000 + w);
    std::memset(first[w], w, 1000 + w);
  });
  std::set<void*> distinct(first.begin(), first.end());
  EXPECT_EQ(distinct.size(), 4u);
  for (void* p : first) EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 64, 0u);
  pool.run(4, [&](int w) { second[w] = pool.scratch(w, 500); });
  EXPECT_EQ(first, second) << "a smaller request reuses the buffer";
  void* big = pool.scratch(2, 1 << 20);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big) % 64, 0u);
  std::memset(big, 1, 1 << 20);
  EXPECT_EQ(pool.scratch(2, 1 << 20), big);
}

}  // namespace
}  // namespace mla::cpu
