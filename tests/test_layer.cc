// The fast attention layer (preprocess -> decode -> einsum + o_proj) against the float64
// un-absorbed reference (ref/layer_ref) on small checkpoints written by the test: both
// architectures (q LoRA / q_proj), bf16/fp16/int8 caches, Q 1-3, uneven lengths, histories over
// several blocks and past original_max_position_embeddings, layer > 0, bf16/fp16/fp32/fp8
// weights, one file and shards. Also the config parsing and the derived YaRN quantities.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <memory>
#include <random>

#include "cpu/linear/linear.h"
#include "mla/layer.h"
#include "mla/status.h"
#include "ref/layer_ref.h"
#include "harness/random_case.h"
#include "harness/tiny_model.h"
#include "layer_case.h"

namespace mla {
namespace {

using test_layer::LayerCase;
using test_layer::expect_close;
using test_layer::run_case;

TEST(Layer, QLoraBf16WeightsBf16Cache) {
  expect_close({.q_len = 1, .lens = {37, 80, 5}}, "q LoRA, bf16 weights, bf16 cache, Q 1");
}

TEST(Layer, NoQLoraV2LiteStyle) {
  LayerCase lc{.q_len = 2, .lens = {50, 19}};
  lc.model.q_lora_rank = 0;
  lc.model.rope_type_key = true;
  expect_close(lc, "q_proj (no q LoRA), Q 2");
}

TEST(Layer, CacheTypes) {
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8}) {
    LayerCase lc{.kv = kv, .q_len = 3, .lens = {70, 3, 41}};
    expect_close(lc, (std::string("Q 3 cache ") + kv_dtype_name(kv)).c_str());
  }
}

TEST(Layer, WeightTypes) {
  for (StDType dt : {StDType::f32, StDType::f16, StDType::f8_e4m3}) {
    LayerCase lc{.q_len = 2, .lens = {33, 64}};
    lc.model.dtype = dt;
    lc.model.hidden = 320;  // not a multiple of the 128-wide fp8 blocks
    expect_close(lc, (std::string("weights ") + st_dtype_name(dt)).c_str());
  }
}

TEST(Layer, ShardedLayerZeroV3Mscale) {
  LayerCase lc{.q_len = 1, .layer = 0, .lens = {20, 9}};
  lc.model.shards = 3;
  lc.model.mscale = 1.0;
  lc.model.mscale_all_dim = 1.0;
  expect_close(lc, "3 shards, layer 0");
}

TEST(Layer, RotateHalfRopeUnequalMscale) {
  LayerCase lc{.q_len = 2, .lens = {40, 23}};
  lc.model.rope_interleave = false;
  lc.model.mscale = 1.0, lc.model.mscale_all_dim = 0.5;
  expect_close(lc, "rotate-half RoPE, mscale 1.0 / mscale_all_dim 0.5");
}

TEST(Layer, HistoryPastOriginalMaxPositions) {
  // 4200 > original_max_position_embeddings (4096): YaRN's interpolated frequencies matter.
  LayerCase lc{.q_len = 2, .block_size = 64, .lens = {4200}};
  lc.model.heads = 2;
  expect_close(lc, "history of 4200 positions");
  lc.kv = KvDType::int8;
  expect_close(lc, "history of 4200 positions, int8");
}

TEST(Layer, RefusesBadSteps) {
  const std::string dir = test::make_temp_dir("layer-bad");
  test::write_tiny_model(dir, {});
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  EXPECT_THROW(MlaLayer(cfg, store, 2), Error);  // the model has layers 0 and 1
  MlaLayer layer(cfg, store, 0);
  PagedLatentCache cache(CacheConfig{.num_blocks = 2, .block_size = 16});
  std::vector<float> hidden(2 * cfg.hidden_size, 0.5f), out(2 * cfg.hidden_size, -7.f);
  const int32_t bt[2] = {0, 1};
  const int32_t short_len = 1;
  DecodeOptions opt;
  EXPECT_THROW(layer.decode({.batch = 1, .q_len = 2, .hidden = hidden.data(), .seq_lens = &short_len,
                             .block_table = bt, .max_blocks_per_seq = 2}, cache, opt, out.data()),
               Error);
  const int32_t too_long = 40;  // 2 blocks of 16 hold 32
  EXPECT_THROW(layer.decode({.batch = 1, .q_len = 1, .hidden = hidden.data(), .seq_lens = &too_long,
                             .block_table = bt, .max_blocks_per_seq = 2}, cache, opt, out.data()),
               Error);
  for (float v : out) ASSERT_EQ(v, -7.f);
  std::filesystem::remove_all(dir);
}

