// The non-finite rule of DESIGN §6, held by every kernel of the registry this CPU runs, forced
// ISA included, at 1, 2, 3 and 8 threads (so KV splits and their combine) and both reductions:
// a NaN or Inf a row can see (its query, a key or value in its visible range) makes that row's o
// and lse NaN; every other row is bit-identical to the run without the bad value; padding rows
// stay o = 0, lse = -inf. The float64 reference follows the same rule. Also: unused cache slots
// holding finite garbage that would dominate the softmax are never read, the causal rule is
// checked against its own definition through the outputs, and this CPU runs the AVX-512 kernels
// its flags allow.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>

#include "cpu/attention/isa.h"
#include "cpu/attention/kernel.h"
#include "mla/attention.h"
#include "mla/dtype.h"
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

int64_t slot_of(const test::Case& c, int b, int pos) {
  const int bs = c.spec.block_size;
  return int64_t(c.block_table[size_t(b) * c.p.max_blocks_per_seq + pos / bs]) * bs + pos % bs;
}

struct Outputs {
  std::vector<float> o, lse;
};

Outputs run(const test::Case& c, const std::vector<uint16_t>& q16, const DecodeOptions& opt) {
  const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
  Outputs r{std::vector<float>(rows * kLatentDim, 12345.f), std::vector<float>(rows, 12345.f)};
  decode(c.p, c.q_dtype, q16.data(), c.cache, opt, r.o.data(), r.lse.data());
  return r;
}

// A bad value and the rows (b, i) it reaches (all heads of a row, or one head for a query value).
struct Poison {
  std::string what;
  bool in_query;
  int b, i_or_pos, head, dim;  // query: (b, i, head, dim); cache: (b, position, -, dim)
  float value;
};

bool padding(const test::Case& c, int b, int i) { return c.seq_lens[b] == 0 || i >= c.q_lens[b]; }

// Row (b, i, h) sees cache position pos iff the position of its own token, seq_len - q_len_b + i
// (causal), or the last one (non-causal), is at or after pos. Written out here, not taken from
// last_visible(), so that the kernels' masking is checked against the definition.
bool sees(const test::Case& c, int b, int i, int pos) {
  if (padding(c, b, i)) return false;
  const int own = c.spec.causal ? c.seq_lens[b] - c.q_lens[b] + i : c.seq_lens[b] - 1;
  return pos <= own;
}

bool reached(const test::Case& c, const Poison& x, int b, int i, int h) {
  if (b != x.b || padding(c, b, i)) return false;
  if (x.in_query) return i == x.i_or_pos && h == x.head;
  return sees(c, b, i, x.i_or_pos);
}

uint16_t to_bits(DType t, float v) { return t == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v); }

// Checks one poisoned run against the clean run of the same options: NaN exactly where the
// poison reaches, bit-identical elsewhere, padding rows 0 / -inf.
void check_rule(const test::Case& c, const Poison& x, const Outputs& clean, const Outputs& bad,
                const std::string& what) {
  const DecodeParams& p = c.p;
  int nan_rows = 0;
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.q_len; ++i)
      for (int h = 0; h < p.num_heads; ++h) {
        const int64_t r = (int64_t(b) * p.q_len + i) * p.num_heads + h;
        const float* o = bad.o.data() + r * kLatentDim;
        const std::string where = what + " row (b " + std::to_string(b) + ", i " +
                                  std::to_string(i) + ", h " + std::to_string(h) + ")";
        if (padding(c, b, i)) {
          ASSERT_EQ(bad.lse[r], -std::numeric_limits<float>::infinity()) << where << " padding";
          for (int d = 0; d < kLatentDim; ++d) ASSERT_EQ(o[d], 0.f) << where << " padding";
        } else if (reached(c, x, b, i, h)) {
          ++nan_rows;
          ASSERT_TRUE(std::isnan(bad.lse[r])) << where << ": lse " << bad.lse[r] << ", not NaN";
          for (int d = 0; d < kLatentDim; ++d)
            ASSERT_TRUE(std::isnan(o[d])) << where << ": o[" << d << "] = " << o[d] << ", not NaN";
        } else {
          ASSERT_EQ(0, std::memcmp(&bad.lse[r], &clean.lse[r], sizeof(float)))
              << where << " cannot see the bad value: lse " << bad.lse[r] << " vs " << clean.lse[r];
          ASSERT_EQ(0, std::memcmp(o, clean.o.data() + r * kLatentDim, kLatentDim * sizeof(float)))
              << where << " cannot see the bad value, but its o changed";
        }
      }
  ASSERT_GT(nan_rows, 0) << what << ": the poison reaches no row (test bug)";
}

