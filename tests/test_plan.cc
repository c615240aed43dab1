// Property tests of the work planner (include/mla/plan.h): thousands of random batches, every
// invariant the kernels and the combine rely on, and the cases whose answer the design names.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "mla/plan.h"
#include "mla/status.h"

namespace mla {
namespace {

struct Batch {
  std::vector<int32_t> seq_lens, q_lens;
  PlanInput in;
};

// Checks every invariant of `plan` for `in`; returns through gtest assertions.
void check_plan(const PlanInput& in, const Plan& plan) {
  const int W = in.num_workers;
  ASSERT_EQ(plan.num_workers, W);
  ASSERT_EQ(plan.worker_offsets.size(), static_cast<size_t>(W + 1));
  ASSERT_EQ(plan.worker_offsets[0], 0);
  ASSERT_EQ(plan.worker_offsets[W], static_cast<int32_t>(plan.items.size()));
  for (int w = 0; w < W; ++w) ASSERT_LE(plan.worker_offsets[w], plan.worker_offsets[w + 1]);
  ASSERT_EQ(plan.item_merge.size(), plan.items.size());

  // Items are well formed, in (seq, heads, kv) order along the workers, split on tile boundaries,
  // and head groups are multiples of min_heads_per_group except the one that ends at H.
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const WorkItem& it = plan.items[i];
    SCOPED_TRACE(::testing::Message() << "item " << i);
    ASSERT_GE(it.seq, 0);
    ASSERT_LT(it.seq, in.batch);
    const int32_t len = in.seq_lens[it.seq];
    ASSERT_GT(len, 0) << "an item for a padding sequence";
    ASSERT_GE(it.head_begin, 0);
    ASSERT_LT(it.head_begin, it.head_end);
    ASSERT_LE(it.head_end, in.num_heads);
    ASSERT_EQ(it.head_begin % in.min_heads_per_group, 0);
    if (it.head_end != in.num_heads) {
      ASSERT_EQ(it.head_end % in.min_heads_per_group, 0);
    }
    ASSERT_GE(it.kv_begin, 0);
    ASSERT_LT(it.kv_begin, it.kv_end);
    ASSERT_LE(it.kv_end, len);
    ASSERT_EQ(it.kv_begin % in.kv_tile, 0);
    if (it.kv_end != len) {
      ASSERT_EQ(it.kv_end % in.kv_tile, 0);
    }
    if (i > 0) {
      const WorkItem& p = plan.items[i - 1];
      ASSERT_LT(std::tie(p.seq, p.head_begin, p.kv_begin),
                std::tie(it.seq, it.head_begin, it.kv_begin));
    }
  }

  // Every (seq, head, position < seq_len) is covered exactly once.
  std::vector<std::vector<const WorkItem*>> by_seq(in.batch);
  for (const WorkItem& it : plan.items) by_seq[it.seq].push_back(&it);
  for (int b = 0; b < in.batch; ++b) {
    for (int h = 0; h < in.num_heads; ++h) {
      std::vector<std::pair<int, int>> ranges;
      for (const WorkItem* it : by_seq[b])
        if (it->head_begin <= h && h < it->head_end) ranges.emplace_back(it->kv_begin, it->kv_end);
      std::sort(ranges.begin(), ranges.end());
      int at = 0;
      for (const auto& [kb, ke] : ranges) {
        ASSERT_EQ(kb, at) << "seq " << b << " head " << h << ": gap or overlap";
        at = ke;
      }
      ASSERT_EQ(at, in.seq_lens[b]) << "seq " << b << " head " << h << " not covered to the end";
    }
  }