// An engine plans a step once (make_decode_plan) and every layer's decode reuses the plan: the
// output and the cache writes are exactly those of the decode that plans for itself, and a plan
// for other lengths or other workers is refused before the cache or the output is touched.
TEST(Layer, OnePlanPerStepSharedByLayers) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::string dir = test::make_temp_dir("layer-plan");
  test::TinyModelSpec ms;
  ms.seed = seed;
  test::write_tiny_model(dir, ms);
  const ModelConfig cfg = read_model_config(dir + "/config.json");
  const TensorStore store = TensorStore::open_dir(dir);
  const int B = 3, Q = 2, D = cfg.hidden_size, bs = 16;
  const std::vector<int32_t> lens = {40, 17, 66};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> hist(size_t(66) * D), hidden(size_t(B) * Q * D);
  for (auto& x : hist) x = nd(rng);
  for (auto& x : hidden) x = nd(rng);
  // Sequence b owns blocks 5b..5b+4 (5 x 16 = 80 >= 66 tokens).
  std::vector<int32_t> bt(B * 5);
  for (int i = 0; i < B * 5; ++i) bt[i] = i;
  const LayerStep step{.batch = B, .q_len = Q, .hidden = hidden.data(), .seq_lens = lens.data(),
                       .block_table = bt.data(), .max_blocks_per_seq = 5};
  auto filled_cache = [&](const MlaLayer& layer) {
    auto c = std::make_unique<PagedLatentCache>(CacheConfig{.num_blocks = B * 5, .block_size = bs});
    for (int b = 0; b < B; ++b) {
      const int P = lens[b] - Q;
      std::vector<int32_t> pos(P);
      std::vector<int64_t> slots(P);
      for (int t = 0; t < P; ++t) pos[t] = t, slots[t] = int64_t(b) * 5 * bs + t;
      layer.prefill(P, hist.data(), pos.data(), slots.data(), *c, 2);
    }
    return c;
  };
  auto exported = [](const PagedLatentCache& c) {
    std::vector<float> v(size_t(c.num_slots()) * kQkDim);
    c.export_f32(v.data());
    return v;
  };
  DecodeOptions opt;
  opt.threads = 2;
  const DecodePlan plan =
      make_decode_plan({.batch = B, .q_len = Q, .num_heads = cfg.num_heads, .seq_lens = lens.data(),
                        .workers = 2});
  for (int l = 0; l < 2; ++l) {
    SCOPED_TRACE("layer " + std::to_string(l));
    MlaLayer layer(cfg, store, l);
    std::unique_ptr<PagedLatentCache> own = filled_cache(layer), shared = filled_cache(layer);
    std::vector<float> out_own(hidden.size(), std::nanf("")), out_shared(hidden.size(), std::nanf(""));
    layer.decode(step, *own, opt, out_own.data());
    layer.decode(step, *shared, opt, plan, out_shared.data());
    for (size_t i = 0; i < out_own.size(); ++i) {
      ASSERT_TRUE(std::isfinite(out_own[i])) << i;
      ASSERT_EQ(out_own[i], out_shared[i]) << i;
    }
    EXPECT_EQ(exported(*own), exported(*shared));
  }

  MlaLayer layer(cfg, store, 0);
  std::unique_ptr<PagedLatentCache> cache = filled_cache(layer);
  const std::vector<float> before = exported(*cache);
  std::vector<float> out(hidden.size(), -7.f);
  std::vector<int32_t> other = lens;
  other[1] += 1;
  const DecodePlan other_lens =
      make_decode_plan({.batch = B, .q_len = Q, .num_heads = cfg.num_heads, .seq_lens = other.data(),
                        .workers = 2});
  EXPECT_THROW(layer.decode(step, *cache, opt, other_lens, out.data()), Error);
  const DecodePlan three =
      make_decode_plan({.batch = B, .q_len = Q, .num_heads = cfg.num_heads, .seq_lens = lens.data(),
                        .workers = 3});
  EXPECT_THROW(layer.decode(step, *cache, opt, three, out.data()), Error);  // opt.threads 2
  for (float v : out) ASSERT_EQ(v, -7.f);
  EXPECT_EQ(exported(*cache), before);
  opt.threads = 0;  // the plan's 3 workers run the attention
  layer.decode(step, *cache, opt, three, out.data());
  for (float v : out) ASSERT_TRUE(std::isfinite(v));
  std::filesystem::remove_all(dir);
}

