// The AVX-512 VNNI and the AVX2 int8-cache attention kernels (each one this CPU supports), run
// directly on work items (KernelArgs), against
// float64 at DESIGN §6's int8 tolerances: whole sequences against ref::decode, cut KV ranges
// against a float64 of the sub-range and, merged with ref::combine, against the unsplit reference.
// Swept over the six scale modes (token, tensor, channel, group32/64/128), block sizes 1, 16, 64, 128 with
// scattered tables, heads 1..128, q_len 1..4 (uneven per sequence), causal or not, chunk 1..8, both
// UP forms. Every slot outside the item's range holds garbage latents, NaN rope values and (token
// and group modes) NaN scales; outputs are NaN-poisoned, with sentinels between and after the item's rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "ref/compare.h"
#include "ref/reference.h"
#include "harness/random_case.h"

namespace mla::cpu {
extern const KernelInfo decode_i8_avx512vnni;
extern const KernelInfo decode_i8_avx2;
extern const KernelInfo decode_i8_avx2vnni;
}  // namespace mla::cpu

namespace mla {
namespace {

using test::Case;
using test::CaseSpec;

constexpr float kSentinel = 12345.f;
constexpr uint16_t kBf16NaN = 0x7fc0;
constexpr KvScale kAllModes[] = {KvScale::token,   KvScale::tensor,  KvScale::channel,
                                 KvScale::group32, KvScale::group64, KvScale::group128};

// The kernel under test (the fixture's parameter, set in SetUp).
const cpu::KernelInfo* g_kernel = nullptr;
const cpu::KernelInfo& kernel() { return *g_kernel; }
// Whether it runs this scale mode (the group modes need group_scales).
bool runs(KvScale mode) { return cpu::kernel_runs(kernel(), KvDType::int8, mode); }

// The int8 SIMD kernels this CPU can run (the portable one has test_decode's sweep).
std::vector<const cpu::KernelInfo*> supported_i8_kernels() {
  std::vector<const cpu::KernelInfo*> v;
  for (const cpu::KernelInfo* k :
       {&cpu::decode_i8_avx512vnni, &cpu::decode_i8_avx2vnni, &cpu::decode_i8_avx2})
    if (k->supported()) v.push_back(k);
  return v;
}

// One work item's outputs: a gap of one row between query tokens and a tail, all holding the
// sentinel, so that a write outside the item's rows shows.
struct ItemRun {
  int ql = 0, nh = 0;
  std::vector<float> o, lse;
  int64_t o_si() const { return int64_t(nh + 1) * kLatentDim; }
  int64_t lse_si() const { return nh + 1; }
};

ItemRun run_item(const Case& c, int seq, int hb, int he, int kb, int ke, int chunk, UpForm up,
                 cpu::Scratch& scratch) {
  ItemRun r;
  r.ql = q_len_of(c.p, seq);
  r.nh = he - hb;
  r.o.assign(r.ql * r.o_si() + 64, kSentinel);
  r.lse.assign(r.ql * r.lse_si() + 16, kSentinel);
  for (int i = 0; i < r.ql; ++i)
    for (int hh = 0; hh < r.nh; ++hh) {
      std::fill_n(r.o.data() + i * r.o_si() + hh * kLatentDim, kLatentDim, std::nanf(""));
      r.lse[i * r.lse_si() + hh] = std::nanf("");
    }
  const cpu::KernelArgs a{.p = &c.p,
                          .cache = &c.view,
                          .q = c.q16.data(),
                          .seq = seq,
                          .head_begin = hb,
                          .head_end = he,
                          .kv_begin = kb,
                          .kv_end = ke,
                          .o = r.o.data(),
                          .o_stride_i = r.o_si(),
                          .o_stride_h = kLatentDim,
                          .lse = r.lse.data(),
                          .lse_stride_i = r.lse_si(),
                          .lse_stride_h = 1,
                          .chunk = chunk,
                          .up = up};
  kernel().run(a, scratch);
  return r;
}

// The item's rows for query token i as contiguous [nh] rows.
void rows_of(const ItemRun& r, int i, std::vector<float>* o, std::vector<float>* lse) {
  o->resize(size_t(r.nh) * kLatentDim);
  lse->resize(r.nh);
  for (int hh = 0; hh < r.nh; ++hh) {
    std::copy_n(r.o.data() + i * r.o_si() + hh * kLatentDim, kLatentDim,
                o->data() + size_t(hh) * kLatentDim);
    (*lse)[hh] = r.lse[i * r.lse_si() + hh];
  }
}

// Every element finite or (lse) -inf, each query token's block of rows within tolerance, every
// sentinel in place. ref_o / ref_lse: [ql, nh] rows.
::testing::AssertionResult matches(const ItemRun& r, const std::vector<double>& ref_o,
                                   const std::vector<double>& ref_lse) {
  std::string worst;
  for (int i = 0; i < r.ql; ++i) {
    std::vector<float> o, lse;
    rows_of(r, i, &o, &lse);
    for (float x : o)
      if (!std::isfinite(x)) return ::testing::AssertionFailure() << "query " << i << ": o = " << x;
    for (float x : lse)
      if (std::isnan(x) || x == std::numeric_limits<float>::infinity())
        return ::testing::AssertionFailure() << "query " << i << ": lse = " << x;
    const ref::Comparison cmp =
        ref::compare(o.data(), lse.data(), ref_o.data() + size_t(i) * r.nh * kLatentDim,
                     ref_lse.data() + size_t(i) * r.nh, r.nh, kLatentDim,
                     ref::tolerance_for(KvDType::int8, false));
    if (!cmp.pass) return ::testing::AssertionFailure() << "query " << i << ": " << cmp.summary();
  }
  for (size_t x = 0; x < r.o.size(); ++x) {
    const int64_t i = int64_t(x) / r.o_si(), hh = (int64_t(x) % r.o_si()) / kLatentDim;
    if (!(i < r.ql && hh < r.nh) && r.o[x] != kSentinel)
      return ::testing::AssertionFailure() << "o written outside the item at " << x;
  }
  for (size_t x = 0; x < r.lse.size(); ++x) {
    const int64_t i = int64_t(x) / r.lse_si(), hh = int64_t(x) % r.lse_si();
    if (!(i < r.ql && hh < r.nh) && r.lse[x] != kSentinel)
      return ::testing::AssertionFailure() << "lse written outside the item at " << x;
  }
  return ::testing::AssertionSuccess();
}

// Float64 attention of rows (i, h in [hb, he)) of sequence `seq` over positions [kb, ke) only.
void ref_range(const Case& c, int seq, int hb, int he, int kb, int ke, std::vector<double>* o,
               std::vector<double>* lse) {
  ref::decode_range(c.p, c.q.data(), c.cache, seq, hb, he, kb, ke, o, lse);
}

// Garbage in a slot: latents at the int8 extremes, NaN rope, and (token and group modes) NaN
// scales.
void poison_slot(Int8CacheContent& ct, int64_t slot, KvScale mode) {
  for (int d = 0; d < kLatentDim; ++d)
    ct.latent[slot * kLatentDim + d] = int8_t(d & 1 ? 127 : -127);
  std::fill_n(ct.rope.begin() + slot * kRopeDim, kRopeDim, kBf16NaN);
  const int ns = kv_token_scales(mode);
  std::fill_n(ct.token_scale.begin() + slot * ns, ns, std::nanf(""));
}

// Poisons every slot that no sequence uses (make_case writes NaN tokens there, which the int8
// format stores as zero latents and, in token mode, a zero scale: not garbage enough).
void poison_unused(Case& c) {
  const int bs = c.cache.block_size();
  std::set<int64_t> used;
  for (int b = 0; b < c.p.batch; ++b)
    for (int t = 0; t < c.seq_lens[b]; ++t) used.insert(cpu::slot_of(c.p, bs, b, t));
  Int8CacheContent ct = c.cache.export_int8();
  for (int64_t s = 0; s < c.cache.num_slots(); ++s)
    if (!used.count(s)) poison_slot(ct, s, c.cache.scale_mode());
  c.cache.import_int8(ct);
}

// Poisons the slots of `seq` outside [kb, ke); returns the content to restore afterwards.
Int8CacheContent poison_outside(Case& c, int seq, int kb, int ke) {
  Int8CacheContent saved = c.cache.export_int8(), ct = saved;
  for (int t = 0; t < c.seq_lens[seq]; ++t)
    if (t < kb || t >= ke)
      poison_slot(ct, cpu::slot_of(c.p, c.cache.block_size(), seq, t), c.cache.scale_mode());
  c.cache.import_int8(ct);
  return saved;
}

// A case whose c.q holds what the kernel computes with (DESIGN §6: the reference runs on the
// same, already rounded inputs): the latent part quantized per row to int8 and de-quantized.
// Every zero_every-th query row (0: none) gets an all-zero latent part (query scale 0).
Case make(const CaseSpec& spec, uint64_t seed, int zero_every = 0) {
  Case c = test::make_case(spec, seed);
  poison_unused(c);
  if (zero_every > 0)
    for (size_t r = 0; r * kQkDim < c.q.size(); r += zero_every)
      for (int d = 0; d < kLatentDim; ++d) {
        c.q[r * kQkDim + d] = 0.f;
        c.q16[r * kQkDim + d] = 0;
      }
  const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
  std::vector<float> q_used(c.q.size());
  kernel_query_values(c.cache, rows, c.q.data(), q_used.data());
  c.q = std::move(q_used);
  return c;
}

class KernelI8Avx512 : public ::testing::TestWithParam<const cpu::KernelInfo*> {
 protected:
  void SetUp() override { g_kernel = GetParam(); }
  cpu::Scratch scratch_;
};

struct Sweep {
  int heads, q_len, block_size;
  std::vector<int> seq_lens, q_lens;
  bool causal;
  float score_std;
  bool sink;
  int chunk;
};

std::string describe(const Sweep& s, KvScale mode, UpForm up) {
  return std::string(kv_scale_name(mode)) + " heads " + std::to_string(s.heads) + " q_len " +
         std::to_string(s.q_len) + " block " + std::to_string(s.block_size) + " chunk " +
         std::to_string(s.chunk) + (s.causal ? " causal" : " non-causal") + " std " +
         std::to_string(s.score_std) + (s.sink ? " sink" : "") +
         (up == UpForm::resident ? " resident" : " spill");
}

// Whole sequences, all heads, every scale mode, compared with ref::decode.
TEST_P(KernelI8Avx512, FullRangeMatchesReference) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  const std::vector<Sweep> sweeps = {
      {1, 1, 1, {1, 77}, {}, true, 2.f, false, 1},
      {3, 2, 16, {130, 2}, {2, 1}, true, 1.f, false, 2},
      {16, 1, 64, {300}, {}, true, 2.f, false, 4},
      {16, 3, 128, {257, 64}, {3, 1}, false, 3.f, false, 4},
      {128, 2, 64, {200}, {}, true, 1.5f, false, 4},
      {128, 1, 16, {65}, {}, true, 2.f, true, 1},
      {5, 4, 64, {400, 9, 129}, {4, 2, 3}, true, 3.f, true, 8},
      {33, 4, 1, {95}, {}, true, 2.f, false, 2},
      {7, 2, 128, {600}, {}, false, 2.f, true, 8},
      {40, 2, 64, {520}, {1}, true, 3.f, false, 4},
      {128, 4, 64, {150}, {}, true, 2.f, false, 2},
  };
  for (KvScale mode : kAllModes)
    for (size_t w = 0; w < sweeps.size() && runs(mode); ++w) {
      const Sweep& sw = sweeps[w];
      const UpForm up = (w + int(mode)) % 2 ? UpForm::spill : UpForm::resident;
      SCOPED_TRACE(describe(sw, mode, up));
      CaseSpec spec{.batch = int(sw.seq_lens.size()),
                    .q_len = sw.q_len,
                    .heads = sw.heads,
                    .block_size = sw.block_size,
                    .seq_lens = sw.seq_lens,
                    .q_lens = sw.q_lens,
                    .kv = KvDType::int8,
                    .scale = mode,
                    .causal = sw.causal,
                    .score_std = sw.score_std,
                    .sink = sw.sink};
      const Case c =
          make(spec, seed + sw.heads * 7 + sw.block_size + int(mode), w % 3 == 0 ? 5 : 0);
      const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
      std::vector<double> ref_o(rows * kLatentDim), ref_lse(rows);
      ref::decode(c.p, c.q.data(), c.cache, ref_o.data(), ref_lse.data());
      for (int b = 0; b < c.p.batch; ++b) {
        const ItemRun r = run_item(c, b, 0, sw.heads, 0, c.seq_lens[b], sw.chunk, up, scratch_);
        const auto row0 = size_t(b) * c.p.q_len * sw.heads;  // padding rows i >= ql not compared
        std::vector<double> o(ref_o.begin() + row0 * kLatentDim,
                              ref_o.begin() + (row0 + size_t(r.ql) * sw.heads) * kLatentDim);
        std::vector<double> lse(ref_lse.begin() + row0, ref_lse.begin() + row0 + r.ql * sw.heads);
        EXPECT_TRUE(matches(r, o, lse)) << "sequence " << b;
      }
    }
}

// The two UP forms give the same answer (they differ only in where the accumulator lives).
TEST_P(KernelI8Avx512, UpFormsAgree) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  for (KvScale mode : kAllModes) {
    if (!runs(mode)) continue;
    CaseSpec spec{.batch = 1,
                  .q_len = 3,
                  .heads = 24,
                  .block_size = 64,
                  .seq_lens = {777},
                  .kv = KvDType::int8,
                  .scale = mode,
                  .score_std = 2.5f};
    const Case c = make(spec, seed + 3);
    const ItemRun a = run_item(c, 0, 0, 24, 0, 777, 2, UpForm::resident, scratch_);
    const ItemRun b = run_item(c, 0, 0, 24, 0, 777, 2, UpForm::spill, scratch_);
    for (size_t x = 0; x < a.o.size(); ++x)
      ASSERT_NEAR(a.o[x], b.o[x], 1e-5f * (1.f + std::fabs(a.o[x])))
          << kv_scale_name(mode) << " " << x;
    for (size_t x = 0; x < a.lse.size(); ++x)
      ASSERT_EQ(a.lse[x], b.lse[x]) << kv_scale_name(mode) << " " << x;
  }
}

