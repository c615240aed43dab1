// The online-softmax state and the split-KV combine (src/cpu/attention/softmax_state.h, src/cpu/combine.h)
// against float64 evaluations: the combine formula on random parts, -inf parts, all -inf, a softmax
// split at random points and merged back, fully masked chunks, and both reduction strategies of a
// real plan under pools of 1..4 threads, which must give bit-identical results.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "cpu/combine.h"
#include "cpu/attention/softmax_state.h"
#include "cpu/thread_pool.h"
#include "mla/plan.h"

namespace mla::cpu {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ||a - ref|| / ||ref|| (0 when both are 0).
double rel_err(const float* a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t d = 0; d < ref.size(); ++d) {
    num += (a[d] - ref[d]) * (a[d] - ref[d]);
    den += ref[d] * ref[d];
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// The combine formula in float64 over parts (lse_i, o_i); all -inf: o = 0, lse = -inf.
double combine_ref(const std::vector<float>& lse, const std::vector<std::vector<float>>& o, int dv,
                   std::vector<double>& out) {
  double L = -kInf;
  for (float x : lse) L = std::max(L, double{x});
  out.assign(dv, 0.0);
  if (L == -kInf) return -kInf;
  double sum = 0;
  for (size_t i = 0; i < lse.size(); ++i) {
    if (lse[i] == -INFINITY) continue;
    const double w = std::exp(lse[i] - L);
    sum += w;
    for (int d = 0; d < dv; ++d) out[d] += w * o[i][d];
  }
  for (int d = 0; d < dv; ++d) out[d] /= sum;
  return L + std::log(sum);
}

TEST(Combine, MatchesFloat64Formula) {
  for (uint32_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> u(-1.f, 1.f);
    const int n = std::uniform_int_distribution<int>(1, 9)(rng);
    const int dv = seed % 3 == 0 ? 512 : 64;
    std::vector<float> lse(n), flat(static_cast<size_t>(n) * dv);
    std::vector<std::vector<float>> parts(n, std::vector<float>(dv));
    for (int i = 0; i < n; ++i) {
      // Some parts saw no key (-inf): their o is garbage (NaN) and must not be read.
      const bool empty = std::uniform_int_distribution<int>(0, 4)(rng) == 0;
      lse[i] = empty ? -INFINITY : 20.f * u(rng);
      for (int d = 0; d < dv; ++d) parts[i][d] = empty ? kNaN : u(rng);
      std::memcpy(&flat[static_cast<size_t>(i) * dv], parts[i].data(), dv * sizeof(float));
    }
    std::vector<double> ref;
    const double lse_ref = combine_ref(lse, parts, dv, ref);
    std::vector<float> out(dv, kNaN);
    const float got = combine(n, lse.data(), 1, flat.data(), dv, dv, out.data());
    for (int d = 0; d < dv; ++d) ASSERT_FALSE(std::isnan(out[d])) << d;
    if (lse_ref == -kInf) {
      EXPECT_EQ(got, -INFINITY);
      for (int d = 0; d < dv; ++d) EXPECT_EQ(out[d], 0.f);
    } else {
      EXPECT_NEAR(got, lse_ref, 1e-5 * std::max(1.0, std::abs(lse_ref)));
      EXPECT_LT(rel_err(out.data(), ref), 1e-6);
    }
  }
}

TEST(Combine, AllMinusInfAndNaN) {
  const float lse[3] = {-INFINITY, -INFINITY, -INFINITY};
  float o[3 * 4];
  for (float& x : o) x = kNaN;
  float out[4] = {1, 2, 3, 4};
  EXPECT_EQ(combine(3, lse, 1, o, 4, 4, out), -INFINITY);
  for (float x : out) EXPECT_EQ(x, 0.f);
  EXPECT_EQ(combine(0, lse, 1, o, 4, 4, out), -INFINITY);
  // A NaN part (a NaN in this sequence's cache) poisons this row, never silently disappears.
  const float bad[2] = {1.f, kNaN};
  float vals[8] = {1, 1, 1, 1, 2, 2, 2, 2};
  EXPECT_TRUE(std::isnan(combine(2, bad, 1, vals, 4, 4, out)));
  EXPECT_TRUE(std::isnan(out[0]));
}

// Float64 softmax of scores over values: o = sum p v, lse = log sum exp s (masked keys: s = -inf).
double softmax_ref(const std::vector<float>& s, const std::vector<float>& v, int dv, int begin,
                   int end, std::vector<double>& o) {
  double m = -kInf;
  for (int t = begin; t < end; ++t) m = std::max(m, double{s[t]});
  o.assign(dv, 0.0);
  if (m == -kInf) return -kInf;
  double l = 0;
  for (int t = begin; t < end; ++t) {
    if (s[t] == -INFINITY) continue;
    const double p = std::exp(s[t] - m);
    l += p;
    for (int d = 0; d < dv; ++d) o[d] += p * v[static_cast<size_t>(t) * dv + d];
  }
  for (int d = 0; d < dv; ++d) o[d] /= l;
  return m + std::log(l);
}

// The kernel's way: chunks through SoftmaxState (SM: rescale_to, exp against shift(); UP: scale and
// accumulate), then finalize. Returns lse.
float online_softmax(const std::vector<float>& s, const std::vector<float>& v, int dv, int begin,
                     int end, int chunk, float* o) {
  SoftmaxState st;
  std::fill(o, o + dv, 0.f);
  for (int c0 = begin; c0 < end; c0 += chunk) {
    const int c1 = std::min(end, c0 + chunk);
    float cmax = -INFINITY;
    for (int t = c0; t < c1; ++t) cmax = std::max(cmax, s[t]);
    const float factor = st.rescale_to(cmax);
    for (int d = 0; d < dv; ++d) o[d] *= factor;
    float sum = 0;
    for (int t = c0; t < c1; ++t) {
      const float p = std::exp(s[t] - st.shift());
      sum += p;
      for (int d = 0; d < dv; ++d) o[d] += p * v[static_cast<size_t>(t) * dv + d];
    }
    st.add_sum(sum);
  }
  return finalize(st, o, dv);
}

struct Scores {
  std::vector<float> s, v;
};

Scores random_scores(std::mt19937& rng, int keys, int dv) {
  std::normal_distribution<float> n(0.f, 3.f);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  Scores r{std::vector<float>(keys), std::vector<float>(static_cast<size_t>(keys) * dv)};
  for (float& x : r.s) x = n(rng);
  for (float& x : r.v) x = u(rng);
  // Masked runs of keys (fully masked chunks and pieces among them).
  const int runs = std::uniform_int_distribution<int>(0, 3)(rng);
  for (int k = 0; k < runs; ++k) {
    const int a = std::uniform_int_distribution<int>(0, keys - 1)(rng);
    const int len = std::uniform_int_distribution<int>(1, 200)(rng);
    for (int t = a; t < std::min(keys, a + len); ++t) r.s[t] = -INFINITY;
  }
  return r;
}

TEST(Combine, SplitSoftmaxMergesToUnsplit) {
  for (uint32_t seed = 1; seed <= 100; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    const int dv = 64, keys = std::uniform_int_distribution<int>(1, 1500)(rng);
    const Scores sc = random_scores(rng, keys, dv);
    std::vector<double> ref;
    const double lse_ref = softmax_ref(sc.s, sc.v, dv, 0, keys, ref);
    // Random cut points: pieces of 0..keys keys, some fully masked.
    const int pieces = std::uniform_int_distribution<int>(1, 8)(rng);
    std::vector<int> cuts = {0, keys};
    for (int k = 1; k < pieces; ++k)
      cuts.push_back(std::uniform_int_distribution<int>(0, keys)(rng));
    std::sort(cuts.begin(), cuts.end());
    const int n = static_cast<int>(cuts.size()) - 1;
    // (a) pieces exact (float64, rounded to float): the combine alone, to 1e-6.
    // (b) pieces through the float online state with random chunks: the whole fp32 path, to 1e-5.
    std::vector<float> lse_a(n), lse_b(n), o_a(static_cast<size_t>(n) * dv), o_b(o_a.size());
    for (int i = 0; i < n; ++i) {
      std::vector<double> oi;
      lse_a[i] = static_cast<float>(softmax_ref(sc.s, sc.v, dv, cuts[i], cuts[i + 1], oi));
      for (int d = 0; d < dv; ++d) o_a[static_cast<size_t>(i) * dv + d] = static_cast<float>(oi[d]);
      const int chunk = std::uniform_int_distribution<int>(1, 300)(rng);
      lse_b[i] = online_softmax(sc.s, sc.v, dv, cuts[i], cuts[i + 1], chunk,
                                &o_b[static_cast<size_t>(i) * dv]);
    }
    std::vector<float> out_a(dv), out_b(dv);
    const float got_a = combine(n, lse_a.data(), 1, o_a.data(), dv, dv, out_a.data());
    const float got_b = combine(n, lse_b.data(), 1, o_b.data(), dv, dv, out_b.data());
    if (lse_ref == -kInf) {
      EXPECT_EQ(got_a, -INFINITY);
      EXPECT_EQ(got_b, -INFINITY);
      for (int d = 0; d < dv; ++d) EXPECT_EQ(out_b[d], 0.f);
      continue;
    }
    EXPECT_LT(rel_err(out_a.data(), ref), 1e-6);
    EXPECT_NEAR(got_a, lse_ref, 1e-6 * std::max(1.0, std::abs(lse_ref)));
    EXPECT_LT(rel_err(out_b.data(), ref), 1e-5);
    EXPECT_NEAR(got_b, lse_ref, 1e-5 * std::max(1.0, std::abs(lse_ref)));
  }
}

TEST(SoftmaxState, MergeOfHalvesEqualsWhole) {
  for (uint32_t seed = 1; seed <= 100; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    const int dv = 32, keys = std::uniform_int_distribution<int>(2, 600)(rng);
    const Scores sc = random_scores(rng, keys, dv);
    const int cut = std::uniform_int_distribution<int>(0, keys)(rng);
    // Unnormalised states of the two halves, each against its own maximum.
    auto state_of = [&](int b, int e, std::vector<float>& o) {
      SoftmaxState st;
      o.assign(dv, 0.f);
      float m = -INFINITY;
      for (int t = b; t < e; ++t) m = std::max(m, sc.s[t]);
      st.rescale_to(m);
      for (int t = b; t < e; ++t) {
        const float p = std::exp(sc.s[t] - st.shift());
        st.add_sum(p);
        for (int d = 0; d < dv; ++d) o[d] += p * sc.v[static_cast<size_t>(t) * dv + d];
      }
      return st;
    };
    std::vector<float> oa, ob;
    SoftmaxState a = state_of(0, cut, oa);
    const SoftmaxState b = state_of(cut, keys, ob);
    if (a.m == -INFINITY)
      std::fill(oa.begin(), oa.end(), kNaN);  // an empty a's accumulator is not read
    merge(a, oa.data(), b, ob.data(), dv);
    const float lse = finalize(a, oa.data(), dv);
    std::vector<double> ref;
    const double lse_ref = softmax_ref(sc.s, sc.v, dv, 0, keys, ref);
    if (lse_ref == -kInf) {
      EXPECT_EQ(lse, -INFINITY);
      for (float x : oa) EXPECT_EQ(x, 0.f);
    } else {
      EXPECT_LT(rel_err(oa.data(), ref), 1e-5);
      EXPECT_NEAR(lse, lse_ref, 1e-5 * std::max(1.0, std::abs(lse_ref)));
    }
  }
}

TEST(SoftmaxState, FullyMaskedNeverNaN) {
  SoftmaxState st;
  float o[4] = {0, 0, 0, 0};
  // A fully masked first chunk: max -inf, exp(-inf - shift()) = 0, factor 0.
  EXPECT_EQ(st.rescale_to(-INFINITY), 0.f);
  EXPECT_EQ(st.shift(), 0.f);
  EXPECT_EQ(std::exp(-INFINITY - st.shift()), 0.f);
  // Finalize with no key: o = 0, lse = -inf.
  o[0] = 5;
  EXPECT_EQ(finalize(st, o, 4), -INFINITY);
  for (float x : o) EXPECT_EQ(x, 0.f);
  // A real chunk, then a fully masked one: the factor is 1 and nothing changes.
  st.rescale_to(2.f);
  st.add_sum(1.f);
  EXPECT_EQ(st.rescale_to(-INFINITY), 1.f);
  EXPECT_EQ(st.m, 2.f);
  // Merging an empty state changes nothing; merging into an empty one copies.
  SoftmaxState empty;
  float oe[4] = {kNaN, kNaN, kNaN, kNaN};
  o[0] = o[1] = o[2] = o[3] = 1.f;
  merge(st, o, empty, oe, 4);
  EXPECT_EQ(st.m, 2.f);
  EXPECT_EQ(st.l, 1.f);
  for (float x : o) EXPECT_EQ(x, 1.f);
  merge(empty, oe, st, o, 4);
  EXPECT_EQ(empty.m, 2.f);
  EXPECT_EQ(empty.l, 1.f);
  for (float x : oe) EXPECT_EQ(x, 1.f);
  EXPECT_FLOAT_EQ(finalize(empty, oe, 4), 2.f);
}

// A random plan with its partial slots filled as a kernel would, and both strategies run on it.
struct PlanCase {
  std::vector<int32_t> seq_lens, q_lens;
  PlanInput in;
  Plan plan;
  PartialLayout layout;
  int dv = 0;
  std::vector<float> part_o, part_lse;  // what the kernels would write into the slots
};

PlanCase make_case(uint32_t seed) {
  std::mt19937 rng(seed);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  PlanCase pc;
  const int batch = uni(1, 6), q_len = uni(1, 3);
  for (int b = 0; b < batch; ++b) {
    pc.seq_lens.push_back(uni(0, 5) == 0 ? 0 : uni(1, 3000));
    pc.q_lens.push_back(uni(1, q_len));
  }
  pc.in = PlanInput{.batch = batch,
                    .seq_lens = pc.seq_lens.data(),
                    .q_lens = pc.q_lens.data(),
                    .q_len = q_len,
                    .num_heads = uni(1, 24),
                    .num_workers = uni(2, 6)};
  pc.plan = make_plan(pc.in);
  pc.layout = layout_partials(pc.plan, pc.q_lens.data(), q_len);
  pc.dv = uni(0, 1) ? 512 : 48;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  pc.part_o.resize(pc.layout.total_rows * pc.dv);
  pc.part_lse.resize(pc.layout.total_rows);
  for (int64_t k = 0; k < pc.layout.total_rows; ++k) {
    const bool empty = uni(0, 6) == 0;  // e.g. a causal row that sees none of this piece's keys
    pc.part_lse[k] = empty ? -INFINITY : 10.f * u(rng);
    for (int d = 0; d < pc.dv; ++d) pc.part_o[k * pc.dv + d] = empty ? kNaN : u(rng);
  }
  return pc;
}

CombineParams params_for(const PlanCase& pc, const float* po, const float* pl, float* o,
                         float* lse) {
  return CombineParams{.q_len = pc.in.q_len,
                       .num_heads = pc.in.num_heads,
                       .dv = pc.dv,
                       .layout = &pc.layout,
                       .partial_o = po,
                       .partial_lse = pl,
                       .o = o,
                       .lse = lse};
}

TEST(Combine, LayoutIsCompactAndDisjoint) {
  const PlanCase pc = make_case(3);
  int64_t at = 0;
  for (size_t g = 0; g < pc.plan.merges.size(); ++g) {
    const MergeGroup& m = pc.plan.merges[g];
    EXPECT_EQ(pc.layout.offset[g], at);
    EXPECT_EQ(pc.layout.rows[g], pc.q_lens[m.seq] * (m.head_end - m.head_begin));
    EXPECT_EQ(pc.layout.row(static_cast<int>(g), 1, 0), at + pc.layout.rows[g]);
    at += int64_t{pc.layout.rows[g]} * m.num_partials;
  }
  EXPECT_EQ(pc.layout.total_rows, at);
}

TEST(Combine, GroupsOfAPlanAgainstFloat64) {
  int merged = 0;
  for (uint32_t seed = 1; seed <= 40; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    const PlanCase pc = make_case(seed);
    const int B = pc.in.batch, Q = pc.in.q_len, H = pc.in.num_heads, dv = pc.dv;
    // Poisoned outputs with a guard region after them: only merged rows may change.
    const size_t rows = static_cast<size_t>(B) * Q * H, guard = 64;
    std::vector<float> o(rows * dv + guard, kNaN), lse(rows + guard, kNaN);
    const CombineParams c =
        params_for(pc, pc.part_o.data(), pc.part_lse.data(), o.data(), lse.data());
    combine_all(pc.plan, c, nullptr, 1);
    std::vector<bool> written(rows, false);
    for (size_t gi = 0; gi < pc.plan.merges.size(); ++gi) {
      const MergeGroup& g = pc.plan.merges[gi];
      const int heads = g.head_end - g.head_begin;
      ++merged;
      for (int i = 0; i < pc.q_lens[g.seq]; ++i)
        for (int h = g.head_begin; h < g.head_end; ++h) {
          std::vector<float> l;
          std::vector<std::vector<float>> parts;
          for (int k = 0; k < g.num_partials; ++k) {
            const int64_t at =
                pc.layout.row(static_cast<int>(gi), k, i * heads + (h - g.head_begin));
            l.push_back(pc.part_lse[at]);
            parts.emplace_back(pc.part_o.begin() + at * dv, pc.part_o.begin() + (at + 1) * dv);
          }
          std::vector<double> ref;
          const double lse_ref = combine_ref(l, parts, dv, ref);
          const size_t row = (static_cast<size_t>(g.seq) * Q + i) * H + h;
          written[row] = true;
          if (lse_ref == -kInf) {
            ASSERT_EQ(lse[row], -INFINITY);
          } else {
            ASSERT_NEAR(lse[row], lse_ref, 1e-5 * std::max(1.0, std::abs(lse_ref)));
          }
          ASSERT_LT(rel_err(&o[row * dv], ref), 1e-6) << "row " << row;
        }
    }
    for (size_t row = 0; row < rows + guard; ++row) {
      if (row < rows && written[row]) continue;
      ASSERT_TRUE(std::isnan(lse[row])) << "lse row " << row << " written";
      if (row < rows) {
        ASSERT_TRUE(std::isnan(o[row * dv])) << "o row " << row << " written";
      }
    }
    for (size_t k = rows * dv; k < o.size(); ++k) ASSERT_TRUE(std::isnan(o[k])) << "guard " << k;
  }
  EXPECT_GT(merged, 20) << "the random plans should split enough sequences to test the combine";
}

TEST(Combine, StrategiesAndThreadCountsAgreeBitForBit) {
  ThreadPool pool(4);
  MergeCounters counters;
  for (uint32_t seed = 100; seed < 130; ++seed) {
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    const PlanCase pc = make_case(seed);
    const size_t rows = static_cast<size_t>(pc.in.batch) * pc.in.q_len * pc.in.num_heads;
    std::vector<float> o_ref(rows * pc.dv, kNaN), lse_ref(rows, kNaN);
    combine_all(pc.plan,
                params_for(pc, pc.part_o.data(), pc.part_lse.data(), o_ref.data(), lse_ref.data()),
                nullptr, 1);
    auto same = [&](const std::vector<float>& o, const std::vector<float>& lse, const char* what) {
      ASSERT_EQ(std::memcmp(o.data(), o_ref.data(), o.size() * sizeof(float)), 0) << what;
      ASSERT_EQ(std::memcmp(lse.data(), lse_ref.data(), lse.size() * sizeof(float)), 0) << what;
    };
    for (int threads = 1; threads <= 4; ++threads) {
      SCOPED_TRACE(::testing::Message() << threads << " threads");
      // Separate pass.
      std::vector<float> o(rows * pc.dv, kNaN), lse(rows, kNaN);
      combine_all(pc.plan,
                  params_for(pc, pc.part_o.data(), pc.part_lse.data(), o.data(), lse.data()), &pool,
                  threads);
      same(o, lse, "separate pass");
      // Last worker: the plan's workers spread over the threads; each "computes" its item by
      // copying the prepared partial into its place, then arrives. Twice, to reuse the counters.
      std::vector<float> po(pc.part_o.size(), kNaN), pl(pc.part_lse.size(), kNaN);
      const CombineParams c = params_for(pc, po.data(), pl.data(), o.data(), lse.data());
      counters.reset(pc.plan.merges.size());
      for (int rep = 0; rep < 2; ++rep) {
        std::fill(o.begin(), o.end(), kNaN);
        std::fill(lse.begin(), lse.end(), kNaN);
        std::fill(po.begin(), po.end(), kNaN);
        std::atomic<int> merges_done{0};
        pool.run(threads, [&](int t) {
          for (int w = t; w < pc.plan.num_workers; w += threads)
            for (int it = pc.plan.worker_offsets[w]; it < pc.plan.worker_offsets[w + 1]; ++it) {
              const WorkItem& item = pc.plan.items[it];
              const int g = pc.plan.item_merge[it];
              if (g < 0) continue;
              const int64_t at =
                  pc.layout.row(g, item.partial - pc.plan.merges[g].partial_begin, 0);
              const int64_t n = pc.layout.rows[g];
              std::copy(&pc.part_o[at * pc.dv], &pc.part_o[(at + n) * pc.dv], &po[at * pc.dv]);
              std::copy(&pc.part_lse[at], &pc.part_lse[at + n], &pl[at]);
              if (finish_partial(pc.plan, it, counters, c)) merges_done.fetch_add(1);
            }
        });
        EXPECT_EQ(merges_done.load(), static_cast<int>(pc.plan.merges.size()));
        same(o, lse, "last worker");
      }
    }
  }
}

}  // namespace
}  // namespace mla::cpu
