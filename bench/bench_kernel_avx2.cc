// Google Benchmark cases for the AVX2 attention kernels (int8, bf16, fp16), run directly on one
// work item (one sequence, all heads, the whole KV range, one thread), beside tight loops that
// measure this core's AVX2 peaks, so every case reports the fraction of its floor it reached
// (DESIGN §7) against what AVX2 can reach, also on a CPU that has AVX-512:
//
//   bf16, fp16   2 * rows * k * 1088 flops / fp32 FMA rate (vfmadd231ps ymm)
//   int8         2 * rows * k * 1024 / int8 rate (vpmaddubsw + vpmaddwd + vpaddd ymm, the loop of
//                the roofline program) + 2 * rows * k * 64 / fp32 FMA rate (the rope)
//
//   bench_kernel_avx2 --benchmark_filter=i8     counters: GFLOP/s, frac_floor
//
// Times are the thread's CPU time, so a shared machine's other load inflates them less (cache and
// core-sibling contention from that load still shows).
#include <benchmark/benchmark.h>
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/attention/kernel.h"
#include "harness/case.h"

namespace mla {
namespace {

struct Clock {
  static double now() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
};

bool has_avx2() { return cpu::cpu_has_avx2_set(); }

// 12 independent vfmadd231ps ymm per iteration: 12 x 8 x 2 flops.
__attribute__((target("avx2,fma"), noinline)) double fma_loop(int64_t iters) {
  const __m256 a = _mm256_set1_ps(1.f), b = _mm256_set1_ps(1.f);
  alignas(32) float out[8];
  for (int64_t i = 0; i < iters; ++i)
    asm volatile(
#define MLA_X(i) "vfmadd231ps %0, %1, %%ymm" #i "\n\t"
        MLA_X(0) MLA_X(1) MLA_X(2) MLA_X(3) MLA_X(4) MLA_X(5) MLA_X(6) MLA_X(7) MLA_X(8) MLA_X(9)
            MLA_X(10) MLA_X(11)
#undef MLA_X
        "vmovups %%ymm0, (%2)"
        :
        : "x"(a), "x"(b), "r"(out)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "memory");
  return out[0];
}

// The roofline program's AVX2 int8 loop (roofline/ceilings.cc): 6 accumulators, each fed by
// vpmaddubsw + vpmaddwd(1) into its own temporary: 6 x 32 products x 2 ops per iteration.
__attribute__((target("avx2"), noinline)) double i8_loop(int64_t iters) {
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5), one = _mm256_set1_epi16(1);
  alignas(32) int32_t out[8];
  for (int64_t i = 0; i < iters; ++i)
    asm volatile(
#define MLA_X(i, t)                                    \
  "vpmaddubsw %0, %1, %%ymm" #t "\n\t"                 \
  "vpmaddwd %2, %%ymm" #t ", %%ymm" #t "\n\t"          \
  "vpaddd %%ymm" #t ", %%ymm" #i ", %%ymm" #i "\n\t"
        MLA_X(0, 6) MLA_X(1, 7) MLA_X(2, 8) MLA_X(3, 9) MLA_X(4, 10) MLA_X(5, 11)
#undef MLA_X
        "vmovdqu %%ymm0, (%3)"
        :
        : "x"(a), "x"(b), "x"(one), "r"(out)
        : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
          "xmm11", "memory");
  return out[0];
}

// G(FL)OP/s of a loop, best of a few trials.
template <class Loop>
double measure_peak(Loop loop, double ops_per_iter) {
  double best = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const int64_t iters = 2'000'000;
    const double t0 = Clock::now();
    benchmark::DoNotOptimize(loop(iters));
    best = std::max(best, ops_per_iter * double(iters) / (Clock::now() - t0) * 1e-9);
  }
  return best;
}
double fma_peak() {
  static const double g = measure_peak(fma_loop, 12 * 8 * 2);
  return g;
}
double i8_peak() {
  static const double g = measure_peak(i8_loop, 6 * 32 * 2);
  return g;
}

void BM_PeakAvx2Fma(benchmark::State& state) {
  if (!has_avx2()) return state.SkipWithError("no AVX2/FMA");
  for (auto _ : state) benchmark::DoNotOptimize(fma_loop(100'000));
  state.counters["GFLOP/s"] = fma_peak();
}
BENCHMARK(BM_PeakAvx2Fma);

void BM_PeakAvx2Int8(benchmark::State& state) {
  if (!has_avx2()) return state.SkipWithError("no AVX2");
  for (auto _ : state) benchmark::DoNotOptimize(i8_loop(100'000));
  state.counters["GOP/s"] = i8_peak();
}
BENCHMARK(BM_PeakAvx2Int8);

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
  const cpu::KernelArgs args = bench::whole_sequence_item(c, p, o.data(), lse.data(), chunk, up);
  kernel->run(args, scratch);  // warm: scratch allocated, cache in L3
  const double rk = double(heads) * q_len * double(k);
  const double floor_s =
      kernel->kv == KvDType::int8
          ? 2 * rk * kLatentDim * 2 / (i8_peak() * 1e9) + 2 * rk * kRopeDim / (fma_peak() * 1e9)
          : 2 * rk * (kQkDim + kLatentDim) / (fma_peak() * 1e9);
  const double t0 = Clock::now();
  for (auto _ : state) {
    kernel->run(args, scratch);
    benchmark::ClobberMemory();
  }
  const double s = (Clock::now() - t0) / double(state.iterations());
  state.counters["GFLOP/s"] = 2 * rk * (kQkDim + kLatentDim) / s * 1e-9;
  state.counters["frac_floor"] = floor_s / s;
  state.counters["rows"] = heads * q_len;
}

void kernel_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "q_len", "k", "chunk", "spill"});
  for (int chunk : {1, 4}) b->Args({128, 2, 4096, chunk, 0});  // 256 rows
  b->Args({128, 2, 4096, 4, 1});                               // the old UP form
  b->Args({16, 1, 4096, 4, 0});                                // 16 rows
  b->Args({64, 2, 4096, 4, 0});  // 256 rows split by heads over two cores: one core's item
  b->Unit(benchmark::kMillisecond)->MinTime(0.3);
}

BENCHMARK_CAPTURE(BM_Kernel, i8, &cpu::decode_i8_avx2)->Apply(kernel_args);
BENCHMARK_CAPTURE(BM_Kernel, bf16, &cpu::decode_bf16_avx2)->Apply(kernel_args);
BENCHMARK_CAPTURE(BM_Kernel, f16, &cpu::decode_f16_avx2)->Apply(kernel_args);

}  // namespace
}  // namespace mla

BENCHMARK_MAIN();
