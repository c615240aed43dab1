// Every kernel in the registry that this CPU supports (portable ones included), through the whole
// fast path (planner, thread pool, both reductions, both UP forms, chunk sizes), against the
// float64 reference at DESIGN §6 tolerances; plus each kernel on KV ranges cut anywhere.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

#include "cpu/attention/kernel.h"
#include "mla/attention.h"
#include "mla/status.h"
#include "ref/compare.h"
#include "ref/reference.h"
#include "harness/random_case.h"

namespace mla {
namespace {

using test::CaseSpec;

std::string kernel_names(const ::testing::TestParamInfo<const cpu::KernelInfo*>& info) {
  return info.param->name;
}

// Runs the fast path and compares every sequence's rows with the reference.
void check_decode(const test::Case& c, const DecodeOptions& opt, const std::string& what) {
  const DecodeParams& p = c.p;
  const int64_t rows = int64_t(p.batch) * p.q_len * p.num_heads;
  std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));
  decode(p, c.q_dtype, c.q16.data(), c.cache, opt, o.data(), lse.data());
  std::vector<double> ro(rows * kLatentDim), rl(rows);
  ref::decode(p, c.q_ref.data(), c.cache, ro.data(), rl.data());
  const ref::Tolerance tol = ref::tolerance_for(c.spec.kv, false);
  const int64_t per_seq = int64_t(p.q_len) * p.num_heads;
  for (int b = 0; b < p.batch; ++b) {
    const ref::Comparison cmp =
        ref::compare(o.data() + b * per_seq * kLatentDim, lse.data() + b * per_seq,
                     ro.data() + b * per_seq * kLatentDim, rl.data() + b * per_seq, per_seq,
                     kLatentDim, tol);
    ASSERT_TRUE(cmp.pass) << what << "\n  sequence " << b << ": " << cmp.summary() << "\n  case: "
                          << c.describe();
  }
}

// An int8 scale mode the kernel runs (group modes only where it has group_scales), chosen at
// random; token for the other formats.
KvScale random_scale(const cpu::KernelInfo& k, std::mt19937_64& rng) {
  if (k.kv != KvDType::int8) return KvScale::token;
  for (;;) {
    const KvScale m = KvScale(rng() % kNumKvScales);
    if (cpu::kernel_runs(k, k.kv, m)) return m;
  }
}

class DecodeKernel : public ::testing::TestWithParam<const cpu::KernelInfo*> {};

// A random sweep over the contract's edge cases (docs/DESIGN.md §2): block sizes 1 to 128, head
// counts that are not powers of two, q_len 1-4 with uneven q_lens, padding entries, lengths of one
// token, under a block and long enough to split, with and without causal masking, every chunk,
// reduction and UP form; each configuration is reproducible from the printed seed.
TEST_P(DecodeKernel, RandomSweepMatchesReference) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  std::mt19937_64 rng(seed ^ std::hash<std::string>{}(k.name));
  auto pick = [&](std::initializer_list<int> v) { return *(v.begin() + rng() % v.size()); };
  const int trials = test::sweep_trials(k.portable ? 24 : 48);
  for (int trial = 0; trial < trials; ++trial) {
    CaseSpec s;
    s.kv = k.kv;
    s.scale = random_scale(k, rng);
    s.block_size = pick({1, 16, 64, 128});
    s.batch = pick({1, 1, 2, 3, 5});
    s.q_len = pick({1, 2, 3, 4});
    s.heads = pick({1, 2, 7, 16, 16, 64, 128});
    s.causal = rng() % 4 != 0;
    s.score_std = pick({1, 2, 3});
    s.sink = rng() % 5 == 0;
    const int max_len = (s.heads >= 64 ? 700 : 1500) / (k.portable ? 2 : 1);
    for (int b = 0; b < s.batch; ++b) {
      const int ql = 1 + int(rng() % s.q_len);
      s.q_lens.push_back(ql);
      // Lengths: 1, below a block, not a multiple of the block, long enough to split; 0 = padding.
      int len = pick({0, 1, 2, 3, 4}) == 0 && s.batch > 1 ? 0
                : int(rng() % 3) == 0                   ? ql + int(rng() % 5)
                                                        : ql + int(rng() % max_len);
      if (len == 0) s.q_lens.back() = int(rng() % 2) * ql;  // padding rows may claim queries
      s.seq_lens.push_back(len);
    }
    test::Case c = test::make_case(s, rng());
    DecodeOptions opt{.impl = Impl::fast, .threads = pick({1, 2, 3, 4}), .chunk = pick({1, 2, 4}),
                      .reduction = rng() % 2 ? Reduction::last : Reduction::separate,
                      .up = rng() % 2 ? UpForm::resident : UpForm::spill, .isa = Isa::best,
                      .kernel = k.name};
    check_decode(c, opt,
                 std::string(k.name) + " trial " + std::to_string(trial) + " threads " +
                     std::to_string(opt.threads) + " chunk " + std::to_string(opt.chunk) +
                     (opt.reduction == Reduction::last ? " last" : " separate") +
                     (opt.up == UpForm::resident ? " resident" : " spill"));
    if (HasFatalFailure()) return;
  }
}

