// Google Benchmark cases for the whole decode operator (plan, kernels on the thread pool,
// reduction) through mla::decode, for every kernel in the registry (src/cpu/attention/kernel.h),
// beside the OpenBLAS-composed baseline, at the shapes the issue names:
//   128 heads x q_len 2 (256 query rows per sequence) and 16 heads x q_len 1, b 1 and 8, k 4096.
// Counters: GFLOP/s (2 * H * q_len * k * 1088 per sequence) and, when a ceilings file is found
// ($MLA_CEILINGS or ./ceilings.json, written by bench/roofline), floor = the fraction of the
// floor time of harness/perf_model.h reached. Kernels this CPU cannot run are skipped.
//
//   bench_decode                                  everything (all cores)
//   bench_decode --benchmark_filter='i8.*b8'      one kernel, one batch
//   bench_decode --benchmark_filter=blas          the baseline only
#include <benchmark/benchmark.h>

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "roofline/ceilings.h"
#include "mla/attention.h"
#include "mla/status.h"
#include "harness/blas_baseline.h"
#include "harness/case.h"
#include "harness/parallel.h"
#include "harness/perf_model.h"
#include "harness/stats.h"
#include "harness/variants.h"

namespace mla {
namespace {

struct ShapeArgs {
  int batch, k, heads, q_len;
};
constexpr ShapeArgs kShapes[] = {
    {.batch = 1, .k = 4096, .heads = 128, .q_len = 2},
    {.batch = 8, .k = 4096, .heads = 128, .q_len = 2},
    {.batch = 1, .k = 4096, .heads = 16, .q_len = 1},
    {.batch = 8, .k = 4096, .heads = 16, .q_len = 1},
};

std::string shape_name(const ShapeArgs& s) {
  std::string n = "b";  // appended piecewise: GCC 12 warns (-Wrestrict) on "b" + to_string()
  n += std::to_string(s.batch);
  n += "_k" + std::to_string(s.k);
  n += "_h" + std::to_string(s.heads);
  n += "_q" + std::to_string(s.q_len);
  return n;
}

// Cases are built on first use (a b8 case takes a fraction of a second) and kept.
const bench::Case& get_case(KvDType kv, const ShapeArgs& s) {
  static std::vector<std::unique_ptr<bench::Case>> cases;
  for (const auto& c : cases) {
    const bench::CaseSpec& cs = c->spec();
    if (cs.kv_dtype == kv && cs.batch == s.batch && cs.k == s.k && cs.heads == s.heads &&
        cs.q_len == s.q_len)
      return *c;
  }
  cases.push_back(std::make_unique<bench::Case>(bench::CaseSpec{
      .batch = s.batch, .k = s.k, .heads = s.heads, .q_len = s.q_len, .kv_dtype = kv}));
  return *cases.back();
}

// The ceilings for `threads`, if a ceilings file is there.
const Ceilings* ceilings_for(int threads) {
  static const std::vector<Ceilings> all = [] {
    const std::string path = default_ceilings_path();
    if (!std::filesystem::exists(path)) return std::vector<Ceilings>{};
    try {
      return ceilings_from_json_file(path);
    } catch (const Error&) {
      return std::vector<Ceilings>{};
    }
  }();
  return find(all, threads);
}

// GFLOP/s and floor fraction from the wall time of the timed loop (the decode runs on several
// threads, so the CPU time of the calling thread says nothing).
void set_counters(benchmark::State& state, KvDType kv, const ShapeArgs& s, int threads,
                  double loop_s) {
  const bench::Shape shape{.batch = s.batch,
                           .k = s.k,
                           .heads = s.heads,
                           .q_len = s.q_len,
                           .kv = kv,
                           .scale = KvScale::token};
  const double per_iter = loop_s / double(std::max<int64_t>(1, state.iterations()));
  state.counters["GFLOP/s"] = bench::flops(shape) / per_iter * 1e-9;
  state.counters["threads"] = threads;
  if (const Ceilings* c = ceilings_for(threads))
    state.counters["floor"] =
        bench::floor_time(shape, *c, bench::l3_cache_bytes()).floor_s / per_iter;
}

void BM_Decode(benchmark::State& state, const cpu::KernelInfo* kernel, ShapeArgs s,
               DecodeOptions opt) {
  if (!kernel->supported()) return state.SkipWithError("this CPU lacks the kernel's instructions");
  const bench::Case& c = get_case(kernel->kv, s);
  opt.kernel = kernel->name;
  opt.threads = bench::hardware_threads();
  std::vector<float> o(c.o_size()), lse(c.rows());
  bench::run_decode(c, opt, o.data(), lse.data());  // warm: pool started, scratch allocated
  const double t0 = bench::now_s();
  for (auto _ : state) {
    bench::run_decode(c, opt, o.data(), lse.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kernel->kv, s, opt.threads, bench::now_s() - t0);
}

// The default kernel with stage timers off (the markers compiled in, no recorder) and on: the cost
// of the timers. decode/stage_timers/<format>/<shape>/{off,on}.
void BM_StageTimers(benchmark::State& state, KvDType kv, ShapeArgs s, bool on) {
  const bench::Case& c = get_case(kv, s);
  DecodeOptions opt = bench::new_options(4);
  opt.threads = bench::hardware_threads();
  StageTimes times;
  if (on) opt.stage_times = &times;
  std::vector<float> o(c.o_size()), lse(c.rows());
  bench::run_decode(c, opt, o.data(), lse.data());
  const double t0 = bench::now_s();
  for (auto _ : state) {
    bench::run_decode(c, opt, o.data(), lse.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kv, s, opt.threads, bench::now_s() - t0);
}

void BM_Blas(benchmark::State& state, KvDType kv, ShapeArgs s) {
  const bench::Case& c = get_case(kv, s);
  bench::BlasBaseline blas(bench::hardware_threads());
  std::vector<float> o(c.o_size()), lse(c.rows());
  blas.run(c.params(), c.q_f32(), c.cache(), o.data(), lse.data());
  const double t0 = bench::now_s();
  for (auto _ : state) {
    blas.run(c.params(), c.q_f32(), c.cache(), o.data(), lse.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, kv, s, blas.threads(), bench::now_s() - t0);
}

void register_all() {
  // Every registered kernel with the best configuration; the straightforward ("old")
  // configuration beside it for the kernel mla::decode picks for each format.
  for (const cpu::KernelInfo& k : cpu::kernel_registry()) {
    const bool is_default = k.supported() && &cpu::select_kernel(k.kv, Isa::best) == &k;
    for (const ShapeArgs& s : kShapes) {
      const std::string base = std::string("decode/") + k.name + "/" + shape_name(s);
      benchmark::RegisterBenchmark((base + "/new").c_str(), BM_Decode, &k, s, bench::new_options(4))
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
      if (is_default)
        benchmark::RegisterBenchmark((base + "/old").c_str(), BM_Decode, &k, s,
                                     bench::old_options())
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
    }
  }
  for (KvDType kv : {KvDType::int8, KvDType::bf16, KvDType::fp16})
    for (const ShapeArgs& s : kShapes)
      for (bool on : {false, true})
        benchmark::RegisterBenchmark((std::string("decode/stage_timers/") + kv_dtype_name(kv) +
                                      "/" + shape_name(s) + (on ? "/on" : "/off"))
                                         .c_str(),
                                     BM_StageTimers, kv, s, on)
            ->UseRealTime()
            ->Unit(benchmark::kMillisecond);
  for (KvDType kv : {KvDType::int8, KvDType::bf16, KvDType::fp16})
    for (const ShapeArgs& s : kShapes)
      benchmark::RegisterBenchmark(
          (std::string("blas/") + kv_dtype_name(kv) + "/" + shape_name(s)).c_str(), BM_Blas, kv, s)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
}

}  // namespace
}  // namespace mla

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  mla::register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
