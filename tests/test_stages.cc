// The stages the kernels run are the ones the stage vocabulary says (core/stages.h): each
// registered kernel this CPU supports reports, through its StageMarks, exactly the list of its
// `stages` function, which is stage_list itself for every kernel that takes all rows of an item
// through each step; and decode's stage timers count exactly those stages over a whole plan.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/stages.h"
#include "cpu/attention/kernel.h"
#include "mla/attention.h"
#include "mla/plan.h"
#include "harness/random_case.h"

namespace mla {
namespace {

std::string describe(const std::vector<StageOp>& ops) {
  std::string s;
  for (const StageOp& op : ops)
    s += std::string(stage_name(op.stage)) + "(" + std::to_string(op.step) + "," +
         std::to_string(op.rows) + "," + std::to_string(op.tokens) + ") ";
  return s;
}

TEST(Stages, EveryKernelRunsItsStageList) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  std::mt19937_64 rng(seed);
  int checked = 0, canonical = 0;
  for (const cpu::KernelInfo& k : cpu::kernel_registry()) {
    if (!k.supported()) continue;
    SCOPED_TRACE(k.name);
    const bool split = k.stages == cpu::item_stages_split_qk;
    if (k.stages == cpu::item_stages || split) ++canonical;
    for (int heads : {1, 3, 16, 40}) {
      test::CaseSpec s{.batch = 1, .q_len = 2, .heads = heads, .block_size = 16};
      s.kv = k.kv;
      // A short last step at every chunk (not a multiple of 64), and a range that starts inside.
      s.seq_lens = {int(300 + rng() % 200)};
      const test::Case c = test::make_case(s, rng());
      const int L = c.seq_lens[0], rows = 2 * heads;
      for (int chunk : {1, 2, 4})
        for (UpForm up : {UpForm::resident, UpForm::spill})
          for (auto [b, e] : {std::pair{0, L}, std::pair{int(rng() % 100), L - 3}}) {
            std::vector<float> o(size_t(rows) * kLatentDim), lse(rows);
            StageRecorder rec(true);
            cpu::Scratch scratch;
            const cpu::KernelArgs a{.p = &c.p, .cache = &c.view, .q = c.q16.data(), .seq = 0,
                                    .head_begin = 0, .head_end = heads, .kv_begin = b,
                                    .kv_end = e, .o = o.data(),
                                    .o_stride_i = int64_t(heads) * kLatentDim,
                                    .o_stride_h = kLatentDim, .lse = lse.data(),
                                    .lse_stride_i = heads, .lse_stride_h = 1, .chunk = chunk,
                                    .up = up, .stages = &rec};
            k.run(a, scratch);
            const std::vector<StageOp> want = k.stages(rows, b, e, chunk);
            ASSERT_EQ(rec.ops(), want) << "chunk " << chunk << " rows " << rows << " kv [" << b
                                       << ", " << e << ")\n  ran:  " << describe(rec.ops())
                                       << "\n  list: " << describe(want);
            if (k.stages == cpu::item_stages || split) {
              ASSERT_EQ(want, stage_list({.split_qk = split, .rows = rows, .kv_begin = b,
                                          .kv_end = e, .chunk = chunk, .tile = kKvTile}));
            }
            ASSERT_FALSE(want.empty());
            ++checked;
          }
    }
  }
  EXPECT_GE(canonical, 3) << "the portable kernels at least run the canonical list";
  EXPECT_GT(checked, 0);
}

TEST(Stages, TimersCountEveryStageOfThePlan) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8, KvDType::fp8}) {
    std::vector<Isa> isas = test::runnable_isas(kv);
    isas.insert(isas.begin(), Isa::best);
    for (Isa isa : isas) {
      test::CaseSpec s{.batch = 2, .q_len = 2, .heads = 16, .block_size = 64,
                       .seq_lens = {900, 70}};
      s.kv = kv;
      const test::Case c = test::make_case(s, seed);
      const DecodeOptions plain{.threads = 2, .chunk = 2, .isa = isa};
      const DecodePlan plan = make_decode_plan({.batch = 2, .q_len = 2, .num_heads = 16,
                                                .seq_lens = c.p.seq_lens, .q_lens = c.p.q_lens,
                                                .workers = 2});
      const cpu::KernelInfo& k = cpu::select_kernel(kv, isa);
      SCOPED_TRACE(k.name);
      int64_t want[kNumStages] = {};
      for (const WorkItem& it : plan.work().items)
        for (const StageOp& op : k.stages(c.q_lens[it.seq] * (it.head_end - it.head_begin),
                                          it.kv_begin, it.kv_end, plain.chunk))
          ++want[int(op.stage)];
      StageTimes times;
      DecodeOptions timed = plain;
      timed.stage_times = &times;
      std::vector<float> o(2 * 2 * 16 * kLatentDim), l(2 * 2 * 16), o2(o.size()), l2(l.size());
      decode(c.p, c.q_dtype, c.q16.data(), c.cache, timed, plan, o.data(), l.data());
      decode(c.p, c.q_dtype, c.q16.data(), c.cache, plain, plan, o2.data(), l2.data());
      EXPECT_EQ(o, o2) << "timing changed the result";
      double total = 0;
      for (int i = 0; i < kNumStages; ++i) {
        EXPECT_EQ(times.steps[i], want[i]) << stage_index_name(i);
        EXPECT_GE(times.seconds[i], 0.0);
        total += times.seconds[i];
      }
      EXPECT_GT(total, 0.0);
    }
  }
}

}  // namespace
}  // namespace mla
