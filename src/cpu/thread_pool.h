// A persistent thread pool for the decode operators: threads are created once (never per call), the
// calling thread is worker 0, and run(n, fn) hands fn(1..n-1) to the pool's threads with one store
// and at most one futex wake each, so dispatching a layer's attention costs about a microsecond
// rather than a thread start. Separate from the kernels (they never decide parallelism) and from
// the planner (which only says what each worker does).
//
// Waiting: a worker that has finished spins on its own cache line for a short while (~20 us, so the
// next layer's call finds it awake), then sleeps on a futex so an idle pool burns no CPU. Nobody
// spins where that would take a CPU from a thread that works: not with more threads than CPUs, not
// a worker whose CPU another pool's thread is pinned to as well, not the caller on a CPU a pool
// thread is pinned to.
//
// Pinning: each thread w >= 1 is pinned to a CPU of its own from the pool's CPU set (by default the
// creating thread's affinity mask, so taskset / cgroup limits hold), so its scratch and its slice
// of the KV stay in that core's caches. The calling thread is never pinned (it belongs to the
// application), so the pool moves out of its way instead: threads are placed on CPUs other than the
// caller's current one, and every run re-checks (one vDSO call) that the caller has not moved onto
// a worker's CPU, re-pinning that worker to a free CPU if it has. Otherwise the caller and a worker
// would take turns on one core while another idles, which made two-thread calls run at 1x, 1.5x or
// 3x the time of the good case depending on where the scheduler had put the caller. Pools of one
// process spread over the CPUs (a process-wide count of pinned threads per CPU). With more threads
// than CPUs no thread is pinned. Failures to pin are ignored.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

namespace mla::cpu {

class ThreadPool {
 public:
  // A pool of `size` workers: the caller plus size - 1 threads (size >= 1), placed on `cpus`
  // (empty: the CPUs the creating thread may run on).
  explicit ThreadPool(int size = 1, std::vector<int> cpus = {});
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return size_.load(std::memory_order_acquire); }

  // Grows the pool to at least `size` workers (never shrinks). Waits for a run in progress.
  void grow(int size);

  // Runs fn(w) for every w in 0..n-1, fn(0) on the calling thread, and returns when all have
  // finished. Grows the pool when n > size(). An exception thrown by any fn(w) is rethrown here
  // (the one of the lowest w) after every worker has finished. A run started while another is in
  // progress (from inside a worker's fn, or from another thread) runs fn(0..n-1) one after another
  // on its calling thread instead: correct, not parallel, and it must not use scratch() (see
  // there).
  template <class F>
  void run(int n, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    run_impl(
        n, [](void* f, int w) { (*static_cast<Fn*>(f))(w); },
        const_cast<std::remove_const_t<Fn>*>(&fn));
  }

  // A 64-byte aligned buffer of at least `bytes` bytes for worker w, kept and reused across runs
  // (grown when a larger one is asked for, which invalidates the previous pointer). Call it from
  // worker w's fn, or outside any run. Each buffer is first touched by the thread that uses it.
  void* scratch(int worker, std::size_t bytes);

  // CPUs the calling thread may run on (its affinity mask; at least 1).
  static int available_cpus();

  // The CPU each worker's thread is pinned to, -1 where it is not (always for worker 0, the
  // caller).
  std::vector<int> worker_cpus() const;

 private:
  struct Slot;
  using Call = void (*)(void*, int);

  void run_impl(int n, Call call, void* ctx);
  void lock();  // takes busy_, waiting for a run in progress
  void start_threads(int size);
  void worker_loop(int w, Slot* slot);
  void place_threads(int first);  // pins threads first..size-1 (busy_ held)
  void move_off(int cpu);         // re-pins the thread pinned to `cpu`, if any (busy_ held)
  void unpin(int w);              // (busy_ held)
  bool caller_may_spin();         // re-checks the caller's CPU first (busy_ held)

  struct Job {
    Call call = nullptr;
    void* ctx = nullptr;
  };
  std::vector<std::unique_ptr<Slot>> slots_;  // [size]; slot 0 is the caller's (no thread)
  std::vector<int> cpus_;                     // the CPUs threads may be placed on
  std::atomic<int> size_{0};
  Job job_;
  alignas(64) std::atomic<uint32_t> pending_{0};  // workers 1..n-1 still running the current job
  std::atomic<uint32_t> caller_sleeping_{0};
  alignas(64) std::atomic<bool> busy_{false};  // a run (or a grow) is in progress
  std::atomic<bool> stop_{false};
  std::atomic<bool> spin_{true};  // false when threads outnumber CPUs
  bool pin_ = false;              // threads are pinned (they do not outnumber cpus_)
};

// Chooses a CPU from `cpus` for a thread to pin: not one `taken(cpu)` says this pool's threads
// hold, not `avoid` (the caller's CPU; -1: none), the fewest pool threads of the process pinned to
// it (`pinned(cpu)`) first, then the earliest in `cpus`. Returns -1 when every CPU is taken or
// avoided. Pure (the pool's placement rule), so that it is tested for any CPU count.
template <class Taken, class Pinned>
int choose_cpu(const std::vector<int>& cpus, int avoid, Taken&& taken, Pinned&& pinned) {
  int best = -1, best_load = 0;
  for (int c : cpus) {
    if (c == avoid || taken(c)) continue;
    const int load = pinned(c);
    if (best < 0 || load < best_load) best = c, best_load = load;
  }
  return best;
}

// The process-wide pool, grown to at least n workers (n <= 0: one per available CPU). Not to be
// called with a larger n from inside a run of that pool (growing waits for the run to end).
ThreadPool& thread_pool(int n);

}  // namespace mla::cpu
