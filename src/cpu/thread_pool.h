// A persistent thread pool for the decode operators: threads are created once (never per call), the
// calling thread is worker 0, and run(n, fn) hands fn(1..n-1) to the pool's threads with one store
// and at most one futex wake each, so dispatching a layer's attention costs about a microsecond
// rather than a thread start. Separate from the kernels (they never decide parallelism) and from
// the planner (which only says what each worker does).
//
// Waiting: a worker that has finished spins on its own cache line for a short while (~20 us, so the
// next layer's call finds it awake), then sleeps on a futex so an idle pool burns no CPU. With more
// threads than CPUs nobody spins: a spinning thread would take the CPU from one that works.
//
// Pinning: thread w (w >= 1) is pinned to the w-th CPU the process may run on, so its scratch and
// its slice of the KV stay in that core's caches; the calling thread is never pinned (it belongs to
// the application). With more threads than CPUs no thread is pinned. Failures to pin are ignored.
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
  // A pool of `size` workers: the caller plus size - 1 threads (size >= 1).
  explicit ThreadPool(int size = 1);
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

  // CPUs this process may run on (its affinity mask; at least 1).
  static int available_cpus();

 private:
  struct Slot;
  using Call = void (*)(void*, int);

  void run_impl(int n, Call call, void* ctx);
  void lock();  // takes busy_, waiting for a run in progress
  void start_threads(int size);
  void worker_loop(int w, Slot* slot);

  struct Job {
    Call call = nullptr;
    void* ctx = nullptr;
  };
  std::vector<std::unique_ptr<Slot>> slots_;  // [size]; slot 0 is the caller's (no thread)
  std::vector<int> cpus_;                     // the CPUs of the process's affinity mask
  std::atomic<int> size_{0};
  Job job_;
  alignas(64) std::atomic<uint32_t> pending_{0};  // workers 1..n-1 still running the current job
  std::atomic<uint32_t> caller_sleeping_{0};
  alignas(64) std::atomic<bool> busy_{false};  // a run (or a grow) is in progress
  std::atomic<bool> stop_{false};
  std::atomic<bool> spin_{true};  // false when threads outnumber CPUs
};

// The process-wide pool, grown to at least n workers (n <= 0: one per available CPU). Not to be
// called with a larger n from inside a run of that pool (growing waits for the run to end).
ThreadPool& thread_pool(int n);

}  // namespace mla::cpu
