// Google Benchmark cases for the AVX-512 VNNI int8-cache attention kernel, run directly on one work
// item (one sequence, all heads, the whole KV range, one thread), with the fraction of the item's
// floor it reached (DESIGN §7):
//
//   floor = 2 * rows * k * 1024 / int8-dot rate + 2 * rows * k * 64 / bf16-dot rate
//
// (S_nope and P.V on vpdpbusd, S_rope on vdpbf16ps), the two rates measured in-process with the
// roofline's own loops (roofline/ceilings.h). Counters: GOPS = 2 * rows * k * 1088 / time (the
// int8 and bf16 operations together), frac_floor = floor / time.
//
//   bench_kernel_i8 --benchmark_filter='rows:256'
//
// Times are the thread's CPU time, so a shared machine's other load inflates them less; cache
// contention from that load still shows. Cases: 256 rows (128 heads x q_len 2) at chunk 1..8, both
// UP forms and the three scale modes; 16 rows (16 heads x q_len 1); the items a split over two
// cores produces.
#include <benchmark/benchmark.h>
#include <time.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "cpu/attention/kernel.h"
#include "roofline/ceilings.h"
#include "harness/case.h"

namespace mla::cpu {
extern const KernelInfo decode_i8_avx512vnni;
}  // namespace mla::cpu

namespace mla {
namespace {

double thread_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

// Operations per second of one of the roofline's loops (16 chains x ops_per_insn), best of a few
// 20 ms trials.
template <class Loop>
double measure_rate(Loop loop, double ops_per_insn) {
  double best = 0;
  for (int trial = 0; trial < 5; ++trial) {
    const uint64_t iters = 500'000;
    const double t0 = thread_seconds();
    benchmark::DoNotOptimize(loop(iters));
    const double s = thread_seconds() - t0;
    best = std::max(best, double(iters) * ceilings_detail::kZmmChains * ops_per_insn / s);
  }
  return best;
}
double int8_rate() {
  static const double r = measure_rate(ceilings_detail::int8_dot_avx512vnni, 2 * 64);
  return r;
}
double bf16_rate() {
  static const double r = measure_rate(ceilings_detail::bf16_dot_avx512bf16, 2 * 32);
  return r;
}

void BM_PeakInt8Dot(benchmark::State& state) {
  if (!cpu::decode_i8_avx512vnni.supported()) return state.SkipWithError("no AVX512-VNNI/BF16");
  for (auto _ : state) benchmark::DoNotOptimize(int8_rate());
  state.counters["GOPS"] = int8_rate() * 1e-9;
  state.counters["bf16_GFLOPS"] = bf16_rate() * 1e-9;
}
BENCHMARK(BM_PeakInt8Dot)->Iterations(1);

// One case per (heads, q_len, k, scale mode), built once: the cache fill is slow.
const bench::Case& get_case(int heads, int q_len, int k, KvScale scale) {
  static std::vector<std::unique_ptr<bench::Case>> cases;
  for (const auto& c : cases)
    if (c->spec().heads == heads && c->spec().q_len == q_len && c->spec().k == k &&
        c->spec().kv_scale == scale)
      return *c;
  cases.push_back(std::make_unique<bench::Case>(bench::CaseSpec{.batch = 1,
                                                                .k = k,
                                                                .heads = heads,
                                                                .q_len = q_len,
                                                                .block_size = 64,
                                                                .kv_dtype = KvDType::int8,
                                                                .kv_scale = scale}));
  return *cases.back();
}

// Args: heads, q_len, k, chunk, spill (0 resident, 1 spill), scale (0 token, 1 tensor, 2 channel).
void BM_KernelI8(benchmark::State& state) {
  const cpu::KernelInfo& kernel = cpu::decode_i8_avx512vnni;
  if (!kernel.supported()) return state.SkipWithError("CPU lacks the instructions");
  const int heads = int(state.range(0)), q_len = int(state.range(1)), k = int(state.range(2));
  const int chunk = int(state.range(3));
  const UpForm up = state.range(4) ? UpForm::spill : UpForm::resident;
  const KvScale scale = state.range(5) == 0   ? KvScale::token
                        : state.range(5) == 1 ? KvScale::tensor
                                              : KvScale::channel;
  const bench::Case& c = get_case(heads, q_len, k, scale);
  const DecodeParams p = c.params();
  std::vector<float> o(c.o_size()), lse(c.rows());
  cpu::Scratch scratch;
  const cpu::KernelArgs args =
      bench::whole_sequence_item(c, p, o.data(), lse.data(), chunk, up);
  kernel.run(args, scratch);  // warm: scratch allocated, cache in L3
  const double rows = double(heads) * q_len;
  const double floor_s =
      2 * rows * k * kLatentDim * 2 / int8_rate() + 2 * rows * k * kRopeDim / bf16_rate();
  const double t0 = thread_seconds();
  for (auto _ : state) {
    kernel.run(args, scratch);
    benchmark::ClobberMemory();
  }
  const double s = (thread_seconds() - t0) / double(state.iterations());
  state.counters["rows"] = rows;
  state.counters["GOPS"] = 2 * rows * k * (kQkDim + kLatentDim) / s * 1e-9;
  state.counters["frac_floor"] = floor_s / s;
}

void kernel_args(benchmark::internal::Benchmark* b) {
  b->ArgNames({"heads", "q_len", "k", "chunk", "spill", "scale"});
  for (int chunk : {1, 2, 4, 8}) b->Args({128, 2, 4096, chunk, 0, 0});  // 256 rows
  b->Args({128, 2, 4096, 1, 1, 0});                                     // the seed's old form
  b->Args({128, 2, 4096, 4, 1, 0});
  b->Args({128, 2, 4096, 4, 0, 1});                                 // tensor scale
  b->Args({128, 2, 4096, 4, 0, 2});                                 // channel scales
  for (int chunk : {1, 4, 8}) b->Args({16, 1, 4096, chunk, 0, 0});  // 16 rows
  b->Args({64, 2, 4096, 4, 0, 0});   // 256 rows split by heads over two cores: one core's item
  b->Args({128, 2, 2048, 4, 0, 0});  // ... or by the KV range
  b->Args({128, 1, 4096, 4, 0, 0});
  b->Unit(benchmark::kMillisecond)->MinTime(0.3);
}
BENCHMARK(BM_KernelI8)->Apply(kernel_args);

}  // namespace
}  // namespace mla

BENCHMARK_MAIN();
