// The benchmark's own instruments: the case builder (NaN exactly in the unused slots, scattered
// block tables, the score spread it promises), the sampled reference and the check, the BLAS
// baseline against the float64 reference, the performance model on a hand-computed example, the
// --variants parser, the timing statistics, and `mla bench` end to end on a tiny grid with --json
// (the binary from MLA_CLI, files under MLA_TEST_TMP).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "roofline/ceilings.h"
#include "mla/status.h"
#include "ref/reference.h"
#include "harness/blas_baseline.h"
#include "harness/case.h"
#include "harness/perf_model.h"
#include "harness/stats.h"
#include "harness/variants.h"

namespace mla {
namespace {

namespace fs = std::filesystem;

// ---- the case builder ------------------------------------------------------------------------

struct KvFormat {
  KvDType kv;
  KvScale scale;
};
const KvFormat kFormats[] = {{KvDType::bf16, KvScale::token},
                             {KvDType::fp16, KvScale::token},
                             {KvDType::int8, KvScale::token},
                             {KvDType::int8, KvScale::tensor},
                             {KvDType::int8, KvScale::channel},
                             {KvDType::int8, KvScale::group32},
                             {KvDType::int8, KvScale::group64},
                             {KvDType::int8, KvScale::group128},
                             {KvDType::fp8, KvScale::token}};

bench::CaseSpec small_spec(KvFormat f, uint64_t seed = 5) {
  return bench::CaseSpec{.batch = 3,
                         .k = 100,
                         .heads = 4,
                         .q_len = 2,
                         .block_size = 16,
                         .kv_dtype = f.kv,
                         .kv_scale = f.scale,
                         .seed = seed};
}

TEST(CaseBuilder, NanExactlyInUnusedSlots) {
  for (const KvFormat f : kFormats) {
    SCOPED_TRACE(std::string(kv_dtype_name(f.kv)) + "/" + kv_scale_name(f.scale));
    const bench::Case c(small_spec(f));
    const PagedLatentCache& cache = c.cache();
    int64_t used = 0, nan_slots = 0;
    float tok[kQkDim];
    for (int64_t s = 0; s < cache.num_slots(); ++s) {
      cache.read(s, tok);
      const int nans = int(std::count_if(tok, tok + kQkDim, [](float x) { return std::isnan(x); }));
      if (c.slot_used(s)) {
        ++used;
        EXPECT_EQ(nans, 0) << "used slot " << s;
        for (float x : tok) EXPECT_LE(std::fabs(x), 1.0f + 1e-2f) << "slot " << s;
      } else {
        ++nan_slots;
        // The 16-bit and fp8 formats and an int8 cache with per-token (or per-group) scales are
        // NaN throughout; with a static scale the int8 latent cannot hold NaN, but the bf16 rope
        // part does.
        const bool whole = f.kv != KvDType::int8 || kv_token_scales(f.scale) > 0;
        EXPECT_EQ(nans, whole ? kQkDim : kRopeDim) << "unused slot " << s;
      }
    }
    EXPECT_EQ(used, 3 * 100);
    // 3 sequences x 7 blocks of 16, plus at least 2 spare blocks; 12 tail slots per sequence.
    EXPECT_GE(nan_slots, 3 * 12 + 2 * 16);
    // Every slot the block tables reach for a position < k is a used one.
    const DecodeParams p = c.params();
    for (int b = 0; b < p.batch; ++b)
      for (int t = 0; t < p.seq_lens[b]; ++t) {
        const int64_t slot =
            int64_t(p.block_table[b * p.max_blocks_per_seq + t / 16]) * 16 + t % 16;
        ASSERT_TRUE(c.slot_used(slot)) << "sequence " << b << " position " << t;
      }
  }
}

TEST(CaseBuilder, BlockTablesAreScatteredAndDisjoint) {
  const bench::Case c(bench::CaseSpec{
      .batch = 4, .k = 640, .heads = 2, .q_len = 1, .block_size = 64, .kv_dtype = KvDType::bf16});
  const DecodeParams p = c.params();
  ASSERT_EQ(p.max_blocks_per_seq, 10);
  std::set<int32_t> seen;
  int non_consecutive = 0;
  for (int b = 0; b < 4; ++b)
    for (int j = 0; j < 10; ++j) {
      const int32_t id = p.block_table[b * 10 + j];
      ASSERT_GE(id, 0);
      ASSERT_LT(id, c.cache().num_blocks());
      EXPECT_TRUE(seen.insert(id).second) << "block " << id << " handed out twice";
      if (j > 0 && id != p.block_table[b * 10 + j - 1] + 1) ++non_consecutive;
    }
  EXPECT_GT(non_consecutive, 20) << "block tables look sequential, not scattered";
}

TEST(CaseBuilder, QueriesInWorkingTypeWithRequestedScoreSpread) {
  for (const KvFormat f : {kFormats[0], kFormats[1], kFormats[2]}) {
    SCOPED_TRACE(kv_dtype_name(f.kv));
    bench::CaseSpec spec = small_spec(f);
    spec.score_std = 2.0;
    const bench::Case c(spec);
    EXPECT_EQ(c.q_dtype(), kernel_q_dtype(f.kv, DType::bf16));
    for (int64_t i = 0; i < c.rows() * kQkDim; ++i) {
      const float back = c.q_dtype() == DType::f16 ? f16_to_f32(c.q()[i]) : bf16_to_f32(c.q()[i]);
      ASSERT_EQ(back, c.q_f32()[i]) << "element " << i;
    }
    // Scores of every row with every key of its sequence: their std should be about score_std.
    const DecodeParams p = c.params();
    double sum = 0, sum2 = 0;
    int64_t n = 0;
    float tok[kQkDim];
    for (int b = 0; b < p.batch; ++b)
      for (int t = 0; t < p.seq_lens[b]; ++t) {
        c.cache().read(int64_t(p.block_table[b * p.max_blocks_per_seq + t / 16]) * 16 + t % 16,
                       tok);
        for (int r = 0; r < p.q_len * p.num_heads; ++r) {
          const float* q = c.q_f32() + (int64_t(b) * p.q_len * p.num_heads + r) * kQkDim;
          double s = 0;
          for (int d = 0; d < kQkDim; ++d) s += double(q[d]) * tok[d];
          s *= p.softmax_scale;
          sum += s;
          sum2 += s * s;
          ++n;
        }
      }
    const double sd = std::sqrt(sum2 / double(n) - (sum / double(n)) * (sum / double(n)));
    EXPECT_GT(sd, 1.6);
    EXPECT_LT(sd, 2.4);
  }
}

TEST(CaseBuilder, SameSeedSameCaseOtherSeedOther) {
  const KvFormat f{KvDType::int8, KvScale::token};
  const bench::Case a(small_spec(f, 9)), b(small_spec(f, 9)), c(small_spec(f, 10));
  EXPECT_EQ(a.block_table(), b.block_table());
  EXPECT_NE(a.block_table(), c.block_table());
  float ta[kQkDim], tb[kQkDim];
  a.cache().read(a.block_table()[0] * 16 + 3, ta);
  b.cache().read(b.block_table()[0] * 16 + 3, tb);
  EXPECT_TRUE(std::equal(ta, ta + kQkDim, tb));
  EXPECT_TRUE(std::equal(a.q(), a.q() + a.rows() * kQkDim, b.q()));
  EXPECT_FALSE(std::equal(a.q(), a.q() + a.rows() * kQkDim, c.q()));
}

TEST(CaseBuilder, RefusesBadSpecs) {
  EXPECT_THROW(bench::Case(bench::CaseSpec{.batch = 0}), Error);
  EXPECT_THROW(bench::Case(bench::CaseSpec{.batch = 1, .k = 1, .heads = 1, .q_len = 2}), Error);
  EXPECT_THROW(bench::Case(bench::CaseSpec{.batch = 1, .k = 8, .heads = 0}), Error);
  EXPECT_THROW(bench::Case(bench::CaseSpec{.batch = 1, .k = 8, .heads = 1, .block_size = 0}),
               Error);
}

// ---- the reference and the check -------------------------------------------------------------

std::vector<float> as_float(const std::vector<double>& v) { return {v.begin(), v.end()}; }

TEST(Check, SampledReferenceMatchesFullReference) {
  const bench::Case c(bench::CaseSpec{
      .batch = 7, .k = 96, .heads = 12, .q_len = 2, .block_size = 32, .kv_dtype = KvDType::bf16});
  const bench::Reference full = bench::compute_reference(c, 1e12);
  EXPECT_FALSE(full.sampled);
  EXPECT_EQ(full.seqs.size(), 7u);
  EXPECT_EQ(full.heads.size(), 12u);
  // Budget for about 3 heads of the 4 sampled sequences.
  const bench::Reference part = bench::compute_reference(c, 4 * 2 * 96 * 1088 * 3.5);
  EXPECT_TRUE(part.sampled);
  EXPECT_EQ(part.seqs, (std::vector<int>{0, 2, 4, 6}));
  EXPECT_EQ(part.heads, (std::vector<int>{0, 6, 11}));
  for (size_t j = 0; j < part.seqs.size(); ++j)
    for (int i = 0; i < 2; ++i)
      for (size_t hj = 0; hj < part.heads.size(); ++hj) {
        const int64_t fr = (int64_t(part.seqs[j]) * 2 + i) * 12 + part.heads[hj];
        const int64_t pr = (int64_t(j) * 2 + i) * int64_t(part.heads.size()) + int64_t(hj);
        ASSERT_EQ(part.lse[pr], full.lse[fr]);
        for (int d = 0; d < kLatentDim; ++d)
          ASSERT_EQ(part.o[pr * kLatentDim + d], full.o[fr * kLatentDim + d]);
      }
}

TEST(Check, PassesTheReferenceAndCatchesErrors) {
  const bench::Case c(bench::CaseSpec{
      .batch = 3, .k = 80, .heads = 8, .q_len = 2, .block_size = 16, .kv_dtype = KvDType::int8});
  const bench::Reference full = bench::compute_reference(c, 1e12);
  std::vector<float> o = as_float(full.o), lse = as_float(full.lse);
  const ref::Tolerance tol = ref::tolerance_for(KvDType::bf16, false);
  const bench::Reference part = bench::compute_reference(c, 2 * 2 * 80 * 1088 * 2.0);
  ASSERT_TRUE(part.sampled);

  EXPECT_TRUE(bench::check_output(c, full, o.data(), lse.data(), tol).pass);
  EXPECT_TRUE(bench::check_output(c, part, o.data(), lse.data(), tol).pass);

  // Wrong values in a sampled row: caught.
  std::vector<float> bad = o;
  for (int d = 0; d < kLatentDim; ++d) bad[d] *= 1.1f;  // row 0 = sequence 0, token 0, head 0
  EXPECT_FALSE(bench::check_output(c, part, bad.data(), lse.data(), tol).pass);
  // A NaN in a row the sample skips (head 3; the sample has heads 0 and 7): caught by the
  // whole-output scan.
  bad = o;
  bad[(int64_t(1) * 2 * 8 + 3) * kLatentDim + 7] = std::numeric_limits<float>::quiet_NaN();
  const bench::CheckResult r = bench::check_output(c, part, bad.data(), lse.data(), tol);
  EXPECT_FALSE(r.pass);
  EXPECT_EQ(r.nonfinite, 1);
  // lse off by more than the tolerance.
  std::vector<float> bad_lse = lse;
  bad_lse[0] += 0.01f;
  EXPECT_FALSE(bench::check_output(c, full, o.data(), bad_lse.data(), tol).pass);
  // Poisoned outputs fail.
  std::vector<float> po = o, pl = lse;
  bench::poison(po, pl);
  EXPECT_FALSE(bench::check_output(c, full, po.data(), pl.data(), tol).pass);
}

// ---- the BLAS baseline -----------------------------------------------------------------------

TEST(BlasBaseline, MatchesReferenceOnEveryFormat) {
  for (const KvFormat f : kFormats)
    for (int threads : {1, 2}) {
      SCOPED_TRACE(std::string(kv_dtype_name(f.kv)) + "/" + kv_scale_name(f.scale) + " threads " +
                   std::to_string(threads));
      const bench::Case c(small_spec(f));
      const bench::Reference ref = bench::compute_reference(c, 1e12);
      std::vector<float> o(c.o_size()), lse(c.rows());
      bench::poison(o, lse);
      bench::BlasBaseline blas(threads);
      blas.run(c.params(), c.q_f32(), c.cache(), o.data(), lse.data());
      const bench::CheckResult r =
          bench::check_output(c, ref, o.data(), lse.data(), bench::kFp32Tolerance);
      EXPECT_TRUE(r.pass) << r.summary();
      EXPECT_LT(r.cmp.rel_err, 1e-5) << r.summary();
    }
}

TEST(BlasBaseline, UnevenQueryLengthsPaddingAndNonCausal) {
  const bench::Case c(bench::CaseSpec{
      .batch = 4, .k = 150, .heads = 3, .q_len = 3, .block_size = 32, .kv_dtype = KvDType::bf16});
  // Shorter sequences within the same block tables, one padding entry, MTP drafts of uneven length.
  const std::vector<int32_t> seq_lens = {150, 0, 37, 64};
  const std::vector<int32_t> q_lens = {3, 0, 1, 2};
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "non-causal");
    DecodeParams p = c.params();
    p.seq_lens = seq_lens.data();
    p.q_lens = q_lens.data();
    p.causal = causal;
    const int64_t rows = int64_t(p.batch) * p.q_len * p.num_heads;
    std::vector<double> ro(rows * kLatentDim), rl(rows);
    ref::decode(p, c.q_f32(), c.cache(), ro.data(), rl.data());
    std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));
    bench::BlasBaseline(2).run(p, c.q_f32(), c.cache(), o.data(), lse.data());
    const ref::Comparison cmp = ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows,
                                             kLatentDim, bench::kFp32Tolerance);
    EXPECT_TRUE(cmp.pass) << cmp.summary();
    // Padding rows: o = 0, lse = -inf.
    for (int64_t r = 3 * 3; r < 2 * 3 * 3; ++r) {
      EXPECT_EQ(lse[r], -std::numeric_limits<float>::infinity());
      EXPECT_EQ(o[r * kLatentDim], 0.f);
    }
  }
}

