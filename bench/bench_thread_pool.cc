// Dispatch overhead of the persistent thread pool (src/cpu/thread_pool.h): run() with workers that
// do nothing, back to back (the workers stay in their spin), and after a pause long enough that
// they have gone to sleep on their futex (the cost of waking them). Thread creation per call is the
// baseline the pool replaces. BM_run_placement runs a small call (~10 us of work per worker, about
// one decode step of b1 k512 h16) and counts the runs in which the caller and a worker ran on the
// same CPU: the per-process placement that made small two-thread calls bimodal (run it in many
// processes one after another; the count, not the time, is the fact to compare).
#include <benchmark/benchmark.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "cpu/thread_pool.h"

namespace {

using mla::cpu::ThreadPool;

void BM_run_empty(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  ThreadPool pool(n);
  for (auto _ : state) pool.run(n, [&](int w) { benchmark::DoNotOptimize(w); });
}
BENCHMARK(BM_run_empty)->Arg(1)->Arg(2)->Arg(4)->UseRealTime();

// The first run after the workers fell asleep: sleep 200 us (past the 20 us spin), time the run.
void BM_run_after_idle(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  ThreadPool pool(n);
  for (auto _ : state) {
    state.PauseTiming();
    std::this_thread::sleep_for(std::chrono::microseconds(200));
    state.ResumeTiming();
    pool.run(n, [&](int w) { benchmark::DoNotOptimize(w); });
  }
}
BENCHMARK(BM_run_after_idle)->Arg(2)->UseRealTime()->Iterations(2000);

// What the pool avoids: starting and joining n - 1 threads per call.
void BM_thread_per_call(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    std::thread t[8];
    for (int w = 1; w < n; ++w) t[w] = std::thread([w] { benchmark::DoNotOptimize(w); });
    for (int w = 1; w < n; ++w) t[w].join();
  }
}
BENCHMARK(BM_thread_per_call)->Arg(2)->UseRealTime();

void BM_run_placement(benchmark::State& state) {
  const int n = static_cast<int>(state.range(0));
  ThreadPool pool(n);
  std::vector<std::atomic<int>> cpu(n);
  int64_t runs = 0, shared = 0;
  for (auto _ : state) {
    pool.run(n, [&](int w) {
      cpu[w].store(sched_getcpu(), std::memory_order_relaxed);
      const auto end = std::chrono::steady_clock::now() + std::chrono::microseconds(10);
      while (std::chrono::steady_clock::now() < end) benchmark::ClobberMemory();
    });
    bool same = false;
    for (int w = 1; w < n; ++w) same = same || cpu[w].load() == cpu[0].load();
    shared += same;
    ++runs;
  }
  state.counters["shared_cpu_runs"] = static_cast<double>(shared) / static_cast<double>(runs);
}
BENCHMARK(BM_run_placement)->Arg(2)->UseRealTime()->MinTime(0.3);

}  // namespace

BENCHMARK_MAIN();
