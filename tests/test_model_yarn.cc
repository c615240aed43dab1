// The library's YaRN quantities (mla/model.h) against values worked out by hand, for the cases the
// published configs do not reach: mscale != mscale_all_dim (cos and sin then carry a factor other
// than 1), a frequency in the middle of the correction ramp, a short original context, and
// rope_interleave read from the config. The C++ layer reference (ref/layer_ref) calls these same
// functions, so only numbers from outside can hold them; tests/python/layer_ref.py is the other
// outside check (a whole layer against Hugging Face's equations).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "mla/model.h"

namespace mla {
namespace {

// A V3-shaped attention config (qk 128 + 64) with the given rope_scaling body and extra keys.
ModelConfig config(const std::string& rope, const std::string& extra = "") {
  return parse_model_config(R"({"hidden_size": 256, "num_attention_heads": 4, "kv_lora_rank": 512,
    "q_lora_rank": 96, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000, "rope_scaling": {"type": "yarn", "beta_fast": 32, "beta_slow": 1, )" +
                                rope + "}" + extra + "}",
                            "hand.json");
}

// ln 40 = 3.6888795, sqrt(192) = 13.8564065; yarn_get_mscale(s, m) = 1 + 0.1 m ln s.
TEST(ModelYarn, MscaleDifferentFromMscaleAllDim) {
  const ModelConfig c = config(
      R"("factor": 40, "mscale": 1.0, "mscale_all_dim": 0.5, "original_max_position_embeddings": 4096)");
  // cos and sin carry (1 + 0.1 ln 40) / (1 + 0.05 ln 40) = 1.3688879 / 1.1844440 = 1.1557220.
  EXPECT_NEAR(rope_attention_factor(c), 1.1557220, 1e-6);
  // The scores: 1.1844440^2 / sqrt(192) = 0.1012461 (mscale_all_dim only).
  EXPECT_NEAR(softmax_scale(c), 0.1012461, 1e-6);
  // Equal: the factor is 1 and the scale (1 + 0.0707 ln 40)^2 / sqrt(192) = 0.1147214.
  const ModelConfig eq = config(
      R"("factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096)");
  EXPECT_DOUBLE_EQ(rope_attention_factor(eq), 1.0);
  EXPECT_NEAR(softmax_scale(eq), 0.1147214, 1e-6);
}

TEST(ModelYarn, FrequenciesOnTheRamp) {
  // 4096 original positions, beta 32 / 1, dim 64: the ramp runs over dims [10, 23]. Dim 16 is
  // 6/13 of the way: 10000^-0.5 x (6/13 / 40 + 7/13) = 0.01 x 286/520 = 0.0055.
  const ModelConfig c = config(
      R"("factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096)");
  EXPECT_NEAR(rope_inv_freq(c)[16], 0.0055, 1e-15);
  // 64 original positions, factor 8: correction dims floor(-3.98) -> 0 and ceil(8.06) = 9; dim 3
  // is 1/3 of the way: 10^-0.375 x (1/3 / 8 + 2/3) = 0.4216965 x 17/24 = 0.2987017.
  const ModelConfig s = config(
      R"("factor": 8, "mscale": 1.0, "mscale_all_dim": 1.0, "original_max_position_embeddings": 64)");
  const std::vector<double> f = rope_inv_freq(s);
  EXPECT_NEAR(f[3], 0.2987017, 1e-7);
  EXPECT_NEAR(f[9], std::pow(10000.0, -18.0 / 64) / 8, 1e-15);  // past the ramp: interpolated
}

TEST(ModelYarn, RopeInterleaveIsRead) {
  const std::string rope = R"("factor": 40, "original_max_position_embeddings": 4096)";
  EXPECT_TRUE(config(rope).rope_interleave);
  EXPECT_FALSE(config(rope, R"(, "rope_interleave": false)").rope_interleave);
  EXPECT_TRUE(config(rope, R"(, "rope_interleave": true)").rope_interleave);
}

}  // namespace
}  // namespace mla
