// The persistent thread pool (thread_pool.h): per-worker wake words, spin-then-futex waiting,
// placement of the threads around the caller.
//
// Hand-off protocol. The caller writes job_, then bumps the epoch word of each worker 1..n-1 (its
// own cache line) and futex-wakes those that announced they sleep; each worker runs the job and
// decrements pending_; the one that brings it to 0 wakes the caller if the caller announced it
// sleeps. "Announce, then re-check" on one side and "publish, then check the announcement" on the
// other, all sequentially consistent, is what makes a lost wake-up impossible (if the sleeper's
// re-check misses the new value, the publisher's check sees the announcement and wakes it; and
// futex_wait itself refuses to sleep once the word has changed).
#include "cpu/thread_pool.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "mla/status.h"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace mla::cpu {
namespace {

// How long a worker (or the caller) spins before sleeping: long enough that back-to-back runs (one
// per layer, 61 layers a token) find the workers awake, short enough that a pool left idle between
// decode steps costs nothing measurable. A futex wake-up costs 5-50 us, hence 20 us.
constexpr auto kSpin = std::chrono::microseconds(20);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

void futex_wait(std::atomic<uint32_t>* word, uint32_t expected) {
#if defined(__linux__)
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT_PRIVATE, expected, nullptr,
          nullptr, 0);
#else
  word->wait(expected);
#endif
}

void futex_wake(std::atomic<uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
#else
  word->notify_all();
#endif
}

// Spins while *word == seen (for kSpin when spin is set), then sleeps until it changes; `sleeping`
// announces the sleep to the writer. Returns the new value.
uint32_t wait_for_change(std::atomic<uint32_t>& word, uint32_t seen,
                         std::atomic<uint32_t>& sleeping, bool spin) {
  if (spin) {
    const auto deadline = std::chrono::steady_clock::now() + kSpin;
    for (uint32_t i = 1;; ++i) {
      const uint32_t v = word.load(std::memory_order_acquire);
      if (v != seen) return v;
      cpu_relax();
      if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
    }
  }
  for (;;) {
    sleeping.store(1);
    const uint32_t v = word.load();
    if (v != seen) {
      sleeping.store(0, std::memory_order_relaxed);
      return v;
    }
    futex_wait(&word, seen);
  }
}

std::vector<int> affinity_cpus() {
  std::vector<int> cpus;
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
#endif
  if (cpus.empty()) {
    const unsigned n = std::thread::hardware_concurrency();
    for (unsigned c = 0; c < (n ? n : 1); ++c) cpus.push_back(static_cast<int>(c));
  }
  return cpus;
}

// Pool threads pinned to each CPU, over every pool of the process: placement spreads pools over the
// machine, and a thread sharing its CPU with another pool's thread does not spin.
#if defined(__linux__)
constexpr int kMaxCpus = CPU_SETSIZE;
#else
constexpr int kMaxCpus = 1024;
#endif
std::atomic<int> g_pinned[kMaxCpus];
std::mutex g_placement;  // one placement decision at a time, over every pool

int pinned_on(int cpu) {
  return cpu >= 0 && cpu < kMaxCpus ? g_pinned[cpu].load(std::memory_order_relaxed) : 0;
}

// The CPU the calling thread runs on now, or -1.
int current_cpu() {
#if defined(__linux__)
  return sched_getcpu();
#else
  return -1;
#endif
}

// Restricts a thread to one CPU (cpu >= 0) or to all of `all` (cpu < 0). False when refused.
bool set_affinity(std::thread& t, int cpu, const std::vector<int>& all) {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) {
    if (cpu >= kMaxCpus) return false;
    CPU_SET(cpu, &set);
  } else {
    for (int c : all)
      if (c < kMaxCpus) CPU_SET(c, &set);
  }
  return pthread_setaffinity_np(t.native_handle(), sizeof(set), &set) == 0;
#else
  return cpu < 0;
#endif
}

}  // namespace

struct alignas(64) ThreadPool::Slot {
  std::atomic<uint32_t> epoch{0};     // bumped by the caller to hand this worker the current job
  std::atomic<uint32_t> sleeping{0};  // the worker sleeps on epoch
  std::exception_ptr error;           // what the worker's fn threw in the current run
  std::atomic<int> cpu{-1};           // the CPU the thread is pinned to, or -1
  std::thread thread;                 // none for slot 0 (the caller)
  void* scratch = nullptr;
  std::size_t scratch_bytes = 0;
  ~Slot() { std::free(scratch); }
};

int ThreadPool::available_cpus() { return static_cast<int>(affinity_cpus().size()); }