// The AVX-VNNI kernel (vpdpbusd on u8 x s8 quads, keys offset by 128) computes exactly the
// integer products of the vpmaddwd kernel, so every output bit is the same: over lengths that cut
// the quads, 12-token tiles and steps anywhere, odd row counts, every scale mode it runs, both UP
// forms and chunks 1-4.
TEST(KernelI8Avx2Vnni, SameBitsAsTheVpmaddwdKernel) {
  if (!cpu::decode_i8_avx2vnni.supported()) GTEST_SKIP() << "this CPU has no AVX-VNNI";
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  cpu::Scratch scratch;
  int compared = 0;
  for (KvScale mode : {KvScale::token, KvScale::tensor, KvScale::channel})
    for (const auto& [heads, len, chunk] :
         std::vector<std::tuple<int, int, int>>{{1, 1, 1}, {3, 13, 2}, {16, 130, 4}, {33, 257, 3},
                                                {128, 301, 4}, {7, 64, 1}, {24, 777, 2}}) {
      CaseSpec spec{.batch = 1, .q_len = 2, .heads = heads, .block_size = 16,
                    .seq_lens = {len}, .kv = KvDType::int8, .scale = mode, .score_std = 2.5f};
      const Case c = make(spec, seed + heads + len + int(mode));
      for (UpForm up : {UpForm::resident, UpForm::spill}) {
        SCOPED_TRACE(::testing::Message() << kv_scale_name(mode) << " heads " << heads << " len "
                                          << len << " chunk " << chunk);
        g_kernel = &cpu::decode_i8_avx2;
        const ItemRun a = run_item(c, 0, 0, heads, 0, len, chunk, up, scratch);
        g_kernel = &cpu::decode_i8_avx2vnni;
        const ItemRun b = run_item(c, 0, 0, heads, 0, len, chunk, up, scratch);
        ASSERT_EQ(a.o.size(), b.o.size());
        ASSERT_EQ(0, std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)));
        ASSERT_EQ(0, std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)));
        ++compared;
      }
    }
  EXPECT_EQ(compared, 42);
}

