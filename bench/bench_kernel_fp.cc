// Google Benchmark cases for the AVX-512 bf16 and fp16 attention kernels, run directly on one work
// item (one sequence, all heads, the whole KV range, one thread), beside tight loops that measure
// this core's bf16-dot and fp32-FMA peaks, so every kernel case reports the fraction of its floor
// it reached (DESIGN §7): flops = 2 * rows * k * 1088 (576 for Q.K, 512 for P.V) per item.
//
//   bench_kernel_fp --benchmark_filter=bf16     counters: GFLOP/s, peak, frac_peak (of the bf16
//                                               dot or fp32 FMA rate, measured in-process)
//
// Times are the thread's CPU time, so a shared machine's other load inflates them less; cache
// contention from that load still shows. Cases: 256 rows (128 heads x q_len 2) at chunk 1..8 and
// both UP forms, 16 rows (16 heads x q_len 1), and the item sizes a two-core split produces.
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "harness/case.h"

namespace mla::cpu {
extern const KernelInfo decode_bf16_avx512bf16;
extern const KernelInfo decode_f16_avx512f;
}  // namespace mla::cpu

namespace mla {
namespace {

// Thread CPU time, not wall time: the machine is shared, and time spent descheduled is not the
// kernel's.
struct Clock {
  static double now() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
};

// ---- peaks: 16 independent accumulator chains (latency 4-6 cycles, 1-2 issues per cycle) -------
// The 16 instructions are one asm statement on 16 register operands: written as intrinsics over an
// array, GCC 12 stores the array to the stack every iteration and the loop measures the stores.

// Eight independent instructions (an asm statement takes at most 30 operands; "+v" counts twice).
#define MLA_PEAK_8(insn, x0, x1, x2, x3, x4, x5, x6, x7)                                        \
  asm volatile(insn " %8, %8, %0\n\t" insn " %8, %8, %1\n\t" insn " %8, %8, %2\n\t" insn        \
                    " %8, %8, %3\n\t" insn " %8, %8, %4\n\t" insn " %8, %8, %5\n\t" insn        \
                    " %8, %8, %6\n\t" insn " %8, %8, %7"                                        \
               : "+v"(x0), "+v"(x1), "+v"(x2), "+v"(x3), "+v"(x4), "+v"(x5), "+v"(x6), "+v"(x7) \
               : "v"(one))
#define MLA_PEAK_BODY(insn)                         \
  MLA_PEAK_8(insn, a0, a1, a2, a3, a4, a5, a6, a7); \
  MLA_PEAK_8(insn, a8, a9, a10, a11, a12, a13, a14, a15)

// Runs `iters` iterations of 16 instructions `insn` (zmm, AT&T operand order) and returns a value
// that depends on every accumulator.
#define MLA_PEAK_LOOP(insn, one_value)                                                            \
  __m512 a0 = _mm512_set1_ps(0.f), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, \
         a8 = a0, a9 = a0, a10 = a0, a11 = a0, a12 = a0, a13 = a0, a14 = a0, a15 = a0;            \
  const __m512 one = one_value;                                                                   \
  for (int64_t i = 0; i < iters; ++i) {                                                           \
    MLA_PEAK_BODY(insn);                                                                          \
  }                                                                                               \
  const __m512 sum = _mm512_add_ps(                                                               \
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),                  \
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),                 \
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),                \
                    _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));            \
  alignas(64) float lanes[16];                                                                    \
  _mm512_store_ps(lanes, sum);                                                                    \
  return lanes[0] + lanes[15];

constexpr int kChains = 16;

// vdpbf16ps: 16 lanes x 2 products, 1.0 x 1.0 (0x3f80 pairs): sums stay exact integers.
__attribute__((target("avx512f,avx512bf16"), noinline)) double bf16_dot_loop(int64_t iters) {
  MLA_PEAK_LOOP("vdpbf16ps", _mm512_castsi512_ps(_mm512_set1_epi16(0x3f80)))
}

// vfmadd231ps: 16 lanes x 1 product.
__attribute__((target("avx512f"), noinline)) double fp32_fma_loop(int64_t iters) {
  MLA_PEAK_LOOP("vfmadd231ps", _mm512_set1_ps(1.f))
}

// GFLOP/s of a loop (flops_per_iter per iteration), best of a few 50 ms trials.
template <class Loop>
double measure_peak(Loop loop, double flops_per_iter) {
  double best = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const int64_t iters = 2'000'000;
    const auto t0 = Clock::now();
    benchmark::DoNotOptimize(loop(iters));
    const double s = Clock::now() - t0;
    best = std::max(best, flops_per_iter * iters / s * 1e-9);
  }
  return best;
}

