// The attention layer's weights as the fast path reads them: projections as LinearWeight views
// into the memory-mapped checkpoint (no copy), the two RMSNorm weights as floats, and kv_b_proj
// split per head into W_UK[h]^T (a transposed copy, [kv_lora, qk_nope], since absorption
// contracts over qk_nope) and W_UV[h] (a view of kv_b_proj's rows).
#pragma once

#include <vector>

#include "cpu/linear/linear.h"
#include "mla/cache.h"
#include "mla/layer.h"
#include "mla/model.h"
#include "mla/safetensors.h"

namespace mla::layer {

struct AttnWeights {
  cpu::LinearWeight q_a, q_b, q_proj;  // q_a/q_b with q LoRA, else q_proj
  cpu::LinearWeight kv_a, kv_b, o;
  std::vector<float> q_a_norm, kv_a_norm;
  std::vector<cpu::LinearWeight> uk_t, uv;  // [heads]
  AlignedVec<uint16_t> uk_t_bf16;           // storage of uk_t when kv_b_proj is bf16 (exact)
  AlignedVec<float> uk_t_f32;               // otherwise (exact for fp16/fp32, fp8 x scale in fp32),
                                            // and always when R is folded in
  AlignedVec<float> uv_f32;                 // [heads, v, 512] W_UV[h] R, when R is folded in
  KvRotation rotation = KvRotation::none;   // R folded into uk_t (q R) and uv (o R^T)
  LayerWeights format = LayerWeights::stored;
  AlignedVec<int8_t> i8;                    // int8 format: every projection's integers
  AlignedVec<float> i8_scale;               //   and their row scales
  AlignedVec<uint16_t> tiles;               // tile-packed copies of every projection (AMX CPUs)
  AlignedVec<int8_t> tiles_i8;              //   the same for int8 weights
  int64_t bytes_per_step = 0;               // every projection's weight bytes, read once a step
};

// "model.layers.{layer}.self_attn."
std::string attn_prefix(int layer);

// Loads and checks every tensor; errors name the file and the tensor. With a rotation, R is folded
// into the absorbed projections (issue 20): W_UK[h]^T's latent side becomes R^T W_UK[h]^T, so the
// absorbed query comes out as q R, and W_UV[h] becomes W_UV[h] R, so it maps o R (the decode's
// output in the rotated space) to W_UV[h] o. Both computed in float64, stored in fp32.
// format int8: every projection (q, kv_a, o, and the per-head W_UK^T / W_UV) quantized per output
// row at load. tiles: also keep a bf16 copy of each in the tile layout (cpu::pack_tiles) for the
// AMX kernel (the weight bytes once more in memory; int8 weights as int8 tiles).
void load_attn_weights(const ModelConfig& c, const TensorStore& s, int layer, AttnWeights& w,
                       KvRotation rotation = KvRotation::none,
                       LayerWeights format = LayerWeights::stored, bool tiles = false);

}  // namespace mla::layer
