// The attention layer's weights as the fast path reads them: projections as LinearWeight views
// into the memory-mapped checkpoint (no copy), the two RMSNorm weights as floats, and kv_b_proj
// split per head into W_UK[h]^T (a transposed copy, [kv_lora, qk_nope], since absorption
// contracts over qk_nope) and W_UV[h] (a view of kv_b_proj's rows). Under tensor parallelism
// (issue 24) a rank holds the head-split tensors of its heads only, as views of the same mapping:
//
//   q_b_proj / q_proj  rows    [h0 * qk_head,        (h0 + heads) * qk_head)
//   kv_b_proj          rows    [h0 * (nope + v),     (h0 + heads) * (nope + v))
//   o_proj             columns [h0 * v,              (h0 + heads) * v)        (same ld)
//   q_a_proj, kv_a_proj_with_mqa  rows [split[r], split[r + 1])  (split_rows below; the outputs
//                      are head-free, so the layer all-gathers each token's whole c_q and kv)
//   the norms: whole on every rank (RMSNorm needs the whole vector)
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
  int64_t head0 = 0, heads = 0;             // this rank's heads [head0, head0 + heads)
  // [tp_size + 1]: rank r's rows of q_a (c_q) and kv_a (kv) are [split[r], split[r + 1]); q_a and
  // kv_a above hold this rank's. {0, out} in one process. q_a_split is empty without q LoRA.
  std::vector<int64_t> q_a_split, kv_a_split;
  LayerWeights format = LayerWeights::stored;
  AlignedVec<int8_t> i8;                    // int8 format: every projection's integers
  AlignedVec<float> i8_scale;               //   and their row scales
  AlignedVec<uint16_t> tiles;               // tile-packed copies of every projection (AMX CPUs)
  AlignedVec<int8_t> tiles_i8;              //   the same for int8 weights
  int64_t bytes_per_step = 0;               // every projection's weight bytes, read once a step
};

// "model.layers.{layer}.self_attn."
std::string attn_prefix(int layer);

// The row split of a head-free projection w over p ranks: [p + 1] starts. Units of one row (of
// block_rows rows for fp8, so that no rank's share cuts a scale block) dealt as evenly as
// possible, rank r getting units [r u / p, (r + 1) u / p); the last unit may be short. So 1536
// and 576 bf16 rows split evenly over 2, 4, 8 ranks; fp8 576 (4.5 blocks of 128) over 2 ranks is
// 256 + 320, and a rank may get no rows (fp8 576 over 8: 5 blocks for 8 ranks).
std::vector<int64_t> split_rows(const cpu::LinearWeight& w, int p);

// Loads and checks every tensor; errors name the file and the tensor. With a rotation, R is folded
// into the absorbed projections (issue 20): W_UK[h]^T's latent side becomes R^T W_UK[h]^T, so the
// absorbed query comes out as q R, and W_UV[h] becomes W_UV[h] R, so it maps o R (the decode's
// output in the rotated space) to W_UV[h] o. Both computed in float64, stored in fp32.
// tp_rank of tp_size: the shard of heads it owns (above); tp_size must divide num_heads, and an fp8
// tensor's split must fall on its scale blocks (both refused with the values named).
// format int8: every projection of the shard (q, kv_a, o, and the per-head W_UK^T / W_UV) quantized
// per output row at load. tiles: also keep a bf16 copy of each in the tile layout (cpu::pack_tiles)
// for the AMX kernel (the weight bytes once more in memory; int8 weights as int8 tiles).
void load_attn_weights(const ModelConfig& c, const TensorStore& s, int layer, AttnWeights& w,
                       KvRotation rotation = KvRotation::none,
                       LayerWeights format = LayerWeights::stored, bool tiles = false,
                       int tp_rank = 0, int tp_size = 1);

}  // namespace mla::layer