class NonFinite : public ::testing::TestWithParam<const cpu::KernelInfo*> {};

std::vector<Poison> poisons_for(const test::Case& c) {
  const float nan = std::numeric_limits<float>::quiet_NaN(),
              inf = std::numeric_limits<float>::infinity();
  const int last0 = c.seq_lens[0] - 1;  // visible to row i = 1 of sequence 0 only (q_len 2)
  std::vector<Poison> v = {
      {"query latent NaN", true, 0, 1, 5, 17, nan},
      {"query rope +Inf", true, 2, 0, 0, kLatentDim + 3, inf},
      {"query latent -Inf", true, 0, 0, 15, 500, -inf},
      {"key rope NaN (all rows of the sequence)", false, 1, 200, 0, kLatentDim + 9, nan},
      {"key rope -Inf, last position (one row)", false, 0, last0, 0, kLatentDim + 60, -inf},
      {"key rope +Inf", false, 2, 40, 0, kLatentDim + 1, inf},
  };
  if (c.spec.kv != KvDType::int8 || c.spec.scale == KvScale::token) {
    // A latent value is a key and a value; int8 keeps one only with a per-token scale (NaN).
    v.push_back({"value (latent) NaN", false, 1, 3, 0, 7, nan});
    v.push_back({"value (latent) +Inf, last position (one row)", false, 0, last0, 0, 300, inf});
    v.push_back({"value (latent) -Inf, first position", false, 2, 0, 0, 511, -inf});
  }
  return v;
}

void check_kernel_rule(const cpu::KernelInfo& k, KvScale scale, int block_size) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  CaseSpec s{.batch = 3, .q_len = 2, .heads = 16, .block_size = block_size,
             .seq_lens = {300, 517, 90}, .q_lens = {2, 1, 2}};
  s.kv = k.kv;
  s.scale = scale;
  test::Case c = test::make_case(s, seed);
  struct Opt {
    int threads;
    Reduction red;
  };
  std::vector<Opt> opts;
  for (int t : {1, 2, 3, 8})
    for (Reduction red : {Reduction::separate, Reduction::last}) opts.push_back({t, red});
  std::vector<Outputs> clean;
  for (const Opt& o : opts) {
    clean.push_back(run(c, c.q16, DecodeOptions{.threads = o.threads, .reduction = o.red, .kernel = k.name}));
    for (int64_t r = 0; r < int64_t(clean.back().lse.size()); ++r) {
      const int b = int(r / (c.p.q_len * c.p.num_heads)), i = int(r / c.p.num_heads % c.p.q_len);
      if (!padding(c, b, i)) {
        ASSERT_TRUE(std::isfinite(clean.back().lse[r])) << "NaN from finite input, row " << r;
      }
    }
  }
  for (const Poison& x : poisons_for(c)) {
    std::vector<uint16_t> q16 = c.q16;
    std::vector<float> tok(kQkDim);
    int64_t slot = -1;
    if (x.in_query) {
      q16[((int64_t(x.b) * c.p.q_len + x.i_or_pos) * c.p.num_heads + x.head) * kQkDim + x.dim] =
          to_bits(c.q_dtype, x.value);
    } else {
      slot = slot_of(c, x.b, x.i_or_pos);
      std::copy_n(c.kv.data() + slot * kQkDim, kQkDim, tok.data());
      tok[x.dim] = x.value;
      c.cache.write(slot, tok.data());
    }
    for (size_t j = 0; j < opts.size(); ++j) {
      const std::string what = std::string(k.name) + " " + x.what + ", threads " +
                               std::to_string(opts[j].threads) +
                               (opts[j].red == Reduction::last ? " last" : " separate");
      check_rule(c, x, clean[j], run(c, q16, DecodeOptions{.threads = opts[j].threads, .reduction = opts[j].red, .kernel = k.name}), what);
      if (::testing::Test::HasFatalFailure()) return;
    }
    if (slot >= 0) c.cache.write(slot, c.kv.data() + slot * kQkDim);
  }
}