// Items that cut the KV range anywhere and take a subset of heads: each piece matches a float64
// of its sub-range (with garbage in every slot outside it), and the pieces merged by
// ref::combine match the unsplit reference.
TEST_P(KernelI8Avx512, SplitRangesMatchSubRangeAndCombine) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  std::mt19937_64 rng(seed);
  struct Split {
    int heads, q_len, block_size, seq_len;
    bool causal;
    int chunk;
    KvScale mode;
  };
  const std::vector<Split> splits = {
      {16, 2, 64, 700, true, 4, KvScale::token},  {128, 2, 128, 300, true, 2, KvScale::tensor},
      {3, 4, 1, 170, true, 1, KvScale::channel},  {20, 3, 16, 450, false, 8, KvScale::token},
      {9, 4, 64, 200, true, 4, KvScale::channel}, {16, 1, 16, 1000, true, 4, KvScale::tensor},
      {16, 2, 64, 700, true, 4, KvScale::group32}, {128, 2, 128, 300, true, 2, KvScale::group64},
      {3, 4, 1, 170, true, 1, KvScale::group128},  {20, 3, 16, 450, false, 8, KvScale::group64},
  };
  for (const Split& sp : splits) {
    if (!runs(sp.mode)) continue;
    CaseSpec spec{.batch = 1,
                  .q_len = sp.q_len,
                  .heads = sp.heads,
                  .block_size = sp.block_size,
                  .seq_lens = {sp.seq_len},
                  .kv = KvDType::int8,
                  .scale = sp.mode,
                  .causal = sp.causal};
    Case c = make(spec, seed + sp.seq_len);
    const int rows = sp.q_len * sp.heads;
    std::vector<double> full_o(size_t(rows) * kLatentDim), full_lse(rows);
    ref::decode(c.p, c.q.data(), c.cache, full_o.data(), full_lse.data());
    // Cut points: random, plus ones that isolate the last q_len positions (causal rows then see
    // nothing in a piece: o = 0, lse = -inf) and a one-token piece.
    std::vector<int> cuts = {0, sp.seq_len};
    std::uniform_int_distribution<int> pos(1, sp.seq_len - 1);
    for (int j = 0; j < 3; ++j) cuts.push_back(pos(rng));
    cuts.push_back(sp.seq_len - sp.q_len + 1);
    cuts.push_back(sp.seq_len - 1);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    const int hsplit = sp.heads > 1 ? 1 + int(rng() % (sp.heads - 1)) : 1;
    for (auto [hb, he] : {std::pair{0, hsplit}, std::pair{hsplit, sp.heads}}) {
      if (hb >= he) continue;
      const int nh = he - hb;
      std::vector<std::vector<float>> part_o, part_lse;
      for (size_t j = 0; j + 1 < cuts.size(); ++j) {
        const int kb = cuts[j], ke = cuts[j + 1];
        const UpForm up = j % 2 ? UpForm::spill : UpForm::resident;
        SCOPED_TRACE(std::string(kv_scale_name(sp.mode)) + " heads [" + std::to_string(hb) + ", " +
                     std::to_string(he) + ") kv [" + std::to_string(kb) + ", " +
                     std::to_string(ke) + ") of " + std::to_string(sp.seq_len) + " block " +
                     std::to_string(sp.block_size) + " chunk " + std::to_string(sp.chunk));
        std::vector<double> ro, rl;
        ref_range(c, 0, hb, he, kb, ke, &ro, &rl);
        const Int8CacheContent saved = poison_outside(c, 0, kb, ke);
        const ItemRun r = run_item(c, 0, hb, he, kb, ke, sp.chunk, up, scratch_);
        c.cache.import_int8(saved);
        EXPECT_TRUE(matches(r, ro, rl));
        std::vector<float> o(size_t(sp.q_len) * nh * kLatentDim), lse(size_t(sp.q_len) * nh);
        for (int i = 0; i < sp.q_len; ++i) {
          std::vector<float> oi, li;
          rows_of(r, i, &oi, &li);
          std::copy(oi.begin(), oi.end(), o.begin() + size_t(i) * nh * kLatentDim);
          std::copy(li.begin(), li.end(), lse.begin() + size_t(i) * nh);
        }
        part_o.push_back(std::move(o));
        part_lse.push_back(std::move(lse));
      }
      // Merge the pieces row by row and compare with the unsplit reference.
      const int n = int(part_o.size());
      std::vector<float> mo(size_t(sp.q_len) * nh * kLatentDim), ml(size_t(sp.q_len) * nh);
      std::vector<double> ro(mo.size()), rl(ml.size());
      for (int row = 0; row < sp.q_len * nh; ++row) {
        std::vector<double> os(size_t(n) * kLatentDim), ls(n);
        for (int j = 0; j < n; ++j) {
          std::copy_n(part_o[j].begin() + size_t(row) * kLatentDim, kLatentDim,
                      os.begin() + size_t(j) * kLatentDim);
          ls[j] = part_lse[j][row];
        }
        std::vector<double> o(kLatentDim);
        double lse;
        ref::combine(n, kLatentDim, os.data(), ls.data(), o.data(), &lse);
        for (int d = 0; d < kLatentDim; ++d) mo[size_t(row) * kLatentDim + d] = float(o[d]);
        ml[row] = float(lse);
        const int i = row / nh, hh = row % nh;
        std::copy_n(full_o.begin() + (size_t(i) * sp.heads + hb + hh) * kLatentDim, kLatentDim,
                    ro.begin() + size_t(row) * kLatentDim);
        rl[row] = full_lse[size_t(i) * sp.heads + hb + hh];
      }
      const ref::Comparison cmp =
          ref::compare(mo.data(), ml.data(), ro.data(), rl.data(), int64_t(sp.q_len) * nh,
                       kLatentDim, ref::tolerance_for(KvDType::int8, false));
      EXPECT_TRUE(cmp.pass) << kv_scale_name(sp.mode) << " combined pieces: " << cmp.summary();
    }
  }
}

