// Regression bounds for the quantized caches in every scale mode, beside test_accuracy_bounds.cc
// (every kernel, per-token scales, 3 threads, one shape). Here each int8 kernel runs all six scale
// modes (token, group32/64/128, tensor, channel) and each fp8 kernel its one, at 1, 2 and 3 threads
// (different split-KV plans and combines), on two shapes: the DESIGN §6 bounds leave about 4x
// headroom over today's error, these about 2x over the worst of 40 seeds. Fresh random cases each
// run (the seed is printed; MLA_TEST_SEED repeats one); MLA_PRINT_ACCURACY=1 measures (40 seeds).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "harness/random_case.h"
#include "mla/attention.h"
#include "ref/compare.h"
#include "ref/reference.h"

namespace mla {
namespace {

struct ModeBound {
  const char* family;  // kernel name prefix: one bound for its AVX-512, AVX2 and portable forms
  KvScale scale;
  double rel, row_rel, lse;  // about 2x the largest measured (below)
};

// Measured with MLA_PRINT_ACCURACY=1 (40 seeds x 2 shapes x threads 1-3, max over the family's
// kernels this host runs: i8 avx512vnni / avx2 / portable, fp8 avx512bf16 / portable; the AVX2
// int8 kernel has no group modes), 2026-12-07:
//   family      scale     rel      row      lse
//   decode_i8   token     4.98e-3  1.19e-2  9.4e-6
//   decode_i8   group32   4.90e-3  1.06e-2  1.1e-5
//   decode_i8   group64   4.89e-3  1.11e-2  8.8e-6
//   decode_i8   group128  4.91e-3  1.11e-2  8.6e-6
//   decode_i8   tensor    4.78e-3  1.10e-2  7.9e-6
//   decode_i8   channel   4.79e-3  1.09e-2  6.7e-6
//   decode_fp8  token     9.73e-4  3.17e-3  8.5e-6   (against the de-quantized cache)
// The bounds are about 2x those (DESIGN §6 allows int8 2e-2).
const ModeBound kModeBounds[] = {
    {"decode_i8_", KvScale::token, 1e-2, 2.4e-2, 2e-5},
    {"decode_i8_", KvScale::group32, 1e-2, 2.2e-2, 2.2e-5},
    {"decode_i8_", KvScale::group64, 1e-2, 2.2e-2, 1.8e-5},
    {"decode_i8_", KvScale::group128, 1e-2, 2.2e-2, 1.8e-5},
    {"decode_i8_", KvScale::tensor, 9.6e-3, 2.2e-2, 1.6e-5},
    {"decode_i8_", KvScale::channel, 9.6e-3, 2.2e-2, 1.4e-5},
    {"decode_fp8_", KvScale::token, 2e-3, 6.4e-3, 1.7e-5},
};

// Two shapes: few heads with q_len 2 over three lengths (one a single block), and 128 heads
// (every head tile of the kernels) with one query token, a long and a very short sequence, small
// blocks and an attention sink (one key dominates: the softmax's large-weight regime).
test::CaseSpec shape(int which) {
  if (which == 0)
    return {.batch = 3,
            .q_len = 2,
            .heads = 16,
            .block_size = 64,
            .seq_lens = {1000, 257, 64},
            .q_lens = {2, 1, 2}};
  test::CaseSpec s{.batch = 2, .q_len = 1, .heads = 128, .block_size = 16, .seq_lens = {1500, 33}};
  s.sink = true;
  return s;
}

class AccuracyModes : public ::testing::TestWithParam<const cpu::KernelInfo*> {};

TEST_P(AccuracyModes, EveryScaleModeThreadsAndShapes) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  const bool print = std::getenv("MLA_PRINT_ACCURACY") != nullptr;
  const int reps = print ? 40 : 1;
  // MLA_TEST_QUICK=1 (the sanitized pass): one shape and one thread count per run, by the seed
  // (the float64 reference of every case is most of the time).
  std::vector<int> thread_counts = {1, 2, 3}, shapes = {0, 1};
  if (!print && test::sweep_trials(4) < 4)
    thread_counts = {1 + int(seed % 3)}, shapes = {int(seed / 3 % 2)};
  int ran = 0;
  for (const ModeBound& bound : kModeBounds) {
    if (std::strncmp(k.name, bound.family, std::strlen(bound.family)) != 0) continue;
    if (!cpu::kernel_runs(k, k.kv, bound.scale)) continue;
    double worst_rel = 0, worst_row = 0, worst_lse = 0;
    for (int rep = 0; rep < reps; ++rep)
      for (const int sh : shapes) {
        test::CaseSpec s = shape(sh);
        s.kv = k.kv;
        s.scale = bound.scale;
        const test::Case c = test::make_case(s, seed + 2 * rep + sh);
        const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
        std::vector<double> ro(rows * kLatentDim), rl(rows);
        ref::decode(c.p, c.q_ref.data(), c.cache, ro.data(), rl.data());
        for (const int threads : thread_counts) {
          std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));
          decode(c.p, c.q_dtype, c.q16.data(), c.cache,
                 DecodeOptions{.threads = threads, .kernel = k.name}, o.data(), lse.data());
          const ref::Comparison cmp =
              ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows, kLatentDim,
                           ref::Tolerance{.rel_err = bound.rel,
                                          .cosine = 0.999,
                                          .lse_abs = bound.lse,
                                          .row_rel_err = bound.row_rel});
          worst_rel = std::max(worst_rel, cmp.rel_err);
          worst_row = std::max(worst_row, cmp.max_row_rel);
          worst_lse = std::max(worst_lse, cmp.lse_abs);
          ++ran;
          if (!print) {
            EXPECT_TRUE(cmp.pass) << k.name << " " << kv_scale_name(bound.scale) << " shape " << sh
                                  << " threads " << threads << ": " << cmp.summary()
                                  << " (worst row " << cmp.worst_row << "); bounds rel "
                                  << bound.rel << " row " << bound.row_rel << " lse " << bound.lse;
          }
        }
      }
    if (print)
      std::printf("[ ACCURACY ] %-24s %-9s rel %.2e row %.2e lse %.1e\n", k.name,
                  kv_scale_name(bound.scale), worst_rel, worst_row, worst_lse);
  }
  EXPECT_GT(ran, 0) << k.name << " has no bound for its scale modes: measure it and add one";
}

std::vector<const cpu::KernelInfo*> quantized_kernels() {
  std::vector<const cpu::KernelInfo*> out;
  for (const cpu::KernelInfo* k : test::supported_kernels())
    if (k->kv == KvDType::int8 || k->kv == KvDType::fp8) out.push_back(k);
  return out;
}

INSTANTIATE_TEST_SUITE_P(Registry, AccuracyModes, ::testing::ValuesIn(quantized_kernels()),
                         [](const auto& info) { return std::string(info.param->name); });

}  // namespace
}  // namespace mla