TEST_P(NonFinite, VisibleNanOrInfMakesExactlyThoseRowsNan) {
  check_kernel_rule(*GetParam(), KvScale::token, 32);
}

TEST_P(NonFinite, VisibleNanOrInfMakesExactlyThoseRowsNanStaticScalesSmallBlocks) {
  const cpu::KernelInfo& k = *GetParam();
  if (k.kv != KvDType::int8) {
    check_kernel_rule(k, KvScale::token, 16);
    return;
  }
  check_kernel_rule(k, KvScale::tensor, 16);
  if (!HasFatalFailure()) check_kernel_rule(k, KvScale::channel, 64);
}

INSTANTIATE_TEST_SUITE_P(Registry, NonFinite, ::testing::ValuesIn(test::supported_kernels()), kernel_names);

// The float64 reference on the same poisons: NaN exactly on the rows that see the value (it
// dropped an Inf key whose score came out -inf).
TEST(NonFiniteReference, FollowsTheRule) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8}) {
    CaseSpec s{.batch = 3, .q_len = 2, .heads = 2, .block_size = 32, .seq_lens = {300, 517, 90},
               .q_lens = {2, 1, 2}};
    s.kv = kv;
    test::Case c = test::make_case(s, seed);
    const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
    std::vector<double> ro(rows * kLatentDim), rl(rows);
    for (Poison x : poisons_for(c)) {
      if (x.in_query) x.head %= c.p.num_heads;
      std::vector<float> q = c.q_ref;
      std::vector<float> tok(kQkDim);
      int64_t slot = -1;
      if (x.in_query) {
        q[((int64_t(x.b) * c.p.q_len + x.i_or_pos) * c.p.num_heads + x.head) * kQkDim + x.dim] = x.value;
      } else {
        slot = slot_of(c, x.b, x.i_or_pos);
        std::copy_n(c.kv.data() + slot * kQkDim, kQkDim, tok.data());
        tok[x.dim] = x.value;
        c.cache.write(slot, tok.data());
      }
      ref::decode(c.p, q.data(), c.cache, ro.data(), rl.data());
      for (int b = 0; b < c.p.batch; ++b)
        for (int i = 0; i < c.p.q_len; ++i)
          for (int h = 0; h < c.p.num_heads; ++h) {
            const int64_t r = (int64_t(b) * c.p.q_len + i) * c.p.num_heads + h;
            const bool want_nan = reached(c, x, b, i, h);
            EXPECT_EQ(want_nan, std::isnan(rl[r])) << kv_dtype_name(kv) << " " << x.what << " row " << r;
            // Every element of the row: NaN throughout, or none (a NaN that reached only some
            // channels, or a finite element left in a poisoned row, is a bug).
            int nans = 0, finite = 0;
            for (int d = 0; d < kLatentDim; ++d) {
              nans += std::isnan(ro[r * kLatentDim + d]);
              finite += std::isfinite(ro[r * kLatentDim + d]);
            }
            EXPECT_EQ(nans, want_nan ? kLatentDim : 0)
                << kv_dtype_name(kv) << " " << x.what << " row " << r;
            EXPECT_EQ(finite, want_nan ? 0 : kLatentDim)
                << kv_dtype_name(kv) << " " << x.what << " row " << r;
            if (!want_nan && !padding(c, b, i)) {
              EXPECT_TRUE(std::isfinite(rl[r]));
            }
          }
      if (slot >= 0) c.cache.write(slot, c.kv.data() + slot * kQkDim);
    }
  }
}