// Each kernel directly on pieces of the KV range cut at arbitrary positions; the pieces merged by
// the reference combine equal the whole. Partial outputs of rows that see no key of a piece must be
// o = 0, lse = -inf.
TEST_P(DecodeKernel, ArbitraryKvCutsMergeToTheWhole) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed + 17);
  for (int trial = 0; trial < 6; ++trial) {
    CaseSpec s{.batch = 1, .q_len = 1 + int(rng() % 4), .heads = int(1 + rng() % 20),
               .block_size = int(std::vector<int>{1, 16, 64, 128}[rng() % 4])};
    s.kv = k.kv;
    s.scale = random_scale(k, rng);
    s.seq_lens = {s.q_len + int(rng() % 400)};
    s.q_lens = {s.q_len};
    test::Case c = test::make_case(s, rng());
    const int L = c.seq_lens[0], H = s.heads, rows = s.q_len * H;
    std::vector<int> cuts = {0, L};
    for (int i = 0; i < 3; ++i) cuts.push_back(int(rng() % (L + 1)));
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    const int parts = int(cuts.size()) - 1;
    std::vector<float> po(size_t(parts) * rows * kLatentDim, std::nanf("")),
        pl(size_t(parts) * rows, std::nanf(""));
    cpu::Scratch scratch;
    for (int j = 0; j < parts; ++j) {
      cpu::KernelArgs a{.p = &c.p, .cache = &c.view, .q = c.q16.data(), .seq = 0,
                        .head_begin = 0, .head_end = H, .kv_begin = cuts[j], .kv_end = cuts[j + 1],
                        .o = po.data() + size_t(j) * rows * kLatentDim,
                        .o_stride_i = int64_t(H) * kLatentDim, .o_stride_h = kLatentDim,
                        .lse = pl.data() + size_t(j) * rows, .lse_stride_i = H, .lse_stride_h = 1,
                        .chunk = int(1 + rng() % 4),
                        .up = rng() % 2 ? UpForm::resident : UpForm::spill};
      k.run(a, scratch);
    }
    std::vector<double> ro(size_t(rows) * kLatentDim), rl(rows);
    ref::decode(c.p, c.q_ref.data(), c.cache, ro.data(), rl.data());
    std::vector<float> o(size_t(rows) * kLatentDim), lse(rows);
    for (int r = 0; r < rows; ++r) {
      std::vector<double> dpo(size_t(parts) * kLatentDim), dpl(parts);
      for (int j = 0; j < parts; ++j) {
        dpl[j] = pl[size_t(j) * rows + r];
        for (int d = 0; d < kLatentDim; ++d)
          dpo[size_t(j) * kLatentDim + d] = po[(size_t(j) * rows + r) * kLatentDim + d];
        // A row whose visible keys all lie before this piece: exactly o = 0, lse = -inf.
        const int i = r / H;
        const int last = L - s.q_len + i;
        if (cuts[j] > last) {
          ASSERT_EQ(dpl[j], -std::numeric_limits<double>::infinity()) << "piece " << j << " row " << r;
          for (int d = 0; d < kLatentDim; ++d) ASSERT_EQ(dpo[size_t(j) * kLatentDim + d], 0.0);
        }
      }
      std::vector<double> mo(kLatentDim);
      double ml;
      ref::combine(parts, kLatentDim, dpo.data(), dpl.data(), mo.data(), &ml);
      for (int d = 0; d < kLatentDim; ++d) o[size_t(r) * kLatentDim + d] = float(mo[d]);
      lse[r] = float(ml);
    }
    const ref::Comparison cmp = ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows,
                                             kLatentDim, ref::tolerance_for(k.kv, false));
    ASSERT_TRUE(cmp.pass) << k.name << " cuts " << ::testing::PrintToString(cuts) << ": "
                          << cmp.summary() << "\n  " << c.describe();
  }
}

