// The AVX-512 bf16, fp16 and fp8 and the AVX2 bf16 and fp16 attention kernels (each one this CPU
// supports), run directly on work items (KernelArgs), against
// float64: full KV ranges against ref::decode, cut ranges against a float64 of the sub-range and,
// merged with ref::combine, against the unsplit reference. Swept over block sizes (1, 16, 64, 128,
// scattered tables), heads 1..128, q_len 1..4 (uneven per sequence), causal or not, chunk 1..8,
// both UP forms; NaN in every slot outside the item's range, NaN-poisoned outputs, and sentinels
// between and after the output rows.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "ref/compare.h"
#include "ref/reference.h"
#include "harness/random_case.h"

namespace mla::cpu {
extern const KernelInfo decode_bf16_avx512bf16;
extern const KernelInfo decode_f16_avx512f;
extern const KernelInfo decode_fp8_avx512bf16;
extern const KernelInfo decode_bf16_avx2;
extern const KernelInfo decode_f16_avx2;
}  // namespace mla::cpu

namespace mla {
namespace {

using cpu::KernelInfo;
using test::Case;
using test::CaseSpec;

constexpr float kSentinel = 12345.f;

// One work item's outputs, laid out with a gap of one row between query tokens and a tail, all
// holding the sentinel, so that a write outside the item's rows shows.
struct ItemRun {
  int ql = 0, nh = 0;
  std::vector<float> o, lse;
  int64_t o_si() const { return int64_t(nh + 1) * kLatentDim; }
  int64_t lse_si() const { return nh + 1; }
  const float* o_row(int i, int hh) const { return o.data() + i * o_si() + hh * kLatentDim; }
  float lse_at(int i, int hh) const { return lse[i * lse_si() + hh]; }
};

ItemRun run_item(const KernelInfo& k, const Case& c, int seq, int hb, int he, int kb, int ke,
                 int chunk, UpForm up, cpu::Scratch& scratch) {
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
  cpu::KernelArgs a{.p = &c.p,
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
  k.run(a, scratch);
  return r;
}

// Every sentinel still in place.
::testing::AssertionResult sentinels_intact(const ItemRun& r) {
  for (size_t x = 0; x < r.o.size(); ++x) {
    const int64_t i = int64_t(x) / r.o_si(), hh = (int64_t(x) % r.o_si()) / kLatentDim;
    const bool owned = i < r.ql && hh < r.nh;
    if (!owned && r.o[x] != kSentinel) return ::testing::AssertionFailure() << "o written at " << x;
  }
  for (size_t x = 0; x < r.lse.size(); ++x) {
    const int64_t i = int64_t(x) / r.lse_si(), hh = int64_t(x) % r.lse_si();
    const bool owned = i < r.ql && hh < r.nh;
    if (!owned && r.lse[x] != kSentinel)
      return ::testing::AssertionFailure() << "lse written at " << x;
  }
  return ::testing::AssertionSuccess();
}

// Float64 attention of rows (i, h in [hb, he)) of sequence `seq` over positions [kb, ke) only.
void ref_range(const Case& c, int seq, int hb, int he, int kb, int ke, std::vector<double>* o,
               std::vector<double>* lse) {
  ref::decode_range(c.p, c.q.data(), c.cache, seq, hb, he, kb, ke, o, lse);
}

// The item's outputs as contiguous [ql * nh] rows.
void gather(const ItemRun& r, std::vector<float>* o, std::vector<float>* lse) {
  o->resize(size_t(r.ql) * r.nh * kLatentDim);
  lse->resize(size_t(r.ql) * r.nh);
  for (int i = 0; i < r.ql; ++i)
    for (int hh = 0; hh < r.nh; ++hh) {
      std::copy_n(r.o_row(i, hh), kLatentDim, o->data() + (size_t(i) * r.nh + hh) * kLatentDim);
      (*lse)[size_t(i) * r.nh + hh] = r.lse_at(i, hh);
    }
}

::testing::AssertionResult matches(const ItemRun& r, const std::vector<double>& ref_o,
                                   const std::vector<double>& ref_lse, KvDType kv) {
  std::vector<float> o, lse;
  gather(r, &o, &lse);
  const ref::Comparison cmp =
      ref::compare(o.data(), lse.data(), ref_o.data(), ref_lse.data(), int64_t(r.ql) * r.nh,
                   kLatentDim, ref::tolerance_for(kv, false));
  for (float x : o)
    if (std::isnan(x)) return ::testing::AssertionFailure() << "NaN in o; " << cmp.summary();
  for (float x : lse)
    if (std::isnan(x)) return ::testing::AssertionFailure() << "NaN in lse; " << cmp.summary();
  if (!cmp.pass) return ::testing::AssertionFailure() << cmp.summary();
  return sentinels_intact(r);
}

// Writes NaN into every slot of `seq` outside [kb, ke) (restored by restore_sequence), so that a
// kernel reading past its range shows.
void poison_outside(Case& c, int seq, int kb, int ke) {
  const std::vector<float> nan_token(kQkDim, std::nanf(""));
  for (int t = 0; t < c.seq_lens[seq]; ++t)
    if (t < kb || t >= ke)
      c.cache.write(cpu::slot_of(c.p, c.cache.block_size(), seq, t), nan_token.data());
}
void restore_sequence(Case& c, int seq) {
  for (int t = 0; t < c.seq_lens[seq]; ++t) {
    const int64_t slot = cpu::slot_of(c.p, c.cache.block_size(), seq, t);
    c.cache.write(slot, c.kv.data() + slot * kQkDim);
  }
}

struct Sweep {
  int heads, q_len, block_size;
  std::vector<int> seq_lens, q_lens;
  bool causal;
  float score_std;
  bool sink;
  int chunk;
};

class KernelAvx512Fp : public ::testing::TestWithParam<const KernelInfo*> {
 protected:
  void SetUp() override {
    if (!GetParam()->supported())
      GTEST_SKIP() << GetParam()->name << ": CPU lacks the instructions";
  }
  KvDType kv() const { return GetParam()->kv; }
  cpu::Scratch scratch_;
};

std::string describe(const Sweep& s, UpForm up) {
  std::string d = "heads " + std::to_string(s.heads) + " q_len " + std::to_string(s.q_len) +
                  " block " + std::to_string(s.block_size) + " chunk " + std::to_string(s.chunk) +
                  (s.causal ? " causal" : " non-causal") + " std " + std::to_string(s.score_std) +
                  (s.sink ? " sink" : "") + (up == UpForm::resident ? " resident" : " spill");
  return d;
}

// Whole sequences, all heads, compared with ref::decode.
TEST_P(KernelAvx512Fp, FullRangeMatchesReference) {
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
      {64, 2, 64, {520}, {1}, true, 3.f, false, 4},
      // Causal rows that see nothing of the last step (m, l carried across a fully masked step).
      {3, 4, 16, {129, 66}, {}, true, 2.f, false, 1},
  };
  for (const Sweep& sw : sweeps)
    for (UpForm up : {UpForm::resident, UpForm::spill}) {
      SCOPED_TRACE(describe(sw, up));
      CaseSpec spec{.batch = int(sw.seq_lens.size()),
                    .q_len = sw.q_len,
                    .heads = sw.heads,
                    .block_size = sw.block_size,
                    .seq_lens = sw.seq_lens,
                    .q_lens = sw.q_lens,
                    .kv = kv(),
                    .causal = sw.causal,
                    .score_std = sw.score_std,
                    .sink = sw.sink};
      const Case c = test::make_case(spec, seed + sw.heads * 7 + sw.block_size);
      const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
      std::vector<double> ref_o(rows * kLatentDim), ref_lse(rows);
      ref::decode(c.p, c.q.data(), c.cache, ref_o.data(), ref_lse.data());
      for (int b = 0; b < c.p.batch; ++b) {
        const ItemRun r =
            run_item(*GetParam(), c, b, 0, sw.heads, 0, c.seq_lens[b], sw.chunk, up, scratch_);
        const int ql = r.ql;
        const auto row0 = size_t(b) * c.p.q_len * sw.heads;  // padding rows i >= ql not compared
        std::vector<double> o(ref_o.begin() + row0 * kLatentDim,
                              ref_o.begin() + (row0 + size_t(ql) * sw.heads) * kLatentDim);
        std::vector<double> lse(ref_lse.begin() + row0, ref_lse.begin() + row0 + ql * sw.heads);
        EXPECT_TRUE(matches(r, o, lse, kv())) << "sequence " << b;
      }
    }
}

// Items that cut the KV range anywhere and take a subset of heads: each piece matches a float64
// of its sub-range (with NaN in every slot outside it), and the pieces merged by ref::combine
// match the unsplit reference.
TEST_P(KernelAvx512Fp, SplitRangesMatchSubRangeAndCombine) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  std::mt19937_64 rng(seed);
  struct Split {
    int heads, q_len, block_size, seq_len;
    bool causal;
    int chunk;
  };
  const std::vector<Split> splits = {
      {16, 2, 64, 700, true, 4},  {128, 2, 128, 300, true, 2}, {3, 4, 1, 170, true, 1},
      {20, 3, 16, 450, false, 8}, {9, 4, 64, 200, true, 4},    {16, 1, 16, 1000, true, 4},
  };
  for (const Split& sp : splits) {
    CaseSpec spec{.batch = 1,
                  .q_len = sp.q_len,
                  .heads = sp.heads,
                  .block_size = sp.block_size,
                  .seq_lens = {sp.seq_len},
                  .q_lens = {},
                  .kv = kv(),
                  .causal = sp.causal};
    Case c = test::make_case(spec, seed + sp.seq_len);
    const int rows = sp.q_len * sp.heads;
    std::vector<double> full_o(size_t(rows) * kLatentDim), full_lse(rows);
    ref::decode(c.p, c.q.data(), c.cache, full_o.data(), full_lse.data());
    // Cut points: random, plus ones that isolate the last q_len positions (so that causal rows
    // see nothing in a piece: o = 0, lse = -inf) and a one-token piece.
    std::vector<int> cuts = {0, sp.seq_len};
    std::uniform_int_distribution<int> pos(1, sp.seq_len - 1);
    for (int j = 0; j < 3; ++j) cuts.push_back(pos(rng));
    cuts.push_back(sp.seq_len - sp.q_len + 1);
    cuts.push_back(sp.seq_len - 1);
    std::sort(cuts.begin(), cuts.end());
    cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
    // Heads in two groups.
    const int hsplit = sp.heads > 1 ? 1 + int(rng() % (sp.heads - 1)) : 1;
    for (auto [hb, he] : {std::pair{0, hsplit}, std::pair{hsplit, sp.heads}}) {
      if (hb >= he) continue;
      const int nh = he - hb;
      std::vector<std::vector<double>> part_o, part_lse;
      for (size_t j = 0; j + 1 < cuts.size(); ++j) {
        const int kb = cuts[j], ke = cuts[j + 1];
        const UpForm up = j % 2 ? UpForm::spill : UpForm::resident;
        SCOPED_TRACE("heads [" + std::to_string(hb) + ", " + std::to_string(he) + ") kv [" +
                     std::to_string(kb) + ", " + std::to_string(ke) + ") of " +
                     std::to_string(sp.seq_len) + " block " + std::to_string(sp.block_size) +
                     " chunk " + std::to_string(sp.chunk));
        std::vector<double> ro, rl;
        ref_range(c, 0, hb, he, kb, ke, &ro, &rl);
        poison_outside(c, 0, kb, ke);
        const ItemRun r = run_item(*GetParam(), c, 0, hb, he, kb, ke, sp.chunk, up, scratch_);
        restore_sequence(c, 0);
        EXPECT_TRUE(matches(r, ro, rl, kv()));
        std::vector<float> o, lse;
        gather(r, &o, &lse);
        part_o.emplace_back(o.begin(), o.end());
        part_lse.emplace_back(lse.begin(), lse.end());
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
                       kLatentDim, ref::tolerance_for(kv(), false));
      EXPECT_TRUE(cmp.pass) << "combined pieces: " << cmp.summary();
    }
  }
}

// Ranges shorter than a step, single tokens, and ranges ending mid-tile, for every chunk: the
// zero-filled, masked tails must leave no trace.
TEST_P(KernelAvx512Fp, ShortRangesAndTails) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  CaseSpec spec{.batch = 1,
                .q_len = 2,
                .heads = 16,
                .block_size = 16,
                .seq_lens = {150},
                .q_lens = {},
                .kv = kv(),
                .causal = true,
                .score_std = 3.f};
  Case c = test::make_case(spec, seed + 5);
  const std::vector<std::pair<int, int>> ranges = {{0, 1},   {149, 150}, {148, 150}, {5, 22},
                                                   {17, 81}, {0, 129},   {63, 150},  {1, 2}};
  for (int chunk : {1, 2, 4, 8})
    for (auto [kb, ke] : ranges) {
      SCOPED_TRACE("kv [" + std::to_string(kb) + ", " + std::to_string(ke) + ") chunk " +
                   std::to_string(chunk));
      std::vector<double> ro, rl;
      ref_range(c, 0, 0, 16, kb, ke, &ro, &rl);
      poison_outside(c, 0, kb, ke);
      for (UpForm up : {UpForm::resident, UpForm::spill}) {
        const ItemRun r = run_item(*GetParam(), c, 0, 0, 16, kb, ke, chunk, up, scratch_);
        EXPECT_TRUE(matches(r, ro, rl, kv()));
      }
      restore_sequence(c, 0);
    }
}