  // Partials: unique and dense; -1 exactly for whole-range items; merge groups tile the range.
  std::vector<int> item_of_partial(plan.num_partials, -1);
  for (size_t i = 0; i < plan.items.size(); ++i) {
    const WorkItem& it = plan.items[i];
    if (it.partial < 0) {
      ASSERT_EQ(it.partial, -1);
      ASSERT_EQ(plan.item_merge[i], -1);
      ASSERT_EQ(it.kv_begin, 0);
      ASSERT_EQ(it.kv_end, in.seq_lens[it.seq]);
    } else {
      ASSERT_LT(it.partial, plan.num_partials);
      ASSERT_EQ(item_of_partial[it.partial], -1) << "partial " << it.partial << " used twice";
      item_of_partial[it.partial] = static_cast<int>(i);
      ASSERT_GE(plan.item_merge[i], 0);
      ASSERT_LT(plan.item_merge[i], static_cast<int32_t>(plan.merges.size()));
    }
  }
  for (int p = 0; p < plan.num_partials; ++p) ASSERT_NE(item_of_partial[p], -1) << "partial " << p;
  int32_t next_partial = 0;
  for (size_t m = 0; m < plan.merges.size(); ++m) {
    const MergeGroup& g = plan.merges[m];
    ASSERT_EQ(g.partial_begin, next_partial);
    ASSERT_GE(g.num_partials, 2);
    next_partial += g.num_partials;
    int at = 0;
    for (int k = 0; k < g.num_partials; ++k) {
      const int i = item_of_partial[g.partial_begin + k];
      const WorkItem& it = plan.items[i];
      ASSERT_EQ(plan.item_merge[i], static_cast<int32_t>(m));
      ASSERT_EQ(it.seq, g.seq);
      ASSERT_EQ(it.head_begin, g.head_begin);
      ASSERT_EQ(it.head_end, g.head_end);
      ASSERT_EQ(it.kv_begin, at);
      at = it.kv_end;
    }
    ASSERT_EQ(at, in.seq_lens[g.seq]);
  }
  ASSERT_EQ(next_partial, plan.num_partials);

  // Balance: no worker above ceil(T / W) + one tile + one overhead.
  std::set<std::tuple<int, int, int>> units;
  for (const WorkItem& it : plan.items) units.emplace(it.seq, it.head_begin, it.head_end);
  int64_t total = 0;
  for (const auto& [s, hb, he] : units) total += piece_cost(in, s, he - hb, 0, in.seq_lens[s]);
  const int64_t tile = tile_cost(in);
  const int64_t bound = (total + W - 1) / W + tile + in.overhead_tiles * tile;
  for (int w = 0; w < W; ++w) {
    int64_t cost = 0;
    for (int i = plan.worker_offsets[w]; i < plan.worker_offsets[w + 1]; ++i) {
      const WorkItem& it = plan.items[i];
      cost += piece_cost(in, it.seq, it.head_end - it.head_begin, it.kv_begin, it.kv_end);
    }
    ASSERT_LE(cost, bound) << "worker " << w << " of " << W << ", total " << total;
  }
}

Batch random_batch(std::mt19937& rng) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Batch b;
  const int batch = uni(1, 64);
  const int q_len = uni(1, 4);
  const bool uneven = uni(0, 1);
  const int tiles[] = {64, 64, 64, 128, 16, 1};
  for (int i = 0; i < batch; ++i) {
    const int kind = uni(0, 9);
    // Mix padding entries, sequences shorter than a tile and long ones.
    const int len = kind == 0 ? 0 : kind == 1 ? uni(1, 70) : uni(1, 10000);
    b.seq_lens.push_back(len);
    b.q_lens.push_back(uneven ? uni(1, q_len) : q_len);
  }
  b.in = PlanInput{.batch = batch,
                   .seq_lens = b.seq_lens.data(),
                   .q_lens = uneven ? b.q_lens.data() : nullptr,
                   .q_len = q_len,
                   .num_heads = uni(0, 3) == 0 ? uni(1, 16) : uni(1, 128),
                   .num_workers = uni(1, 8),
                   .kv_tile = tiles[uni(0, 5)],
                   .overhead_tiles = uni(0, 4),
                   .min_heads_per_group = uni(0, 3) == 0 ? uni(1, 16) : 8};
  return b;
}

