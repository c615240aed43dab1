// The head-sharded layer (issue 24) in one process: every shard of a tp-way split run one after the
// other with a group that does not reduce (each returns its heads' o_proj partial sum), so the
// shards' outputs must add up to the single-process layer's within float rounding, and each must
// write the same latent cache. The sanitized build runs this (the MPI tests are release only).
// Also the refusals: tp not dividing the heads, an fp8 split inside a scale block.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "harness/random_case.h"
#include "layer_tp_case.h"
#include "mla/status.h"

namespace mla {
namespace {

using test_tp::TpCase;

// Rank `r` of `p` whose all-reduce leaves each rank's partial sum as it is.
class ShardOnly final : public Communicator {
 public:
  ShardOnly(int r, int p) : r_(r), p_(p) {}
  int rank() const override { return r_; }
  int size() const override { return p_; }
  void allreduce_sum(float*, int64_t) override {}
  void broadcast(void*, int64_t, int) override {}
  [[noreturn]] void abort(int) override { std::abort(); }

 private:
  int r_, p_;
};

void expect_shards_sum_to_whole(const TpCase& tc, int tp) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(std::string(tc.name) + ", tp " + std::to_string(tp) + ", seed " +
               std::to_string(seed));
  const std::string dir = test::make_temp_dir("layer-tp");
  test::TinyModelSpec ms = tc.model;
  ms.seed = seed;
  test::write_tiny_model(dir, ms);
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  const MlaLayer whole(cfg, store, tc.layer, tc.rotation);
  const test_tp::StepResult ref = test_tp::run_step(whole, tc, seed, 2);
  std::vector<double> sum(ref.out.size(), 0.0);
  for (int r = 0; r < tp; ++r) {
    ShardOnly g(r, tp);
    const MlaLayer shard(cfg, store, tc.layer, tc.rotation, &g);
    ASSERT_EQ(shard.local_heads(), cfg.num_heads / tp);
    const test_tp::StepResult s = test_tp::run_step(shard, tc, seed, 2);
    // The kv path is whole on every rank: the same bytes in every cache.
    ASSERT_EQ(s.cache.size(), ref.cache.size());
    EXPECT_EQ(std::memcmp(s.cache.data(), ref.cache.data(), ref.cache.size() * sizeof(float)), 0)
        << "rank " << r << "'s cache differs from the single-process layer's";
    for (size_t i = 0; i < sum.size(); ++i) sum[i] += s.out[i];
  }
  const std::vector<float> sumf(sum.begin(), sum.end());
  const test_tp::Diff d = test_tp::diff(sumf, ref.out);
  // The shards' sums differ from the whole's by the order of fp32 additions (o_proj's dot product
  // split in tp pieces) and the decode plan's split of fewer heads: measured up to ~3e-7.
  EXPECT_LT(d.rel, 1e-5);
  EXPECT_LT(d.max_elem, 1e-4);
  std::printf("  %-40s tp %d: rel %.2e, max element %.2e\n", tc.name, tp, d.rel, d.max_elem);
  std::filesystem::remove_all(dir);
}

TEST(LayerTp, ShardsSumToTheSingleProcessLayer) {
  for (const TpCase& tc : test_tp::tp_cases())
    for (int tp : {2, 4}) expect_shards_sum_to_whole(tc, tp);
}

// fp8 weights whose head split falls on the 128x128 scale blocks: qk_head 128 (64 + 64), kv_b 128
// rows per head, o_proj 64 columns per head, 4 heads: 2 ranks split every tensor on a block edge.
TEST(LayerTp, Fp8SplitOnBlockBoundaries) {
  TpCase tc{.name = "fp8 weights, split on block edges", .q_len = 2, .lens = {33, 64}};
  tc.model.dtype = StDType::f8_e4m3;
  tc.model.qk_nope = 64;
  tc.model.v_head = 64;
  expect_shards_sum_to_whole(tc, 2);
}

// The Hadamard rotation folded into each shard's W_UK / W_UV copies (issue 20) on an int8 cache.
TEST(LayerTp, RotationFoldedIntoShards) {
  TpCase tc{.name = "hadamard folded, int8 cache, Q 2",
            .kv = KvDType::int8,
            .rotation = KvRotation::hadamard,
            .q_len = 2,
            .lens = {45, 12}};
  expect_shards_sum_to_whole(tc, 2);
}

void expect_refused(const test::TinyModelSpec& ms, int tp, const std::vector<std::string>& words) {
  const std::string dir = test::make_temp_dir("layer-tp-bad");
  test::write_tiny_model(dir, ms);
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  for (int r = 0; r < tp; ++r) {
    ShardOnly g(r, tp);
    try {
      MlaLayer layer(cfg, store, 0, KvRotation::none, &g);
      ADD_FAILURE() << "tp " << tp << " rank " << r << " was not refused";
    } catch (const Error& e) {
      for (const std::string& w : words)
        EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what() << " lacks " << w;
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(LayerTp, RefusesTpNotDividingHeads) {
  expect_refused({}, 3, {"over 3 ranks", "4 attention heads"});
}

TEST(LayerTp, RefusesFp8SplitInsideABlock) {
  // 4 heads of qk_head 96: 2 ranks split q_b_proj's 384 rows at 192, inside a 128-row block.
  test::TinyModelSpec ms;
  ms.dtype = StDType::f8_e4m3;
  expect_refused(ms, 2, {"q_b_proj", "384 rows at 192", "128x128"});
}

}  // namespace
}  // namespace mla