// Ranges shorter than a step, single tokens, ranges ending mid-tile and mid-group of 4, for every
// chunk and block size: the zero-filled, masked tails must leave no trace.
TEST_P(KernelI8Avx512, ShortRangesAndTails) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  const std::vector<std::pair<int, int>> ranges = {{0, 1},   {149, 150}, {148, 150}, {5, 22},
                                                   {17, 81}, {0, 129},   {63, 150},  {1, 2}};
  for (int bs : {1, 16, 64, 128}) {
    const KvScale mode = bs == 16               ? KvScale::tensor
                         : bs == 128            ? KvScale::channel
                         : bs == 1 && runs(KvScale::group32) ? KvScale::group32
                                                : KvScale::token;
    CaseSpec spec{.batch = 1,
                  .q_len = 2,
                  .heads = 16,
                  .block_size = bs,
                  .seq_lens = {150},
                  .kv = KvDType::int8,
                  .scale = mode,
                  .causal = true,
                  .score_std = 3.f};
    Case c = make(spec, seed + 5 + bs);
    for (int chunk : {1, 2, 4, 8})
      for (auto [kb, ke] : ranges) {
        SCOPED_TRACE(std::string(kv_scale_name(mode)) + " block " + std::to_string(bs) + " kv [" +
                     std::to_string(kb) + ", " + std::to_string(ke) + ") chunk " +
                     std::to_string(chunk));
        std::vector<double> ro, rl;
        ref_range(c, 0, 0, 16, kb, ke, &ro, &rl);
        const Int8CacheContent saved = poison_outside(c, 0, kb, ke);
        for (UpForm up : {UpForm::resident, UpForm::spill}) {
          const ItemRun r = run_item(c, 0, 0, 16, kb, ke, chunk, up, scratch_);
          EXPECT_TRUE(matches(r, ro, rl));
        }
        c.cache.import_int8(saved);
      }
  }
}