// ---- the performance model -------------------------------------------------------------------

TEST(PerfModel, HandComputedExample) {
  Ceilings c;
  c.threads = 2;
  c.read_bw_mem_gbs = 10;
  c.read_bw_l2_gbs = 300;
  c.read_bw_l3_gbs = 100;
  c.fp32_fma_gflops = 250;
  c.bf16_dot_gflops = 500;
  c.int8_dot_gops = 1000;
  bench::Shape s{
      .batch = 2, .k = 1000, .heads = 4, .q_len = 3, .kv = KvDType::int8, .scale = KvScale::token};
  // 2 sequences x 12 rows x 1000 keys = 24000 row-keys.
  EXPECT_DOUBLE_EQ(bench::flops(s), 2.0 * 24000 * 1088);   // 52,224,000
  EXPECT_DOUBLE_EQ(bench::kv_bytes(s), 2.0 * 1000 * 644);  // 1,288,000
  // int8: 2*24000*1024 / 1e12 + 2*24000*64 / 5e11 = 4.9152e-5 + 6.144e-6 s.
  bench::Floor f = bench::floor_time(s, c, 0);
  EXPECT_NEAR(f.compute_s, 5.5296e-5, 1e-12);
  EXPECT_NEAR(f.bandwidth_s, 1.288e-4, 1e-12);  // memory: 1,288,000 B / 10 GB/s
  EXPECT_EQ(f.bw_level, "mem");
  EXPECT_FALSE(f.compute_bound);
  EXPECT_NEAR(f.floor_s, 1.288e-4, 1e-12);
  // The same bytes fit a 32 MiB L3: 100 GB/s, so compute bound.
  f = bench::floor_time(s, c, 32 << 20);
  EXPECT_EQ(f.bw_level, "l3");
  EXPECT_NEAR(f.bandwidth_s, 1.288e-5, 1e-12);
  EXPECT_TRUE(f.compute_bound);
  EXPECT_NEAR(f.floor_s, 5.5296e-5, 1e-12);
  // ... but not a 1 MiB one.
  EXPECT_EQ(bench::floor_time(s, c, 1 << 20).bw_level, "mem");
  // Static int8 scales: no 4-byte scale per token.
  s.scale = KvScale::tensor;
  EXPECT_DOUBLE_EQ(bench::kv_bytes(s), 2.0 * 1000 * 640);
  // bf16: 52,224,000 / 5e11 s compute; 2,304,000 B / 10 GB/s.
  s.kv = KvDType::bf16;
  f = bench::floor_time(s, c, 0);
  EXPECT_NEAR(f.compute_s, 1.04448e-4, 1e-12);
  EXPECT_NEAR(f.bandwidth_s, 2.304e-4, 1e-12);
  EXPECT_NEAR(f.floor_s, 2.304e-4, 1e-12);
  // fp16: fp32 FMA rate.
  s.kv = KvDType::fp16;
  EXPECT_NEAR(bench::floor_time(s, c, 0).compute_s, 2.08896e-4, 1e-12);
  // A missing ceiling is an error, not a zero floor.
  Ceilings none = c;
  none.fp32_fma_gflops = 0;
  EXPECT_THROW(bench::floor_time(s, none, 0), Error);
}

