// Dispatch overhead of the persistent thread pool (src/cpu/thread_pool.h): run() with workers that
// do nothing, back to back (the workers stay in their spin), and after a pause long enough that
// they have gone to sleep on their futex (the cost of waking them). Thread creation per call is the
// baseline the pool replaces.
#include <benchmark/benchmark.h>

#include <chrono>
#include <thread>

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

}  // namespace

BENCHMARK_MAIN();
