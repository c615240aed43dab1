// The persistent thread pool (src/cpu/thread_pool.h): every worker index runs exactly once per run,
// rapid back-to-back runs never deadlock, exceptions reach the caller, nested and serial reuse,
// per-worker scratch, and where the threads are placed (facts read from the kernel, not timings):
// never on the caller's CPU, within the creator's affinity mask, unpinned when they outnumber the
// CPUs, two pools apart, for any CPU count (the placement rule on its own).
#include <gtest/gtest.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
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
#include "mla/status.h"

namespace mla::cpu {
namespace {

// The CPUs the calling thread may run on.
std::vector<int> my_mask() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(pthread_getaffinity_np(pthread_self(), sizeof(set), &set), 0);
  std::vector<int> cpus;
  for (int c = 0; c < CPU_SETSIZE; ++c)
    if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}

void set_my_mask(const std::vector<int>& cpus) {
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int c : cpus) CPU_SET(c, &set);
  ASSERT_EQ(pthread_setaffinity_np(pthread_self(), sizeof(set), &set), 0);
}

// Where each worker ran in one run: its CPU and its affinity mask, read by the worker itself.
struct Placement {
  std::vector<int> cpu;
  std::vector<std::vector<int>> mask;
};

Placement place(ThreadPool& pool, int n) {
  Placement p{std::vector<int>(n), std::vector<std::vector<int>>(n)};
  pool.run(n, [&](int w) {
    p.cpu[w] = sched_getcpu();
    p.mask[w] = my_mask();
  });
  return p;
}

// Runs f on a thread of its own, so that the test thread's affinity stays as it was.
template <class F>
void on_own_thread(F&& f) {
  std::thread t(std::forward<F>(f));
  t.join();
}

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

TEST(ThreadPool, WorkerLeavesTheCpuTheCallerMovesTo) {
  // The caller is pinned (by the application) to each allowed CPU in turn, including the ones the
  // pool's thread sits on: the thread must always end up pinned elsewhere, never sharing the
  // caller's core. (The pool used to pin its thread to the second allowed CPU whatever the caller.)
  on_own_thread([] {
    const std::vector<int> cpus = my_mask();
    ThreadPool pool(2);
    if (cpus.size() < 2) {  // one CPU: nothing to pin to apart from the caller's
      EXPECT_EQ(pool.worker_cpus(), (std::vector<int>{-1, -1}));
      return;
    }
    for (int round = 0; round < 2; ++round) {
      for (int c : cpus) {
        set_my_mask({c});
        const Placement p = place(pool, 2);
        SCOPED_TRACE(::testing::Message() << "caller pinned to cpu " << c);
        EXPECT_EQ(p.cpu[0], c);
        ASSERT_EQ(p.mask[1].size(), 1u) << "the worker is pinned to one CPU";
        EXPECT_NE(p.mask[1][0], c);
        EXPECT_NE(p.cpu[1], c);
        EXPECT_TRUE(std::count(cpus.begin(), cpus.end(), p.mask[1][0]));
        EXPECT_EQ(pool.worker_cpus()[1], p.mask[1][0]);
      }
    }
  });
}

TEST(ThreadPool, ThreadsNeverOnTheCallersCpuAtAnySize) {
  on_own_thread([] {
    const std::vector<int> cpus = my_mask();
    const int n = static_cast<int>(cpus.size());
    set_my_mask({cpus.back()});  // the caller sits where a pool would have put its last thread
    ThreadPool pool(n, cpus);    // as many workers as CPUs: all pinned, one CPU each
    const Placement p = place(pool, n);
    std::vector<int> used = {cpus.back()};
    for (int w = 1; w < n; ++w) {
      ASSERT_EQ(p.mask[w].size(), 1u) << "worker " << w;
      used.push_back(p.mask[w][0]);
    }
    std::sort(used.begin(), used.end());
    EXPECT_EQ(used, cpus) << "caller and threads on distinct CPUs, all of them allowed";
  });
}

TEST(ThreadPool, MoreThreadsThanCpusAreNotPinned) {
  on_own_thread([] {
    const std::vector<int> cpus = my_mask();
    const int n = static_cast<int>(cpus.size()) + 2;
    ThreadPool pool(n);
    const Placement p = place(pool, n);
    for (int w = 0; w < n; ++w) {
      EXPECT_EQ(pool.worker_cpus()[w], -1) << "worker " << w;
      EXPECT_EQ(p.mask[w], cpus) << "worker " << w << " may run on every allowed CPU";
    }
    // Grown past the CPUs later: the threads pinned until then are let go as well.
    ThreadPool grown(2);
    grown.grow(n);
    const Placement q = place(grown, n);
    for (int w = 1; w < n; ++w) EXPECT_EQ(q.mask[w], cpus) << "worker " << w;
  });
}