ThreadPool::ThreadPool(int size, std::vector<int> cpus)
    : cpus_(cpus.empty() ? affinity_cpus() : std::move(cpus)) {
  MLA_CHECK(size >= 1, "thread pool: size = " << size << " must be at least 1");
  for (int c : cpus_)
    MLA_CHECK(c >= 0 && c < kMaxCpus,
              "thread pool: cpu " << c << " is outside 0.." << kMaxCpus - 1);
  start_threads(size);
}

std::vector<int> ThreadPool::worker_cpus() const {
  std::vector<int> out;
  for (const auto& s : slots_) out.push_back(s->cpu.load(std::memory_order_relaxed));
  return out;
}

ThreadPool::~ThreadPool() {
  lock();
  stop_.store(true);
  for (size_t w = 1; w < slots_.size(); ++w) {
    Slot& s = *slots_[w];
    s.epoch.store(s.epoch.load(std::memory_order_relaxed) + 1);
    futex_wake(&s.epoch);
  }
  for (size_t w = 1; w < slots_.size(); ++w) slots_[w]->thread.join();
  std::lock_guard<std::mutex> g(g_placement);
  for (size_t w = 1; w < slots_.size(); ++w) {
    const int c = slots_[w]->cpu.load(std::memory_order_relaxed);
    if (c >= 0) g_pinned[c].fetch_sub(1, std::memory_order_relaxed);
  }
}

void ThreadPool::lock() {
  while (busy_.exchange(true, std::memory_order_acquire)) std::this_thread::yield();
}

void ThreadPool::grow(int size) {
  if (size <= this->size()) return;
  lock();
  try {
    start_threads(size);
  } catch (...) {
    busy_.store(false, std::memory_order_release);
    throw;
  }
  busy_.store(false, std::memory_order_release);
}

// Called with busy_ held (or from the constructor).
void ThreadPool::start_threads(int size) {
  const int old = static_cast<int>(slots_.size());
  if (size <= old) return;
  // Pinned threads need a CPU each apart from the caller's.
  const bool pin = size <= static_cast<int>(cpus_.size());
  spin_.store(pin, std::memory_order_relaxed);
  for (int w = old; w < size; ++w) {
    slots_.push_back(std::make_unique<Slot>());
    if (w == 0) continue;
    Slot* s = slots_[w].get();
    try {
      s->thread = std::thread([this, w, s] { worker_loop(w, s); });
    } catch (...) {  // no more threads: keep the pool as it was grown so far
      slots_.pop_back();
      size_.store(static_cast<int>(slots_.size()), std::memory_order_release);
      throw;
    }
  }
  const bool was_pinned = pin_;
  pin_ = pin;
  place_threads(was_pinned && pin ? old : 1);
  size_.store(size, std::memory_order_release);
}

void ThreadPool::unpin(int w) {
  Slot& s = *slots_[w];
  const int c = s.cpu.exchange(-1, std::memory_order_relaxed);
  if (c >= 0) g_pinned[c].fetch_sub(1, std::memory_order_relaxed);
}

// Pins threads first..size-1 to CPUs of their own away from the caller's, or, once threads
// outnumber CPUs, lets every thread run anywhere in cpus_ (given explicitly: a thread inherits its
// creator's mask, which may be narrower).
void ThreadPool::place_threads(int first) {
  std::lock_guard<std::mutex> g(g_placement);
  const int n = static_cast<int>(slots_.size());
  if (!pin_) {
    for (int w = std::max(first, 1); w < n; ++w) {
      unpin(w);
      set_affinity(slots_[w]->thread, -1, cpus_);
    }
    return;
  }
  const int caller = current_cpu();
  auto taken = [&](int c) {
    for (int w = 1; w < n; ++w)
      if (slots_[w]->cpu.load(std::memory_order_relaxed) == c) return true;
    return false;
  };
  for (int w = std::max(first, 1); w < n; ++w) {
    unpin(w);
    const int c = choose_cpu(cpus_, caller, taken, pinned_on);
    if (c >= 0 && set_affinity(slots_[w]->thread, c, cpus_)) {
      g_pinned[c].fetch_add(1, std::memory_order_relaxed);
      slots_[w]->cpu.store(c, std::memory_order_relaxed);
    } else {
      set_affinity(slots_[w]->thread, -1, cpus_);
    }
  }
}