TEST(Plan, RandomInvariants) {
  for (int iter = 0; iter < 3000; ++iter) {
    const uint32_t seed = 20240 + iter;
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    Batch b = random_batch(rng);
    SCOPED_TRACE(::testing::Message() << "batch " << b.in.batch << " H " << b.in.num_heads << " W "
                                      << b.in.num_workers << " q_len " << b.in.q_len << " tile "
                                      << b.in.kv_tile << " overhead " << b.in.overhead_tiles);
    const Plan plan = make_plan(b.in);
    check_plan(b.in, plan);
    if (::testing::Test::HasFatalFailure()) return;
  }
}

// Small batches with few tokens stress the corner cases: more workers than tiles, tile-size 1.
TEST(Plan, RandomSmall) {
  for (int iter = 0; iter < 3000; ++iter) {
    const uint32_t seed = 90000 + iter;
    SCOPED_TRACE(::testing::Message() << "seed " << seed);
    std::mt19937 rng(seed);
    auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
    std::vector<int32_t> lens(uni(1, 4)), q_lens(lens.size());
    const int q_len = uni(1, 4);
    for (size_t i = 0; i < lens.size(); ++i) {
      lens[i] = uni(0, 20);
      q_lens[i] = uni(1, q_len);
    }
    const PlanInput in{.batch = static_cast<int>(lens.size()),
                       .seq_lens = lens.data(),
                       .q_lens = q_lens.data(),
                       .q_len = q_len,
                       .num_heads = uni(1, 40),
                       .num_workers = uni(1, 8),
                       .kv_tile = uni(1, 8),
                       .overhead_tiles = uni(0, 3),
                       .min_heads_per_group = uni(1, 8),
                       .mem_bound_rows = uni(0, 32)};
    check_plan(in, make_plan(in));
    if (::testing::Test::HasFatalFailure()) return;
  }
}

PlanInput one_seq(const int32_t* len, int heads, int q_len, int workers) {
  return PlanInput{
      .batch = 1, .seq_lens = len, .q_len = q_len, .num_heads = heads, .num_workers = workers};
}

TEST(Plan, ManyHeadsSplitHeadsNotKv) {
  // 128 rows: each of two groups of 64 still has enough rows to be compute-bound, so a head split
  // costs no more than a KV split and needs no reduction.
  for (int32_t len : {64, 1000, 4096, 10000}) {
    const PlanInput in = one_seq(&len, 128, 1, 2);
    const Plan plan = make_plan(in);
    check_plan(in, plan);
    EXPECT_EQ(plan.num_partials, 0) << len;
    ASSERT_EQ(plan.items.size(), 2u);
    EXPECT_EQ(plan.items[0].head_end - plan.items[0].head_begin, 64);
    EXPECT_EQ(plan.items[1].head_begin, 64);
    EXPECT_EQ(plan.worker_offsets, (std::vector<int32_t>{0, 1, 2}));
  }
}

TEST(Plan, FewHeadsSplitKv) {
  // 16 heads x 1 row: two groups of 8 rows would each still read every key (the model charges a
  // group at least mem_bound_rows = 16 rows), so splitting the KV range in two is cheaper.
  int32_t len = 8192;
  const PlanInput in = one_seq(&len, 16, 1, 2);
  const Plan plan = make_plan(in);
  check_plan(in, plan);
  ASSERT_EQ(plan.items.size(), 2u);
  EXPECT_EQ(plan.num_partials, 2);
  ASSERT_EQ(plan.merges.size(), 1u);
  EXPECT_EQ(plan.merges[0].num_partials, 2);
  EXPECT_EQ(plan.items[0].head_end - plan.items[0].head_begin, 16);
  EXPECT_EQ(plan.items[0].kv_end, 4096);
  // With 2 MTP rows per head the groups have 16 rows each: a head split is as cheap, and wins.
  const PlanInput mtp = one_seq(&len, 16, 2, 2);
  const Plan p2 = make_plan(mtp);
  check_plan(mtp, p2);
  EXPECT_EQ(p2.num_partials, 0);
  EXPECT_EQ(p2.items.size(), 2u);
}

