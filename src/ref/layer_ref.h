// Float64 reference of one DeepSeek-V2/V3 attention layer, written from the model's equations
// without absorption (transformers' DeepseekV3Attention with eager attention): per head K =
// [W_UK c_kv ; k_pe] and V = W_UV c_kv decompressed for every position, q = [q_nope ; q_pe],
// plain softmax(q.K * scale) V, then o_proj. Weights are read from the checkpoint and
// de-quantized here on their own (fp8 x block scale), independent of the fast path's loaders.
#pragma once

#include <cstdint>
#include <vector>

#include "mla/model.h"
#include "mla/safetensors.h"

namespace mla::ref {

struct LayerWeights64 {
  ModelConfig cfg;
  std::vector<double> q_a, q_a_norm, q_b, q_proj;  // [q_lora, D], [q_lora], [H*qk, q_lora] | [H*qk, D]
  std::vector<double> kv_a, kv_a_norm, kv_b, o;    // [576, D], [512], [H*(nope+v), 512], [D, H*v]
};

LayerWeights64 load_layer_weights64(const ModelConfig& c, const TensorStore& s, int layer);

// One sequence: P history tokens at positions 0..P-1, then Q new tokens at P..P+Q-1 (each sees
// the history and the new tokens up to itself). The history is given either as hidden states
// (hist_hidden [P, D]: its latents computed here) or as the latents the cache holds
// (hist_latent [P, 576]: c_kv after RMSNorm and k_pe after RoPE, pair order). out: [Q, D].
void layer_forward(const LayerWeights64& w, int64_t P, const float* hist_hidden,
                   const float* hist_latent, int64_t Q, const float* new_hidden, double* out);

}  // namespace mla::ref