// The caller has moved onto `cpu`: the thread pinned there moves to a free CPU.
void ThreadPool::move_off(int cpu) {
  const int n = static_cast<int>(slots_.size());
  int w = 1;
  while (w < n && slots_[w]->cpu.load(std::memory_order_relaxed) != cpu) ++w;
  if (w == n) return;
  std::lock_guard<std::mutex> g(g_placement);
  auto taken = [&](int c) {
    for (int v = 1; v < n; ++v)
      if (slots_[v]->cpu.load(std::memory_order_relaxed) == c) return true;
    return false;
  };
  const int c = choose_cpu(cpus_, cpu, taken, pinned_on);
  if (c < 0 || !set_affinity(slots_[w]->thread, c, cpus_)) return;  // stays; the caller won't spin
  g_pinned[cpu].fetch_sub(1, std::memory_order_relaxed);
  g_pinned[c].fetch_add(1, std::memory_order_relaxed);
  slots_[w]->cpu.store(c, std::memory_order_relaxed);
}

bool ThreadPool::caller_may_spin() {
  if (!pin_) return false;
  const int cpu = current_cpu();
  if (cpu < 0) return true;
  if (pinned_on(cpu) > 0) move_off(cpu);
  return pinned_on(cpu) == 0;
}

void ThreadPool::worker_loop(int w, Slot* s) {
  uint32_t seen = 0;
  for (;;) {
    // Spin only on a CPU of its own (see the header).
    const int cpu = s->cpu.load(std::memory_order_relaxed);
    const bool spin = spin_.load(std::memory_order_relaxed) && (cpu < 0 || pinned_on(cpu) == 1);
    seen = wait_for_change(s->epoch, seen, s->sleeping, spin);
    if (stop_.load(std::memory_order_acquire)) return;
    try {
      job_.call(job_.ctx, w);
    } catch (...) {
      s->error = std::current_exception();
    }
    if (pending_.fetch_sub(1) == 1 && caller_sleeping_.load()) futex_wake(&pending_);
  }
}

void ThreadPool::run_impl(int n, Call call, void* ctx) {
  MLA_CHECK(n >= 0, "thread pool: run with n = " << n << " workers");
  if (n == 0) return;
  if (busy_.exchange(true, std::memory_order_acquire)) {
    // Nested in a worker's fn, or concurrent with another thread's run: one after another, here.
    std::exception_ptr first;
    for (int w = 0; w < n; ++w) {
      try {
        call(ctx, w);
      } catch (...) {
        if (!first) first = std::current_exception();
      }
    }
    if (first) std::rethrow_exception(first);
    return;
  }
  struct Unlock {
    std::atomic<bool>& busy;
    ~Unlock() { busy.store(false, std::memory_order_release); }
  } unlock{busy_};
  if (n > static_cast<int>(slots_.size())) start_threads(n);
  // Before waking anyone: a worker pinned to the caller's CPU would take turns with it there.
  const bool caller_spin = n > 1 && caller_may_spin();

  job_ = {call, ctx};
  pending_.store(static_cast<uint32_t>(n - 1), std::memory_order_relaxed);
  for (int w = 1; w < n; ++w) {
    Slot& s = *slots_[w];
    s.epoch.store(s.epoch.load(std::memory_order_relaxed) + 1);  // releases job_ and pending_
    if (s.sleeping.load()) futex_wake(&s.epoch);
  }

  std::exception_ptr first;
  try {
    call(ctx, 0);
  } catch (...) {
    first = std::current_exception();
  }

  if (n > 1) {
    bool done = false;
    if (caller_spin) {
      const auto deadline = std::chrono::steady_clock::now() + kSpin;
      for (uint32_t i = 1; !(done = pending_.load(std::memory_order_acquire) == 0); ++i) {
        cpu_relax();
        if (i % 64 == 0 && std::chrono::steady_clock::now() > deadline) break;
      }
    }
    if (!done) {
      caller_sleeping_.store(1);
      for (uint32_t v; (v = pending_.load()) != 0;) futex_wait(&pending_, v);
      caller_sleeping_.store(0, std::memory_order_relaxed);
    }
  }

  for (int w = 1; w < n; ++w) {
    Slot& s = *slots_[w];
    if (s.error && !first) first = s.error;
    s.error = nullptr;
  }
  if (first) std::rethrow_exception(first);
}

void* ThreadPool::scratch(int worker, std::size_t bytes) {
  MLA_CHECK(worker >= 0 && worker < size(),
            "thread pool: scratch for worker " << worker << " of a pool of " << size());
  Slot& s = *slots_[worker];
  if (bytes > s.scratch_bytes || !s.scratch) {
    const std::size_t rounded = (std::max<std::size_t>(bytes, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    MLA_CHECK(
        p, "thread pool: cannot allocate " << rounded << " bytes of scratch for worker " << worker);
    std::free(s.scratch);
    s.scratch = p;
    s.scratch_bytes = rounded;
  }
  return s.scratch;
}

ThreadPool& thread_pool(int n) {
  static ThreadPool pool(1);
  if (n <= 0) n = ThreadPool::available_cpus();
  pool.grow(n);
  return pool;
}

}  // namespace mla::cpu