// The comparator states the rule: NaN where the reference is NaN (pass), a number where it is
// NaN or NaN where it is a number (fail), and a single bad row among many shows per row.
TEST(NonFiniteComparator, StatesTheRulePerRow) {
  const int rows = 64, dv = 8;
  std::vector<double> ro(rows * dv), rl(rows);
  std::vector<float> o(rows * dv), lse(rows);
  for (int i = 0; i < rows * dv; ++i) o[i] = float(ro[i] = 1.0 + 0.01 * (i % 7));
  for (int r = 0; r < rows; ++r) lse[r] = float(rl[r] = 0.5 * r);
  const ref::Tolerance tol = ref::tolerance_for(KvDType::bf16, false);
  EXPECT_TRUE(ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows, dv, tol).pass);
  // Both NaN on row 3: a match.
  for (int d = 0; d < dv; ++d) o[3 * dv + d] = float(ro[3 * dv + d] = std::nan(""));
  lse[3] = float(rl[3] = std::nan(""));
  EXPECT_TRUE(ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows, dv, tol).pass);
  // The kernel says 0 / -inf where the reference says NaN: a mismatch.
  auto o2 = o;
  auto l2 = lse;
  for (int d = 0; d < dv; ++d) o2[3 * dv + d] = 0.f;
  l2[3] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(ref::compare(o2.data(), l2.data(), ro.data(), rl.data(), rows, dv, tol).mismatched_nonfinite, dv + 1);
  // +inf against NaN is not a match either.
  o2 = o;
  o2[3 * dv] = std::numeric_limits<float>::infinity();
  EXPECT_FALSE(ref::compare(o2.data(), lse.data(), ro.data(), rl.data(), rows, dv, tol).pass);
  // One row 3% off among 64: the aggregate stays under 5e-3, the row does not.
  o2 = o;
  for (int d = 0; d < dv; ++d) o2[10 * dv + d] *= 1.03f;
  const ref::Comparison cmp = ref::compare(o2.data(), lse.data(), ro.data(), rl.data(), rows, dv, tol);
  EXPECT_LT(cmp.rel_err, tol.rel_err);
  EXPECT_FALSE(cmp.pass);
  EXPECT_EQ(cmp.worst_row, 10);
}