// ---- --variants ------------------------------------------------------------------------------

TEST(Variants, GoodSpecs) {
  auto v = bench::parse_variants("old:new", 4);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[0].opt.chunk, 1);
  EXPECT_EQ(v[0].opt.up, UpForm::spill);
  EXPECT_EQ(v[0].opt.reduction, Reduction::separate);
  EXPECT_EQ(v[1].opt.chunk, 4);
  EXPECT_EQ(v[1].opt.up, UpForm::resident);
  EXPECT_EQ(v[1].opt.reduction, Reduction::last);
  EXPECT_EQ(v[0].describe(), "chunk=1,up=spill,red=separate,isa=best,impl=fast");

  v = bench::parse_variants("chunk=1,up=spill,red=separate:chunk=4,up=resident,red=last", 2);
  EXPECT_EQ(v[0].describe(), bench::parse_variant("old", 2).describe());
  EXPECT_EQ(v[1].describe(), bench::parse_variant("new", 4).describe());

  // Left-out keys take the "new" values, with --chunk.
  v = bench::parse_variants("red=separate: chunk=2 ", 8);
  EXPECT_EQ(v[0].describe(), "chunk=8,up=resident,red=separate,isa=best,impl=fast");
  EXPECT_EQ(v[1].describe(), "chunk=2,up=resident,red=last,isa=best,impl=fast");
  EXPECT_EQ(v[1].text, "chunk=2");

  v = bench::parse_variants("old,chunk=4:reduction=separate,isa=portable,impl=ref", 4);
  EXPECT_EQ(v[0].describe(), "chunk=4,up=spill,red=separate,isa=best,impl=fast");
  EXPECT_EQ(v[1].opt.isa, Isa::portable);
  EXPECT_FALSE(v[0].isa_given);
  EXPECT_TRUE(v[1].isa_given);
  const std::vector<bench::Variant> w = bench::parse_variants("isa=avx2:isa=avx512", 4);
  EXPECT_EQ(w[0].opt.isa, Isa::avx2);
  EXPECT_EQ(w[1].describe(), "chunk=4,up=resident,red=last,isa=avx512,impl=fast");
  EXPECT_EQ(v[1].opt.impl, Impl::ref);
  EXPECT_EQ(v[1].opt.reduction, Reduction::separate);
  // rot= picks the cache's rotation (issue 20); described only when not none.
  const std::vector<bench::Variant> r = bench::parse_variants("new:new,rot=hadamard", 4);
  EXPECT_EQ(r[0].rotation, KvRotation::none);
  EXPECT_EQ(r[1].rotation, KvRotation::hadamard);
  EXPECT_EQ(r[1].describe(), "chunk=4,up=resident,red=last,isa=best,impl=fast,rot=hadamard");
  EXPECT_THROW(bench::parse_variants("new:rot=walsh", 4), Error);
}