TEST(Plan, OneHeadOnlySplitsKv) {
  int32_t len = 5000;
  const PlanInput in = one_seq(&len, 1, 1, 4);
  const Plan plan = make_plan(in);
  check_plan(in, plan);
  EXPECT_EQ(plan.items.size(), 4u);
  EXPECT_EQ(plan.num_partials, 4);
}

TEST(Plan, BatchEqualsWorkers) {
  for (int heads : {1, 16, 128}) {
    for (int w : {2, 4, 8}) {
      std::vector<int32_t> lens(w, 3000);
      const PlanInput in{
          .batch = w, .seq_lens = lens.data(), .q_len = 2, .num_heads = heads, .num_workers = w};
      const Plan plan = make_plan(in);
      check_plan(in, plan);
      EXPECT_EQ(plan.num_partials, 0);
      ASSERT_EQ(plan.items.size(), static_cast<size_t>(w));
      for (int i = 0; i < w; ++i) {
        EXPECT_EQ(plan.items[i].seq, i);
        EXPECT_EQ(plan.worker_offsets[i], i);
      }
    }
  }
}

TEST(Plan, PaddingAndEmpty) {
  std::vector<int32_t> lens = {0, 0, 0};
  PlanInput in{.batch = 3, .seq_lens = lens.data(), .q_len = 1, .num_heads = 16, .num_workers = 4};
  Plan plan = make_plan(in);
  check_plan(in, plan);
  EXPECT_TRUE(plan.items.empty());
  in.batch = 0;
  plan = make_plan(in);
  check_plan(in, plan);
  EXPECT_TRUE(plan.items.empty());
  lens = {0, 7, 0};  // a sequence shorter than a tile, more workers than tiles
  in.batch = 3;
  plan = make_plan(in);
  check_plan(in, plan);
  ASSERT_EQ(plan.items.size(), 1u);
  EXPECT_EQ(plan.items[0].seq, 1);
  EXPECT_EQ(plan.items[0].kv_end, 7);
}

TEST(Plan, Deterministic) {
  std::mt19937 rng(7);
  Batch b = random_batch(rng);
  const Plan a = make_plan(b.in), c = make_plan(b.in);
  ASSERT_EQ(a.items.size(), c.items.size());
  for (size_t i = 0; i < a.items.size(); ++i) {
    EXPECT_EQ(a.items[i].kv_begin, c.items[i].kv_begin);
    EXPECT_EQ(a.items[i].partial, c.items[i].partial);
  }
}

TEST(Plan, RefusesInvalidInput) {
  std::vector<int32_t> lens = {10, -1};
  std::vector<int32_t> q_lens = {1, 1};
  const PlanInput good{
      .batch = 2, .seq_lens = lens.data(), .q_len = 2, .num_heads = 4, .num_workers = 2};
  auto expect_error = [](PlanInput in, const char* what) {
    try {
      make_plan(in);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_error(good, "seq_lens[1] = -1");
  lens[1] = 5;
  PlanInput in = good;
  in.num_workers = 0;
  expect_error(in, "num_workers = 0");
  in = good;
  in.num_heads = 0;
  expect_error(in, "num_heads = 0");
  in = good;
  in.kv_tile = 0;
  expect_error(in, "kv_tile = 0");
  in = good;
  in.batch = -1;
  expect_error(in, "batch = -1");
  in = good;
  q_lens[1] = 3;
  in.q_lens = q_lens.data();
  expect_error(in, "q_lens[1] = 3");
  q_lens[1] = 0;
  expect_error(in, "q_lens[1] = 0");
  lens[1] = 0;  // padding entries may carry any q_len
  EXPECT_NO_THROW(make_plan(in));
}

}  // namespace
}  // namespace mla
