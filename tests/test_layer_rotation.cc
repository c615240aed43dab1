// The attention layer with a rotated cache (issue 20) against the float64 Hugging Face-style
// reference, within test_layer's bounds: R folded into the absorbed projections (the layer's way)
// for bf16, int8 (token and the default) and fp8 caches, Q 1-3; a layer loaded without the
// rotation on a rotated cache (decode rotates q and o itself); and the refusal of a folded layer
// on an unrotated cache.
#include <gtest/gtest.h>

#include "layer_case.h"
#include "mla/status.h"

namespace mla {
namespace {

using test_layer::expect_close;
using test_layer::LayerCase;

constexpr KvRotation kHad = KvRotation::hadamard;

TEST(LayerRotation, FoldedIntoProjections) {
  for (KvDType kv : {KvDType::bf16, KvDType::int8, KvDType::fp8}) {
    LayerCase lc{.kv = kv, .rotation = kHad, .folded = kHad, .q_len = 3, .lens = {70, 3, 41}};
    expect_close(lc, (std::string("folded hadamard, Q 3, cache ") + kv_dtype_name(kv)).c_str());
  }
  LayerCase lc{.kv = KvDType::int8, .rotation = kHad, .folded = kHad, .q_len = 1, .lens = {37, 80, 5}};
  lc.model.q_lora_rank = 0;
  expect_close(lc, "folded hadamard, q_proj, Q 1, int8");
  LayerCase w{.rotation = kHad, .folded = kHad, .q_len = 2, .lens = {33, 64}};
  w.model.dtype = StDType::f8_e4m3;
  w.model.hidden = 320;
  expect_close(w, "folded hadamard, fp8 weights");
}

TEST(LayerRotation, UnfoldedLayerOnRotatedCache) {
  LayerCase lc{.kv = KvDType::int8, .rotation = kHad, .q_len = 2, .lens = {50, 19}};
  expect_close(lc, "layer without R, hadamard int8 cache");
}

TEST(LayerRotation, FoldedLayerRefusesUnrotatedCache) {
  LayerCase lc{.kv = KvDType::int8, .folded = kHad, .q_len = 1, .lens = {20}};
  try {
    test_layer::run_case(lc, test::test_seed());
    ADD_FAILURE() << "a folded layer ran on an unrotated cache";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rotation is none"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace mla
