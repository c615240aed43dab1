// The reusable decode plan: a plan made once serves many decodes with no planning and gives the
// same bits as planning per call; a plan built for another shape or other lengths is refused with a
// message naming the difference, and nothing is written.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "mla/attention.h"
#include "mla/decode_plan.h"
#include "mla/status.h"
#include "harness/random_case.h"

namespace mla {
namespace {

using test::CaseSpec;

DecodePlanInput plan_input(const DecodeParams& p, int workers) {
  return {.batch = p.batch, .q_len = p.q_len, .num_heads = p.num_heads, .seq_lens = p.seq_lens,
          .q_lens = p.q_lens, .workers = workers};
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DecodePlan, ReusedAcrossCallsWithoutPlanning) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8, KvDType::fp8}) {
    SCOPED_TRACE(kv_dtype_name(kv));
    // 16 heads, one long sequence, 3 workers: the planner splits the KV range, so the partial
    // buffers and merge counters of the workspace are used.
    CaseSpec s{.batch = 3, .q_len = 2, .heads = 16, .block_size = 64, .seq_lens = {2000, 129, 0},
               .q_lens = {2, 1, 0}};
    s.kv = kv;
    const test::Case c = test::make_case(s, seed);
    const test::Case c2 = test::make_case(s, seed + 1);  // a second "layer": other q and cache
    const int64_t rows = int64_t(s.batch) * s.q_len * s.heads;
    for (Reduction red : {Reduction::last, Reduction::separate}) {
      const DecodeOptions opt{.threads = 3, .reduction = red};
      std::vector<float> o_once(rows * kLatentDim), l_once(rows), o2_once(rows * kLatentDim),
          l2_once(rows);
      decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, o_once.data(), l_once.data());
      decode(c2.p, c2.q_dtype, c2.q16.data(), c2.cache, opt, o2_once.data(), l2_once.data());

      const DecodePlan plan = make_decode_plan(plan_input(c.p, 3));
      ASSERT_FALSE(plan.work().merges.empty()) << "the case should split a sequence";
      EXPECT_EQ(plan.workers(), 3);
      const uint64_t planned = plan_count();
      std::vector<float> o(rows * kLatentDim, std::nanf("")), l(rows, std::nanf(""));
      for (int rep = 0; rep < 2; ++rep) {  // the plan's own workspace, twice
        std::fill(o.begin(), o.end(), std::nanf(""));
        decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, plan, o.data(), l.data());
        EXPECT_TRUE(same_bits(o, o_once) && same_bits(l, l_once)) << "rep " << rep;
      }
      // Another layer (other q and cache, same lengths) with the same plan, in caller memory.
      AlignedVec<unsigned char> ws(plan.workspace_bytes(), 0xff);
      decode(c2.p, c2.q_dtype, c2.q16.data(), c2.cache, opt, plan, o.data(), l.data(), ws.data());
      EXPECT_TRUE(same_bits(o, o2_once) && same_bits(l, l2_once));
      EXPECT_EQ(plan_count(), planned) << "a decode with a plan must not plan";
      // The per-call overload plans once per call.
      decode(c.p, c.q_dtype, c.q16.data(), c.cache, opt, o.data(), l.data());
      EXPECT_EQ(plan_count(), planned + 1);
    }
  }
}

TEST(DecodePlan, StalePlanIsRefusedAndNothingIsWritten) {
  CaseSpec s{.batch = 2, .q_len = 2, .heads = 4, .block_size = 16, .seq_lens = {100, 40},
             .q_lens = {2, 1}};
  const test::Case c = test::make_case(s, test::test_seed());
  const DecodePlan plan = make_decode_plan(plan_input(c.p, 2));
  const int64_t rows = 2 * 2 * 4;
  std::vector<float> o(rows * kLatentDim, 7.f), l(rows, 7.f);
  auto refused = [&](const DecodeParams& p, const DecodeOptions& opt, const char* needle) {
    try {
      decode(p, c.q_dtype, c.q16.data(), c.cache, opt, plan, o.data(), l.data());
      ADD_FAILURE() << "not refused: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  std::vector<int32_t> lens = {100, 41}, qls = {1, 1};
  DecodeParams p = c.p;
  p.seq_lens = lens.data();
  refused(p, {}, "seq_lens[1] = 40, not 41");
  p = c.p;
  p.q_lens = qls.data();
  refused(p, {}, "q_lens[0] = 2, not 1");
  p = c.p;
  p.num_heads = 2;
  refused(p, {}, "4 heads, not 2");
  p = c.p;
  p.batch = 1;
  refused(p, {}, "batch 2, not 1");
  p = c.p;
  p.q_len = 3;
  refused(p, {}, "q_len 2, not 3");
  refused(c.p, DecodeOptions{.threads = 3}, "threads = 3 differs from the decode plan's 2");
  for (float v : o) ASSERT_EQ(v, 7.f);
  for (float v : l) ASSERT_EQ(v, 7.f);
  // The matching call runs.
  decode(c.p, c.q_dtype, c.q16.data(), c.cache, DecodeOptions{.threads = 2}, plan, o.data(),
         l.data());
  EXPECT_TRUE(std::isfinite(l[0]));
}

}  // namespace
}  // namespace mla