// Wide score spreads with one dominating key (an attention sink), a negative and a zero softmax
// scale: the max, the exp and the P quantization must hold up, and never produce NaN.
TEST_P(KernelI8Avx512, SinkWideScoresAndOddScales) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  for (float std_ : {1.f, 3.f})
    for (float scale_mul : {1.f, -1.f, 0.f}) {
      CaseSpec spec{.batch = 2,
                    .q_len = 2,
                    .heads = 32,
                    .block_size = 64,
                    .seq_lens = {1333, 70},
                    .q_lens = {2, 1},
                    .kv = KvDType::int8,
                    .scale = KvScale::token,
                    .causal = true,
                    .score_std = std_,
                    .sink = true};
      Case c = make(spec, seed + 11);
      c.p.softmax_scale *= scale_mul;
      for (int b = 0; b < 2; ++b) {
        SCOPED_TRACE("score std " + std::to_string(std_) + " scale x " + std::to_string(scale_mul) +
                     " sequence " + std::to_string(b));
        std::vector<double> ro, rl;
        ref_range(c, b, 0, 32, 0, c.seq_lens[b], &ro, &rl);
        const ItemRun r = run_item(c, b, 0, 32, 0, c.seq_lens[b], 4, UpForm::resident, scratch_);
        EXPECT_TRUE(matches(r, ro, rl));
      }
    }
}