// Large scores: one key dominates (an attention sink) and the spread is wide; the fp32 softmax
// must neither overflow nor lose the small terms that decide lse.
TEST_P(KernelAvx512Fp, SinkAndWideScores) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (MLA_TEST_SEED reproduces)");
  for (float std_ : {1.f, 3.f, 8.f}) {
    CaseSpec spec{.batch = 2,
                  .q_len = 2,
                  .heads = 32,
                  .block_size = 64,
                  .seq_lens = {333, 70},
                  .q_lens = {2, 1},
                  .kv = kv(),
                  .causal = true,
                  .score_std = std_,
                  .sink = true};
    const Case c = test::make_case(spec, seed + 11);
    for (int b = 0; b < 2; ++b) {
      SCOPED_TRACE("score std " + std::to_string(std_) + " sequence " + std::to_string(b));
      std::vector<double> ro, rl;
      ref_range(c, b, 0, 32, 0, c.seq_lens[b], &ro, &rl);
      const ItemRun r =
          run_item(*GetParam(), c, b, 0, 32, 0, c.seq_lens[b], 4, UpForm::resident, scratch_);
      EXPECT_TRUE(matches(r, ro, rl, kv()));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, KernelAvx512Fp,
                         ::testing::Values(&cpu::decode_bf16_avx512bf16, &cpu::decode_f16_avx512f,
                                           &cpu::decode_fp8_avx512bf16),
                         [](const auto& info) { return std::string(info.param->name); });
INSTANTIATE_TEST_SUITE_P(Avx2Kernels, KernelAvx512Fp,
                         ::testing::Values(&cpu::decode_bf16_avx2, &cpu::decode_f16_avx2),
                         [](const auto& info) { return std::string(info.param->name); });

}  // namespace
}  // namespace mla