double bf16_peak() {
  static const double g = measure_peak(bf16_dot_loop, kChains * 32 * 2);
  return g;
}
double fp32_peak() {
  static const double g = measure_peak(fp32_fma_loop, kChains * 16 * 2);
  return g;
}

// The loops themselves as cases, for the record (the kernel cases use measure_peak's figure).
template <class Loop>
void run_peak(benchmark::State& state, Loop loop, double flops_per_iter) {
  const int64_t iters = 100'000;
  const auto t0 = Clock::now();
  for (auto _ : state) benchmark::DoNotOptimize(loop(iters));
  const double s = Clock::now() - t0;
  state.counters["GFLOP/s"] = flops_per_iter * iters * double(state.iterations()) / s * 1e-9;
}

void BM_PeakBf16Dot(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512bf16")) return state.SkipWithError("no AVX512-BF16");
  run_peak(state, bf16_dot_loop, kChains * 32 * 2);
}
BENCHMARK(BM_PeakBf16Dot);

void BM_PeakFp32Fma(benchmark::State& state) {
  if (!__builtin_cpu_supports("avx512f")) return state.SkipWithError("no AVX-512");
  run_peak(state, fp32_fma_loop, kChains * 16 * 2);
}
BENCHMARK(BM_PeakFp32Fma);

// ---- the kernels ------------------------------------------------------------------------------

// One case per (kv dtype, heads, q_len, k), built once: the cache fill is slow.
const bench::Case& get_case(KvDType kv, int heads, int q_len, int k) {
  static std::vector<std::unique_ptr<bench::Case>> cases;
  for (const auto& c : cases)
    if (c->spec().kv_dtype == kv && c->spec().heads == heads && c->spec().q_len == q_len &&
        c->spec().k == k)
      return *c;
  cases.push_back(std::make_unique<bench::Case>(bench::CaseSpec{
      .batch = 1, .k = k, .heads = heads, .q_len = q_len, .block_size = 64, .kv_dtype = kv}));
  return *cases.back();
}

// Args: heads, q_len, k, chunk, up (0 resident, 1 spill).
void BM_Kernel(benchmark::State& state, const cpu::KernelInfo* kernel) {
  if (!kernel->supported()) return state.SkipWithError("CPU lacks the instructions");
  const int heads = int(state.range(0)), q_len = int(state.range(1)), k = int(state.range(2));
  const int chunk = int(state.range(3));
  const UpForm up = state.range(4) ? UpForm::spill : UpForm::resident;
  const bench::Case& c = get_case(kernel->kv, heads, q_len, k);
  const DecodeParams p = c.params();
  std::vector<float> o(c.o_size()), lse(c.rows());
  cpu::Scratch scratch;
  const cpu::KernelArgs args =
      bench::whole_sequence_item(c, p, o.data(), lse.data(), chunk, up);
  kernel->run(args, scratch);  // warm: scratch allocated, cache in L3
  const double peak = kernel->kv == KvDType::bf16 ? bf16_peak() : fp32_peak();
  const auto t0 = Clock::now();
  for (auto _ : state) {
    kernel->run(args, scratch);
    benchmark::ClobberMemory();
  }
  const double s = Clock::now() - t0;
  const double flops = 2.0 * heads * q_len * double(k) * (kQkDim + kLatentDim);
  const double gflops = flops * double(state.iterations()) / s * 1e-9;
  state.counters["GFLOP/s"] = gflops;
  state.counters["peak"] = peak;
  state.counters["frac_peak"] = gflops / peak;
  state.counters["rows"] = heads * q_len;
}

void kernel_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "q_len", "k", "chunk", "spill"});
  for (int chunk : {1, 2, 4, 8}) b->Args({128, 2, 4096, chunk, 0});  // 256 rows
  b->Args({128, 2, 4096, 4, 1});                                     // the old UP form
  for (int chunk : {1, 4}) b->Args({16, 1, 4096, chunk, 0});         // 16 rows
  b->Args({16, 1, 4096, 4, 1});
  b->Args({64, 2, 4096, 4, 0});  // 256 rows split by heads over two cores: one core's item
  b->Args({64, 1, 4096, 4, 0});
  b->Args({128, 1, 4096, 4, 0});
  b->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

BENCHMARK_CAPTURE(BM_Kernel, bf16, &cpu::decode_bf16_avx512bf16)->Apply(kernel_args);
BENCHMARK_CAPTURE(BM_Kernel, f16, &cpu::decode_f16_avx512f)->Apply(kernel_args);

}  // namespace
}  // namespace mla

BENCHMARK_MAIN();