// Unused slots (spare blocks, the tails of sequences' last blocks) hold finite garbage that would
// dominate every softmax if read: keys aligned with a query at 50x its scale, values of 1e4 (int8:
// saturating). The outputs must be bit-identical to those with NaN there, and match the reference.
TEST_P(NonFinite, FiniteGarbageInUnusedSlotsIsNeverRead) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  for (int bs : {16, 64}) {
    CaseSpec s{.batch = 4, .q_len = 2, .heads = 16, .block_size = bs,
               .seq_lens = {37, 0, 130, 201}, .q_lens = {2, 1, 1, 2}, .spare_blocks = 6};
    s.kv = k.kv;
    test::Case c = test::make_case(s, seed);
    std::set<int64_t> used;
    for (int b = 0; b < c.p.batch; ++b)
      for (int t = 0; t < c.seq_lens[b]; ++t) used.insert(slot_of(c, b, t));
    std::vector<Outputs> clean;
    for (int threads : {1, 3})
      clean.push_back(run(c, c.q16, DecodeOptions{.threads = threads, .kernel = k.name}));
    std::vector<float> tok(kQkDim);
    for (int64_t slot = 0; slot < c.cache.num_slots(); ++slot) {
      if (used.count(slot)) continue;
      const float* q = c.q_ref.data() + (slot % (c.p.batch * c.p.q_len * c.p.num_heads)) * kQkDim;
      double qq = 0;
      for (int d = 0; d < kQkDim; ++d) qq += double(q[d]) * q[d];
      const double gain = 50.0 * 2.0 / (qq * c.p.softmax_scale + 1e-30);  // score ~ 100
      for (int d = 0; d < kQkDim; ++d) tok[d] = slot % 2 ? float(q[d] * gain) : (d % 2 ? 1e4f : -1e4f);
      ASSERT_EQ(c.cache.write(slot, tok.data()), 0);
    }
    for (int j = 0; j < 2; ++j) {
      const int threads = j ? 3 : 1;
      const Outputs g = run(c, c.q16, DecodeOptions{.threads = threads, .kernel = k.name});
      ASSERT_EQ(0, std::memcmp(g.o.data(), clean[j].o.data(), g.o.size() * sizeof(float)))
          << k.name << " block " << bs << " threads " << threads << ": o depends on unused slots";
      ASSERT_EQ(0, std::memcmp(g.lse.data(), clean[j].lse.data(), g.lse.size() * sizeof(float)))
          << k.name << " block " << bs << " threads " << threads << ": lse depends on unused slots";
      std::vector<double> ro(g.o.size()), rl(g.lse.size());
      ref::decode(c.p, c.q_ref.data(), c.cache, ro.data(), rl.data());
      const ref::Comparison cmp = ref::compare(g.o.data(), g.lse.data(), ro.data(), rl.data(),
                                               int64_t(g.lse.size()), kLatentDim,
                                               ref::tolerance_for(k.kv, false));
      EXPECT_TRUE(cmp.pass) << k.name << ": " << cmp.summary();
    }
  }
}

// The causal rule from the outputs: in a sequence of 40 tokens with 4 query rows, a NaN at
// position p reaches row i exactly when p <= 36 + i (the row's own token), for every kernel.
TEST_P(NonFinite, CausalRuleFromItsDefinition) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  CaseSpec s{.batch = 1, .q_len = 4, .heads = 4, .block_size = 16, .seq_lens = {40}};
  s.kv = k.kv;
  test::Case c = test::make_case(s, seed);
  std::vector<float> tok(kQkDim);
  for (int pos = 34; pos < 40; ++pos) {
    const int64_t slot = slot_of(c, 0, pos);
    std::copy_n(c.kv.data() + slot * kQkDim, kQkDim, tok.data());
    tok[kLatentDim + 5] = std::numeric_limits<float>::quiet_NaN();
    c.cache.write(slot, tok.data());
    const Outputs r = run(c, c.q16, DecodeOptions{.threads = 1, .kernel = k.name});
    for (int i = 0; i < 4; ++i)
      for (int h = 0; h < 4; ++h)
        EXPECT_EQ(std::isnan(r.lse[i * 4 + h]), pos <= 40 - 4 + i)
            << k.name << " NaN at position " << pos << ", row " << i << " head " << h;
    c.cache.write(slot, c.kv.data() + slot * kQkDim);
  }
}