TEST(ModelConfig, DerivedQuantitiesMatchPublishedValues) {
  // DESIGN §1: softmax scale 0.1352 (V3) and 0.1147 (V2-Lite).
  EXPECT_NEAR(softmax_scale(preset_config("deepseek-v3")), 0.1352, 5e-5);
  EXPECT_NEAR(softmax_scale(preset_config("deepseek-v2-lite")), 0.1147, 5e-5);
  EXPECT_DOUBLE_EQ(rope_attention_factor(preset_config("deepseek-v3")), 1.0);
  const ModelConfig c = preset_config("deepseek-v3");
  const std::vector<double> f = rope_inv_freq(c);
  // YaRN over 4096 positions, beta 32/1, dim 64, base 1e4: the correction range is dims [10, 23]
  // (floor/ceil of 10.2 and 22.4); below it the original frequency, above it divided by 40.
  ASSERT_EQ(f.size(), 32u);
  for (int i = 0; i < 32; ++i) {
    const double orig = std::pow(10000.0, -2.0 * i / 64);
    if (i <= 10) {
      EXPECT_DOUBLE_EQ(f[i], orig) << i;
    } else if (i >= 23) {
      EXPECT_NEAR(f[i], orig / 40, 1e-15) << i;
    } else {
      EXPECT_TRUE(f[i] < orig && f[i] > orig / 40) << i;
    }
  }
}

TEST(ModelConfig, RefusesUnsupportedValues) {
  const std::string base = R"({"hidden_size": 64, "num_attention_heads": 2, "kv_lora_rank": 512,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 64, "v_head_dim": 16)";
  EXPECT_NO_THROW(parse_model_config(base + "}", "c.json"));
  auto refused = [&](const std::string& extra, const std::string& needle) {
    std::string text = base + extra + "}";
    if (extra.rfind("REPLACE:", 0) == 0) text = extra.substr(8);
    try {
      parse_model_config(text, "c.json");
      ADD_FAILURE() << "accepted: " << text;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("c.json"), std::string::npos) << e.what();
    }
  };
  refused(R"(, "attention_bias": true)", "attention_bias");
  refused(R"(, "rope_scaling": {"type": "dynamic", "factor": 2})", "dynamic");
  refused(R"(, "rope_scaling": {"rope_type": "yarn"})", "factor");
  refused(R"(, "quantization_config": {"weight_block_size": [128]})", "weight_block_size");
  refused("REPLACE:{\"hidden_size\": 64, \"num_attention_heads\": 2, \"kv_lora_rank\": 256, "
          "\"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 64, \"v_head_dim\": 16}", "kv_lora_rank = 256");
  refused("REPLACE:{\"hidden_size\": 64, \"num_attention_heads\": 2, \"kv_lora_rank\": 512, "
          "\"qk_nope_head_dim\": 16, \"qk_rope_head_dim\": 32, \"v_head_dim\": 16}", "qk_rope_head_dim = 32");
  refused("REPLACE:{\"num_attention_heads\": 2, \"kv_lora_rank\": 512}", "hidden_size");
  refused("REPLACE:{\"hidden_size\": 64,", "not valid JSON");
  // DeepSeek-V3.2 (sparse attention) and unknown model types are refused, never run as dense V3.
  refused(R"(, "model_type": "deepseek_v32")", "deepseek_v32");
  refused(R"(, "index_topk": 2048)", "index_topk");
  refused(R"(, "index_n_heads": 64)", "index_n_heads");
  refused(R"(, "model_type": "llama")", "llama");
  EXPECT_NO_THROW(parse_model_config(base + R"(, "model_type": "deepseek_v2"})", "c.json"));
}