// Scores that keep growing along the sequence (key scales rising with the position), so that the
// running maximum moves in most steps, by small and by large amounts: every rescale path of SM/UP.
TEST_P(KernelI8Avx512, GrowingScoresMoveTheMaximum) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  for (float growth : {2.f, 8.f}) {
    CaseSpec spec{.batch = 1,
                  .q_len = 2,
                  .heads = 24,
                  .block_size = 64,
                  .seq_lens = {1500},
                  .kv = KvDType::int8,
                  .scale = KvScale::token,
                  .score_std = 1.f};
    Case c = make(spec, seed + 23);
    Int8CacheContent ct = c.cache.export_int8();
    for (int t = 0; t < 1500; ++t)
      ct.token_scale[cpu::slot_of(c.p, 64, 0, t)] *= 1.f + growth * float(t) / 1500.f;
    c.cache.import_int8(ct);
    std::vector<double> ro, rl;
    ref_range(c, 0, 0, 24, 0, 1500, &ro, &rl);
    for (int chunk : {1, 4})
      for (UpForm up : {UpForm::resident, UpForm::spill}) {
        SCOPED_TRACE("growth " + std::to_string(growth) + " chunk " + std::to_string(chunk) +
                     (up == UpForm::resident ? " resident" : " spill"));
        const ItemRun r = run_item(c, 0, 0, 24, 0, 1500, chunk, up, scratch_);
        EXPECT_TRUE(matches(r, ro, rl));
      }
  }
}

// DeepSeek-V3's decode shape (128 heads x q_len 2) over a long sequence, every chunk.
TEST_P(KernelI8Avx512, ManyHeadsLongSequence) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  CaseSpec spec{.batch = 1,
                .q_len = 2,
                .heads = 128,
                .block_size = 64,
                .seq_lens = {2100},
                .kv = KvDType::int8,
                .scale = KvScale::token,
                .score_std = 2.f};
  const Case c = make(spec, seed + 17);
  std::vector<double> ro(size_t(256) * kLatentDim), rl(256);
  ref::decode(c.p, c.q.data(), c.cache, ro.data(), rl.data());
  for (int chunk : {1, 4, 8}) {
    SCOPED_TRACE("chunk " + std::to_string(chunk));
    const ItemRun r = run_item(c, 0, 0, 128, 0, 2100, chunk, UpForm::resident, scratch_);
    EXPECT_TRUE(matches(r, ro, rl));
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelI8Avx512, ::testing::ValuesIn(supported_i8_kernels()),
                         [](const auto& info) { return std::string(info.param->name); });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(KernelI8Avx512);  // a CPU without AVX2

}  // namespace
}  // namespace mla