// The int8 query quantization against its definition (DESIGN §3), not the kernels' helper: per
// row, q_used = k * scale with k an integer in [-127, 127], scale = max|q| / 127, the largest
// element exactly +-127, every value within half a step of q.
TEST(Int8Query, QuantizationFromItsDefinition) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  CaseSpec s{.batch = 2, .q_len = 1, .heads = 8, .block_size = 16, .seq_lens = {20, 20}};
  s.kv = KvDType::int8;
  test::Case c = test::make_case(s, seed);
  for (int64_t r = 0; r < 16; ++r) {
    const float* q = c.q.data() + r * kQkDim;
    const float* u = c.q_ref.data() + r * kQkDim;
    double mx = 0;
    for (int d = 0; d < kLatentDim; ++d) mx = std::max(mx, std::fabs(double(q[d])));
    const double step = mx / 127;
    int at_max = 0;
    for (int d = 0; d < kLatentDim; ++d) {
      const double k = u[d] / step;
      ASSERT_NEAR(k, std::nearbyint(k), 1e-3) << "row " << r << " dim " << d;
      ASSERT_LE(std::fabs(k), 127.0 + 1e-3);
      ASSERT_LE(std::fabs(u[d] - q[d]), step * 0.5 * (1 + 1e-5)) << "row " << r << " dim " << d;
      at_max += std::fabs(std::fabs(k) - 127) < 1e-3;
    }
    EXPECT_GE(at_max, 1) << "row " << r << ": max|q| does not map to 127";
    for (int d = kLatentDim; d < kQkDim; ++d) ASSERT_EQ(u[d], q[d]) << "rope changed";
  }
}

// If run-time dispatch broke, every AVX-512 suite would skip and the registry tests would quietly
// drop those kernels. The CPU's flags, read from /proc/cpuinfo (not through the kernels'
// supported()), say which kernels must be selected.
TEST(Dispatch, SelectsTheAvx512KernelsThisCpuReports) {
  std::ifstream f("/proc/cpuinfo");
  ASSERT_TRUE(f) << "cannot read /proc/cpuinfo";
  std::set<std::string> flags;
  for (std::string line; std::getline(f, line);)
    if (line.rfind("flags", 0) == 0) {
      std::istringstream is(line.substr(line.find(':') + 1));
      for (std::string w; is >> w;) flags.insert(w);
      break;
    }
  ASSERT_FALSE(flags.empty()) << "no flags line in /proc/cpuinfo";
  auto has = [&](std::initializer_list<const char*> need) {
    for (const char* n : need)
      if (!flags.count(n)) return false;
    return true;
  };
  // The registry's order: AVX-512, then AVX2 (+FMA, F16C), then portable. The int8 AVX-512 kernel
  // needs BF16 as well as VNNI (its rope part is vdpbf16ps), so a VNNI CPU without BF16 (Cascade
  // Lake, Ice Lake) runs int8 on AVX2.
  const bool avx512 = has({"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"});
  const bool bf16 = avx512 && has({"avx512_bf16"});
  const bool f16 = has({"avx512f", "fma", "f16c"});
  const bool i8 = bf16 && has({"avx512_vnni"});
  const bool avx2 = has({"avx2", "fma", "f16c"});
  auto expect = [&](bool fast, const char* fast_name, const char* avx2_name, const char* portable_name) {
    return fast ? fast_name : avx2 ? avx2_name : portable_name;
  };
  const bool amx = cpu::cpu_has_amx_set();  // the tile unit and the OS's permission: first
  EXPECT_STREQ(cpu::select_kernel(KvDType::bf16, Isa::best).name,
               amx ? "decode_bf16_avx512amx"
                   : expect(bf16, "decode_bf16_avx512bf16", "decode_bf16_avx2", "decode_bf16_portable"));
  EXPECT_STREQ(cpu::select_kernel(KvDType::fp8, Isa::best).name,
               amx ? "decode_fp8_avx512amx" : bf16 ? "decode_fp8_avx512bf16" : "decode_fp8_portable");
  EXPECT_STREQ(cpu::select_kernel(KvDType::fp16, Isa::best).name,
               expect(f16, "decode_f16_avx512f", "decode_f16_avx2", "decode_f16_portable"));
  EXPECT_STREQ(cpu::select_kernel(KvDType::int8, Isa::best).name,
               amx
                   ? "decode_i8_avx512amx"
                   : expect(i8, "decode_i8_avx512vnni", "decode_i8_avx2", "decode_i8_portable"));
  if (i8) {
    EXPECT_STREQ(cpu::select_kernel(KvDType::int8, Isa::amx_emu).name, "decode_i8_avx512amxemu");
  }
  if (!cpu::cpu_has_amx_set()) {
    EXPECT_THROW(cpu::select_kernel(KvDType::int8, Isa::amx), Error);
  }
  if (avx2) {
    EXPECT_STREQ(cpu::select_kernel(KvDType::bf16, Isa::avx2).name, "decode_bf16_avx2");
    EXPECT_STREQ(cpu::select_kernel(KvDType::fp16, Isa::avx2).name, "decode_f16_avx2");
    EXPECT_STREQ(cpu::select_kernel(KvDType::int8, Isa::avx2).name,
                 has({"avx_vnni"}) ? "decode_i8_avx2vnni" : "decode_i8_avx2");
  }
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8})
    EXPECT_TRUE(cpu::select_kernel(kv, Isa::portable).portable);
  std::printf("[ INFO     ] avx512 bf16 %d, f16 %d, int8 vnni %d; avx2 %d\n", bf16, f16, i8, avx2);
}