TEST(Variants, BadSpecsAreErrors) {
  for (const char* bad : {"",
                          "old",
                          "old:new:old",
                          ":new",
                          "old:",
                          "chunk=0:new",
                          "chunk=-1:new",
                          "chunk=x:new",
                          "chunk=2.5:new",
                          "chunk=:new",
                          "chunk:new",
                          "foo=1:new",
                          "up=maybe:new",
                          "red=first:new",
                          "isa=avx:new",
                          "impl=slow:new",
                          "chunk=1,chunk=2:new",
                          "red=last,reduction=last:new",
                          "chunk=2,old:new",
                          "old,:new",
                          "newest:old"}) {
    SCOPED_TRACE(std::string("spec '") + bad + "'");
    EXPECT_THROW(bench::parse_variants(bad, 4), Error);
  }
  try {
    bench::parse_variants("chunk=1:speed=11", 4);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("speed"), std::string::npos) << e.what();
  }
  EXPECT_THROW(bench::parse_variants("old:new", 0), Error);
}

// ---- timing statistics -----------------------------------------------------------------------

TEST(Stats, MedianPercentilesSpreadAndReps) {
  const bench::Stats s = bench::summarize({5, 1, 4, 2, 3});
  EXPECT_EQ(s.n, 5);
  EXPECT_DOUBLE_EQ(s.median, 3);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 5);
  EXPECT_DOUBLE_EQ(s.p10, 1.4);
  EXPECT_DOUBLE_EQ(s.p90, 4.6);
  EXPECT_DOUBLE_EQ(s.spread(), 3.2 / 3);
  EXPECT_DOUBLE_EQ(bench::summarize({2, 4}).median, 3);
  EXPECT_THROW(bench::summarize({}), Error);
  EXPECT_EQ(bench::choose_reps(0.01, 0.25, 5, 100), 25);
  EXPECT_EQ(bench::choose_reps(1.0, 0.25, 5, 100), 5);
  EXPECT_EQ(bench::choose_reps(1e-6, 0.25, 5, 100), 100);
  EXPECT_EQ(bench::choose_reps(0, 0.25, 5, 100), 100);
}

