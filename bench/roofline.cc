// roofline: measures this machine's ceilings (read bandwidth from memory, L3 and L2; fp32 FMA,
// bf16 dot and int8 dot rates) for each requested thread count, prints them as a table and writes
// them as JSON for the benchmarks, which print each result as a fraction of its ceiling. On a CPU
// with AVX-512 it measures them a second time limited to AVX2 (limit "avx2"), the ceilings of
// the AVX2 kernels that `mla bench --isa avx2` compares with.
//
//   roofline [--threads 1,2] [--out ceilings.json] [--seconds S]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "core/atomic_file.h"
#include "roofline/ceilings.h"
#include "mla/status.h"

namespace {

// Other running programs share the cores and lower every figure; say so rather than store low
// ceilings silently.
void warn_if_busy() {
  double load = 0;
  std::ifstream f("/proc/loadavg");
  if (f >> load && load > 0.5) {
    std::fprintf(stderr,
                 "roofline: note: load average %.2f; other programs may lower the figures, "
                 "measure on an idle machine\n",
                 load);
  }
}

void print_header() {
  std::printf("%7s %7s %10s %10s %10s %12s %12s %12s %13s %14s %10s\n", "threads", "limit",
              "mem GB/s", "L3 GB/s", "L2 GB/s", "fp32 GFLOP/s", "bf16 GFLOP/s", "int8 GOP/s",
              "AMX int8 GOP/s", "AMX bf16 GFLOP/s", "exp2 G/s");
}

void print_row(const mla::Ceilings& c) {
  std::printf("%7d %7s %10.1f %10.1f %10.1f %12.1f %12.1f %12.1f %13.1f %14.1f %10.2f\n",
              c.threads, c.limit.c_str(), c.read_bw_mem_gbs, c.read_bw_l3_gbs, c.read_bw_l2_gbs,
              c.fp32_fma_gflops, c.bf16_dot_gflops, c.int8_dot_gops, c.amx_int8_gops,
              c.amx_bf16_gflops, c.exp_gelems);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Measures this machine's roofline ceilings and writes them as JSON."};
  const int cores = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> threads;
  std::string out = mla::default_ceilings_path();
  double seconds = 0.2;
  app.add_option("--threads", threads,
                 "comma-separated thread counts (default: 1," + std::to_string(cores) + ")")
      ->delimiter(',')
      ->check(CLI::PositiveNumber);
  app.add_option("--out", out, "JSON file to write (default: $MLA_CEILINGS, else ceilings.json)");
  app.add_option("--seconds", seconds, "seconds per test and thread count (default 0.2)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  if (threads.empty()) threads = {1, cores};
  std::sort(threads.begin(), threads.end());
  threads.erase(std::unique(threads.begin(), threads.end()), threads.end());

  warn_if_busy();
  try {
    std::vector<mla::Ceilings> all;
    const bool avx2_too = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2") &&
                          __builtin_cpu_supports("fma");
    for (int t : threads) {
      all.push_back(mla::measure_ceilings(t, seconds));
      if (all.size() == 1) {
        std::printf("%s, %d logical CPUs\n", all[0].cpu.c_str(), cores);
        print_header();
      }
      print_row(all.back());
      if (avx2_too) {
        all.push_back(mla::ceilings_detail::measure_ceilings_limited(
            t, seconds, mla::ceilings_detail::IsaLimit::avx2));
        print_row(all.back());
      }
    }
    for (const mla::Ceilings& c : all)
      if (c.threads == all.front().threads)
        std::printf("instructions (%s): read %s, fp32 %s, bf16 %s, int8 %s\n", c.limit.c_str(),
                    c.read_isa.c_str(), c.fp32_isa.c_str(), c.bf16_isa.c_str(),
                    c.int8_isa.c_str());
    mla::write_file_atomic(out, mla::ceilings_to_json(all));
    std::printf("wrote %s\n", out.c_str());
  } catch (const mla::Error& e) {
    std::fprintf(stderr, "roofline: %s\n", e.what());
    return 2;
  }
  return 0;
}