// Large finite inputs compute like the float64 reference or are refused, never Inf/NaN: a softmax
// scale of 1e12 (the exp of a maximum rounded half an ulp above m gave inf), and a cache value of
// 1e38 (the fp32 scores would overflow: refused; an fp16 cache cannot hold it: counted).
TEST_P(NonFinite, LargeFiniteInputsComputeOrAreRefused) {
  const cpu::KernelInfo& k = *GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  CaseSpec s{.batch = 2, .q_len = 2, .heads = 16, .block_size = 64, .seq_lens = {700, 90}};
  s.kv = k.kv;
  test::Case c = test::make_case(s, seed);
  c.p.softmax_scale = 1e12f;
  const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
  for (int threads : {1, 3}) {
    const Outputs r = run(c, c.q16, DecodeOptions{.threads = threads, .kernel = k.name});
    std::vector<double> ro(rows * kLatentDim), rl(rows);
    ref::decode(c.p, c.q_ref.data(), c.cache, ro.data(), rl.data());
    double worst_lse = 0;
    for (int64_t i = 0; i < rows; ++i) {
      ASSERT_TRUE(std::isfinite(r.lse[i])) << k.name << " scale 1e12: lse[" << i << "] = " << r.lse[i];
      worst_lse = std::max(worst_lse, std::fabs(r.lse[i] - rl[i]) / std::fabs(rl[i]));
    }
    EXPECT_LT(worst_lse, 1e-5) << k.name << " scale 1e12, threads " << threads;
    const ref::Comparison cmp =
        ref::compare(r.o.data(), r.lse.data(), ro.data(), rl.data(), rows, kLatentDim,
                     ref::Tolerance{.rel_err = ref::tolerance_for(k.kv, false).rel_err,
                                    .cosine = 0.99, .lse_abs = std::numeric_limits<double>::infinity(),
                                    .row_rel_err = ref::tolerance_for(k.kv, false).row_rel_err});
    EXPECT_TRUE(cmp.pass) << k.name << " scale 1e12, threads " << threads << ": " << cmp.summary();
  }
  c.p.softmax_scale = 1.f / std::sqrt(192.f);
  std::vector<float> tok(c.kv.begin() + slot_of(c, 0, 5) * kQkDim,
                         c.kv.begin() + (slot_of(c, 0, 5) + 1) * kQkDim);
  tok[kLatentDim + 2] = 1e38f;  // the rope: bf16 in every format (fp16: beyond its range)
  const int lost = c.cache.write(slot_of(c, 0, 5), tok.data());
  EXPECT_EQ(lost, k.kv == KvDType::fp16 ? 1 : 0) << k.name;
  if (k.kv == KvDType::fp16) return;
  std::vector<float> o(rows * kLatentDim), lse(rows);
  try {
    decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.kernel = k.name}, o.data(), lse.data());
    ADD_FAILURE() << k.name << ": a cache value of 1e38 was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("too large"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mla