TEST(ThreadPool, StaysInsideARestrictedAffinityMask) {
  // A caller restricted (taskset, cgroups) to part of the machine: the pool's threads stay there.
  on_own_thread([] {
    const std::vector<int> all = my_mask();
    const std::vector<int> part(all.begin() + all.size() / 2, all.end());  // at least one CPU
    set_my_mask(part);
    EXPECT_EQ(ThreadPool::available_cpus(), static_cast<int>(part.size()));
    for (int n : {2, static_cast<int>(part.size()), static_cast<int>(part.size()) + 1}) {
      ThreadPool pool(n);
      const Placement p = place(pool, n);
      for (int w = 0; w < n; ++w)
        for (int c : p.mask[w])
          EXPECT_TRUE(std::count(part.begin(), part.end(), c))
              << "worker " << w << " of " << n << " may run on cpu " << c;
    }
  });
}

TEST(ThreadPool, TwoPoolsKeepOffTheCallerAndApart) {
  on_own_thread([] {
    const std::vector<int> cpus = my_mask();
    if (cpus.size() < 2) return;  // (covered by WorkerLeavesTheCpuTheCallerMovesTo)
    set_my_mask({cpus[0]});
    ThreadPool a(2, cpus), b(2, cpus);
    const Placement pa = place(a, 2), pb = place(b, 2);
    ASSERT_EQ(pa.mask[1].size(), 1u);
    ASSERT_EQ(pb.mask[1].size(), 1u);
    EXPECT_NE(pa.mask[1][0], cpus[0]);
    EXPECT_NE(pb.mask[1][0], cpus[0]);
    // With a CPU to spare the second pool's thread takes it rather than the first pool's.
    if (cpus.size() >= 3) {
      EXPECT_NE(pa.mask[1][0], pb.mask[1][0]);
    }
  });
}

TEST(ThreadPool, ChooseCpuForAnyCpuCount) {
  // The placement rule at machine sizes this host does not have: 256 CPUs, a caller on CPU 17,
  // one pool of 256 threads (255 pinned), then pools of 4 that must spread.
  std::vector<int> cpus(256);
  for (int c = 0; c < 256; ++c) cpus[c] = c;
  std::vector<int> load(256, 0);
  std::vector<bool> taken(256, false);
  auto is_taken = [&](int c) { return static_cast<bool>(taken[c]); };
  auto pinned = [&](int c) { return load[c]; };
  for (int w = 1; w < 256; ++w) {
    const int c = choose_cpu(cpus, 17, is_taken, pinned);
    ASSERT_GE(c, 0) << "worker " << w;
    ASSERT_NE(c, 17);
    ASSERT_FALSE(taken[c]) << "cpu " << c << " twice";
    taken[c] = true;
  }
  EXPECT_EQ(choose_cpu(cpus, 17, is_taken, pinned), -1) << "every CPU taken or the caller's";

  std::fill(taken.begin(), taken.end(), false);
  std::vector<int> seen;
  for (int pool = 0; pool < 8; ++pool) {
    std::vector<bool> mine(256, false);
    auto mine_taken = [&](int c) { return static_cast<bool>(mine[c]); };
    for (int w = 1; w < 4; ++w) {
      const int c = choose_cpu(cpus, 0, mine_taken, pinned);
      ASSERT_NE(c, 0);
      EXPECT_EQ(load[c], 0) << "pool " << pool << " doubled up on cpu " << c;
      mine[c] = true;
      ++load[c];
      seen.push_back(c);
    }
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()), seen.end()) << "8 pools x 3 threads apart";

  // A CPU set that is not 0..n-1 (taskset -c 4,6,9): the earliest free one in the set's order.
  const std::vector<int> odd = {4, 6, 9};
  std::vector<int> none(256, 0);
  auto free_all = [](int) { return false; };
  auto zero = [&](int c) { return none[c]; };
  EXPECT_EQ(choose_cpu(odd, 4, free_all, zero), 6);
  EXPECT_EQ(choose_cpu(odd, -1, free_all, zero), 4);
}

TEST(ThreadPool, ExplicitCpuSetIsChecked) {
  EXPECT_THROW(ThreadPool(2, {-1}), Error);
  const std::vector<int> cpus = my_mask();
  ThreadPool pool(2, {cpus.back()});  // one CPU for two workers: unpinned, but inside the set
  const Placement p = place(pool, 2);
  EXPECT_EQ(p.mask[1], std::vector<int>{cpus.back()});
}

}  // namespace
}  // namespace mla::cpu