// Every weight type through both projection kernels against a float64 product.
TEST(Linear, KernelsMatchFloat64) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (cpu::WDType dt : {cpu::WDType::bf16, cpu::WDType::f16, cpu::WDType::f32, cpu::WDType::fp8_e4m3})
    for (int n : {1, 2, 3, 4, 5, 9}) {
      const int64_t out = 37, in = 300;  // neither a multiple of 4 rows nor of 16 columns
      std::vector<unsigned char> wb(out * in * cpu::wdtype_size(dt));
      std::vector<float> scales(1 * 3);
      for (auto& s : scales) s = 0.01f + 0.01f * float(rng() % 100);
      for (int64_t i = 0; i < out * in; ++i) {
        const float v = nd(rng);
        if (dt == cpu::WDType::bf16) { const uint16_t h = f32_to_bf16(v); std::memcpy(&wb[i * 2], &h, 2); }
        if (dt == cpu::WDType::f16) { const uint16_t h = f32_to_f16(v); std::memcpy(&wb[i * 2], &h, 2); }
        if (dt == cpu::WDType::f32) std::memcpy(&wb[i * 4], &v, 4);
        if (dt == cpu::WDType::fp8_e4m3) wb[i] = f32_to_fp8e4m3(v * 50);
      }
      cpu::LinearWeight w{.out = out, .in = in, .dtype = dt, .w = wb.data(), .ld = in,
                          .scale_inv = scales.data(), .scale_ld = 3};
      std::vector<float> x(n * in);
      for (auto& v : x) v = nd(rng);
      for (bool portable : {false, true}) {
        std::vector<float> y(n * out + 8, std::nanf(""));
        cpu::linear(w, n, x.data(), in, y.data(), out, 2, portable ? cpu::LinearIsa::portable : cpu::LinearIsa::best);
        for (int t = 0; t < n; ++t)
          for (int64_t r = 0; r < out; ++r) {
            double s = 0, a = 0;
            for (int64_t c = 0; c < in; ++c) s += double(w.at(r, c)) * x[t * in + c], a += std::fabs(double(w.at(r, c)) * x[t * in + c]);
            ASSERT_NEAR(y[t * out + r], s, 1e-5 * a) << cpu::wdtype_name(dt) << " n " << n << " row " << r
                                                     << (portable ? " portable" : " avx512");
          }
        for (int i = 0; i < 8; ++i) ASSERT_TRUE(std::isnan(y[n * out + i]));  // nothing past the end
      }
    }
}

}  // namespace
}  // namespace mla

namespace mla {
namespace {

// The per-head dispatch gives what one product per head gives, on both kernels.
TEST(Linear, HeadsMatchOneProductPerHead) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int heads = 3, n = 5;
  const int64_t out = 37, in = 50;
  std::vector<uint16_t> wb(heads * out * in);
  for (auto& v : wb) v = f32_to_bf16(nd(rng));
  std::vector<cpu::LinearWeight> ws;
  for (int h = 0; h < heads; ++h)
    ws.push_back({.out = out, .in = in, .dtype = cpu::WDType::bf16, .w = wb.data() + h * out * in, .ld = in});
  std::vector<float> x(n * heads * in);
  for (auto& v : x) v = nd(rng);
  for (bool portable : {false, true}) {
    std::vector<float> y(n * heads * out, std::nanf("")), want(y.size(), std::nanf(""));
    cpu::linear_heads(ws.data(), heads, n, x.data(), heads * in, in, y.data(), heads * out, out, 2, portable ? cpu::LinearIsa::portable : cpu::LinearIsa::best);
    for (int h = 0; h < heads; ++h)
      cpu::linear(ws[h], n, x.data() + h * in, heads * in, want.data() + h * out, heads * out, 2, portable ? cpu::LinearIsa::portable : cpu::LinearIsa::best);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], want[i]) << i << (portable ? " portable" : " avx512");
  }
}

}  // namespace
}  // namespace mla