// NaN in one sequence's unused pages (and in the unused tail of its last block) never reaches any
// output: 16 sequences with short, odd lengths over a NaN-filled pool.
TEST_P(DecodeKernel, NanInUnusedSlotsNeverLeaks) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  CaseSpec s{.batch = 16, .q_len = 2, .heads = 8, .block_size = 16, .spare_blocks = 20};
  s.kv = k.kv;
  for (int b = 0; b < 16; ++b) {
    s.seq_lens.push_back(b == 3 ? 0 : 2 + 7 * b);
    s.q_lens.push_back(1 + b % 2);
  }
  test::Case c = test::make_case(s, seed);
  for (int threads : {1, 2})
    check_decode(c, DecodeOptions{.threads = threads, .kernel = k.name},
                 std::string(k.name) + " NaN pages, threads " + std::to_string(threads));
}

INSTANTIATE_TEST_SUITE_P(Registry, DecodeKernel, ::testing::ValuesIn(test::supported_kernels()),
                         kernel_names);

// Every ISA this CPU supports, forced through decode(), agrees with the best path; forcing an ISA
// picks a kernel of that ISA, and one the CPU lacks is refused with an error naming it.
TEST(Decode, EachForcedIsaAgreesWithBestPath) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8, KvDType::fp8}) {
    CaseSpec s{.batch = 2, .q_len = 2, .heads = 16, .block_size = 64, .seq_lens = {300, 129}};
    s.kv = kv;
    test::Case c = test::make_case(s, seed);
    const int64_t rows = 2 * 2 * 16;
    std::vector<float> ob(rows * kLatentDim), lb(rows);
    decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.isa = Isa::best}, ob.data(), lb.data());
    for (Isa isa : {Isa::portable, Isa::avx512, Isa::avx2}) {
      bool any = false, registered = false;
      for (const auto& k : cpu::kernel_registry()) {
        any |= k.kv == kv && k.isa == isa && k.supported();
        registered |= k.kv == kv && k.isa == isa;
      }
      std::vector<float> op(rows * kLatentDim, std::nanf("")), lp(rows, std::nanf(""));
      const DecodeOptions opt{.isa = isa};
      if (!any) {
        try {
          decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, op.data(), lp.data());
          ADD_FAILURE() << isa_name(isa) << " ran on a CPU without it";
        } catch (const Error& e) {
          // A kernel of that ISA exists but this CPU lacks it, or the ISA has none for the format.
          EXPECT_NE(std::string(e.what()).find(registered ? "lacks" : "no " + std::string(isa_name(isa))),
                    std::string::npos) << e.what();
        }
        for (float v : lp) ASSERT_TRUE(std::isnan(v)) << "written on refusal";
        continue;
      }
      EXPECT_EQ(cpu::select_kernel(kv, isa).isa, isa);
      decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, op.data(), lp.data());
      std::vector<double> dop(op.begin(), op.end()), dlp(lp.begin(), lp.end());
      const ref::Comparison cmp = ref::compare(ob.data(), lb.data(), dop.data(), dlp.data(), rows,
                                               kLatentDim, ref::tolerance_for(kv, false));
      EXPECT_TRUE(cmp.pass) << kv_dtype_name(kv) << " " << isa_name(isa) << ": " << cmp.summary();
    }
  }
}

TEST(Decode, IsaNamesRoundTrip) {
  for (Isa isa : {Isa::best, Isa::portable, Isa::avx512, Isa::avx2}) {
    Isa back = Isa::best;
    ASSERT_TRUE(isa_from_name(isa_name(isa), &back)) << isa_name(isa);
    EXPECT_EQ(back, isa);
  }
  Isa untouched = Isa::avx2;
  EXPECT_FALSE(isa_from_name("avx", &untouched));
  EXPECT_FALSE(isa_from_name("AVX2", &untouched));
  EXPECT_EQ(untouched, Isa::avx2);
}

TEST(Decode, RefusesBadOptionsAndWritesNothing) {
  CaseSpec s{.batch = 1, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {40}};
  test::Case c = test::make_case(s, test::test_seed());
  std::vector<float> o(2 * kLatentDim, 7.f), lse(2, 7.f);
  EXPECT_THROW(decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.chunk = 0}, o.data(), lse.data()), Error);
  EXPECT_THROW(decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.kernel = "nope"}, o.data(), lse.data()), Error);
  EXPECT_THROW(decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.kernel = "decode_i8_portable"}, o.data(), lse.data()), Error);
  EXPECT_THROW(decode(c.p, DType::i8, c.q16.data(), c.cache, DecodeOptions{}, o.data(), lse.data()), Error);
  std::vector<int32_t> bad_len = {1000};
  DecodeParams p = c.p;
  p.seq_lens = bad_len.data();
  EXPECT_THROW(decode(p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{}, o.data(), lse.data()), Error);
  for (float v : o) ASSERT_EQ(v, 7.f);
  for (float v : lse) ASSERT_EQ(v, 7.f);
}

}  // namespace
}  // namespace mla