// ---- `mla bench` end to end ------------------------------------------------------------------

fs::path test_dir() {
  const char* root = std::getenv("MLA_TEST_TMP");
  const fs::path base = root && *root ? fs::path(root) : fs::temp_directory_path();
  const fs::path d = base / ("test_bench_support." + std::to_string(getpid()));
  fs::create_directories(d);
  return d;
}

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// Runs `mla <args>`; returns the exit code and fills out/err.
int run_cli(const std::string& args, std::string* out, std::string* err) {
  const char* cli = std::getenv("MLA_CLI");
  const fs::path d = test_dir();
  const std::string cmd = quote(cli) + " " + args + " >" + quote((d / "stdout").string()) + " 2>" +
                          quote((d / "stderr").string());
  const int st = std::system(cmd.c_str());
  auto slurp = [](const fs::path& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  *out = slurp(d / "stdout");
  *err = slurp(d / "stderr");
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// A ceilings file with round numbers, so the test needs no measurement and can check the
// ceiling fraction exactly.
std::string write_ceilings() {
  // Native and AVX2 entries alike, so the floor below holds whichever kernel this CPU runs (a CPU
  // without AVX-512 BF16 runs the AVX2 bf16 kernel, held to the avx2 entry) and nothing is measured.
  std::vector<Ceilings> all;
  for (const char* limit : {"native", "avx2"})
  for (int t : {1, 2})
    all.push_back(Ceilings{.cpu = "test",
                           .threads = t,
                           .limit = limit,
                           .read_bw_mem_gbs = 20.0 * t,
                           .read_bw_l2_gbs = 200.0 * t,
                           .read_bw_l3_gbs = 100.0 * t,
                           .fp32_fma_gflops = 100.0 * t,
                           .bf16_dot_gflops = 200.0 * t,
                           .int8_dot_gops = 400.0 * t,
                           .fp32_isa = "avx512f",
                           .bf16_isa = "avx512_bf16",
                           .int8_isa = "avx512_vnni",
                           .read_isa = "avx512f"});
  const fs::path p = test_dir() / "ceilings.json";
  std::ofstream(p) << ceilings_to_json(all);
  return p.string();
}

TEST(MlaBench, TinyGridWritesTheTableAndJson) {
  if (!std::getenv("MLA_CLI")) GTEST_SKIP() << "MLA_CLI is not set";
  const fs::path json_path = test_dir() / "bench.json";
  fs::remove(json_path);
  std::string out, err;
  const int rc = run_cli(
      "bench --b 1,3 --k 130 --heads 4 --q-len 2 --kv-dtype bf16 --threads "
      "1,2 --block-size 32 --reps 2 --ceilings " +
          quote(write_ceilings()) + " --json " + quote(json_path.string()),
      &out, &err);
  ASSERT_EQ(rc, 0) << out << err;
  for (const char* row : {"b1_k130_c1", "b3_k130_c1", "b1_k130_c2", "b3_k130_c2", "AVG"})
    EXPECT_NE(out.find(row), std::string::npos) << row << " missing from\n" << out;
  EXPECT_NE(err.find("b3_k130_c2"), std::string::npos) << "no progress line:\n" << err;

  std::ifstream f(json_path);
  ASSERT_TRUE(f.good());
  const nlohmann::json doc = nlohmann::json::parse(f);
  ASSERT_EQ(doc["rows"].size(), 4u);
  EXPECT_EQ(doc["ceilings"].size(), 4u);
  EXPECT_TRUE(doc["all_pass"].get<bool>());
  double sum = 0;
  for (const auto& r : doc["rows"]) {
    SCOPED_TRACE(r.dump());
    for (const char* key : {"b", "k", "c", "heads", "q_len", "kv_dtype", "old_us", "new_us",
                            "speedup", "baseline_us", "gflops", "ceiling_fraction", "check",
                            "old_spread", "new_spread", "old_variant", "new_variant"})
      EXPECT_TRUE(r.contains(key)) << key;
    const int b = r["b"], c = r["c"];
    EXPECT_EQ(r["name"], "b" + std::to_string(b) + "_k130_c" + std::to_string(c));
    EXPECT_EQ(r["k"], 130);
    EXPECT_EQ(r["heads"], 4);
    EXPECT_EQ(r["q_len"], 2);
    EXPECT_EQ(r["kv_dtype"], "bf16");
    EXPECT_EQ(r["check"], "pass");
    EXPECT_EQ(r["old_variant"], "chunk=1,up=spill,red=separate,isa=best,impl=fast");
    EXPECT_EQ(r["new_variant"], "chunk=4,up=resident,red=last,isa=best,impl=fast");
    const double old_us = r["old_us"], new_us = r["new_us"], base_us = r["baseline_us"];
    EXPECT_GT(old_us, 0);
    EXPECT_GT(new_us, 0);
    EXPECT_GT(base_us, 0);
    EXPECT_NEAR(r["speedup"].get<double>(), old_us / new_us, 1e-9 * old_us / new_us);
    const double flops = 2.0 * 4 * 2 * 130 * 1088 * b;
    EXPECT_NEAR(r["gflops"].get<double>(), flops / new_us * 1e-3, 1e-6 * flops / new_us);
    // bf16 at 4 heads x q_len 2: compute 2*8*130*1088*b / (200c GFLOP/s) = 11.3 us * b/c against
    // 130*1152*b bytes at 100c GB/s (L3) or 20c GB/s (memory) = 1.5 or 7.5 us * b/c.
    const double floor_s = std::max(flops / (200e9 * c), 130.0 * 1152 * b / (100e9 * c));
    EXPECT_NEAR(r["ceiling_fraction"].get<double>(), floor_s / (new_us * 1e-6),
                1e-6 * floor_s / (new_us * 1e-6));
    EXPECT_EQ(r["checks"]["new"]["pass"], true);
    EXPECT_EQ(r["checks"]["baseline"]["pass"], true);
    EXPECT_EQ(r["old"]["reps"], 2);
    sum += r["speedup"].get<double>();
  }
  EXPECT_NEAR(doc["avg_speedup"].get<double>(), sum / 4, 1e-9);
}

TEST(MlaBench, RefusesBadArguments) {
  if (!std::getenv("MLA_CLI")) GTEST_SKIP() << "MLA_CLI is not set";
  // Every argument is valid but the one named, so each run would be quick if it started.
  const std::string tiny = "bench --heads 2 --reps 1 --no-baseline ";
  const std::string ceil = " --ceilings " + quote(write_ceilings());
  struct Bad {
    std::string args, message;
  };
  const Bad cases[] = {
      {tiny + "--b 1 --k 64 --variants chunk=0:new" + ceil, "chunk"},
      {tiny + "--b 1 --k 64 --variants old" + ceil, "two"},
      {tiny + "--b 1 --k 64 --kv-dtype int4" + ceil, "int4"},
      {tiny + "--b 1,x --k 64" + ceil, "--b"},
      {tiny + "--b 1 --k 1 --q-len 2" + ceil, "--q-len"},
      {tiny + "--b 1 --k 64 --ceilings /nonexistent/ceilings.json", "/nonexistent/ceilings.json"},
      {tiny + "--b 1 --k 64 --json /nonexistent/dir/out.json" + ceil, "/nonexistent/dir"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.args);
    std::string out, err;
    EXPECT_EQ(run_cli(b.args, &out, &err), 2) << out << err;
    EXPECT_NE(err.find(b.message), std::string::npos) << err;
  }
}

}  // namespace
}  // namespace mla