namespace mla {
namespace {

// A NaN weight (fp8's 0x7f code, a bf16 NaN) makes its row's outputs NaN on both kernels and
// leaves every other row finite: never a plausible number.
TEST(Linear, NanWeightsGiveNanRows) {
  const int64_t out = 9, in = 40;
  const int n = 5;
  std::vector<uint8_t> w8(out * in, 0x38);  // 1.0
  std::vector<uint16_t> w16(out * in, f32_to_bf16(1.f));
  w8[3 * in + 17] = 0x7f;
  w16[3 * in + 17] = 0x7fc0;
  const float scale = 0.5f;
  std::vector<float> x(n * in, 0.25f);
  for (bool portable : {false, true}) {
    for (const cpu::LinearWeight& w :
         {cpu::LinearWeight{.out = out, .in = in, .dtype = cpu::WDType::fp8_e4m3, .w = w8.data(), .ld = in,
                            .scale_inv = &scale, .scale_ld = 1},
          cpu::LinearWeight{.out = out, .in = in, .dtype = cpu::WDType::bf16, .w = w16.data(), .ld = in}}) {
      for (int64_t nn : {int64_t(1), int64_t(n)}) {
        std::vector<float> y(nn * out, -1.f);
        cpu::linear(w, nn, x.data(), in, y.data(), out, 2, portable ? cpu::LinearIsa::portable : cpu::LinearIsa::best);
        for (int64_t t = 0; t < nn; ++t)
          for (int64_t r = 0; r < out; ++r) {
            if (r == 3) {
              EXPECT_TRUE(std::isnan(y[t * out + r])) << cpu::wdtype_name(w.dtype) << (portable ? " portable" : " avx512");
            } else {
              EXPECT_FLOAT_EQ(y[t * out + r], w.dtype == cpu::WDType::fp8_e4m3 ? 0.5f * 0.25f * in : 0.25f * in);
            }
          }
      }
    }
  }
}

}  // namespace
}  // namespace mla

namespace mla {
namespace {

// Checkpoint problems the layer's loader itself must catch, each named.
TEST(Layer, RefusesInconsistentCheckpoints) {
  const std::string dir = test::make_temp_dir("layer-ckpt");
  test::TinyModelSpec spec;
  spec.dtype = StDType::f8_e4m3;
  test::write_tiny_model(dir, spec);
  const TensorStore store = TensorStore::open_dir(dir);
  ModelConfig cfg = read_model_config(dir + "/config.json");
  auto message = [&](const ModelConfig& c) {
    try {
      MlaLayer layer(c, store, 1);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    ADD_FAILURE() << "accepted";
    return std::string();
  };
  ModelConfig no_blocks = cfg;
  no_blocks.fp8_block_rows = no_blocks.fp8_block_cols = 0;
  EXPECT_NE(message(no_blocks).find("model.layers.1.self_attn.q_a_proj.weight is F8_E4M3 but config.json "
                                    "has no quantization_config.weight_block_size"), std::string::npos);
  ModelConfig wrong_blocks = cfg;
  wrong_blocks.fp8_block_rows = 64;  // the scales were written for 128 x 128
  EXPECT_NE(message(wrong_blocks).find("q_a_proj.weight_scale_inv has shape [1, 2], expected [2, 2]"),
            std::string::npos) << message(wrong_blocks);
  ModelConfig more_heads = cfg;
  more_heads.num_heads = 8;
  EXPECT_NE(message(more_heads).find("q_b_proj.weight has shape [384, 96], expected [768, 96]"),
            std::string::npos) << message(more_heads);
  ModelConfig no_lora = cfg;
  no_lora.q_lora_rank = 0;
  EXPECT_NE(message(no_lora).find("no tensor model.layers.1.self_attn.q_proj.weight"), std::string::npos)
      << message(no_lora);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace mla
