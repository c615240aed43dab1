// The layer's two operators around the attention (DESIGN §1): preprocess (MLAPO) and the einsum
// (W_UV absorption) + o_proj, and the per-token pieces they share with the prefill path.
#pragma once

#include <cstdint>
#include <vector>

#include "layer/weights.h"
#include "mla/cache.h"
#include "mla/model.h"

namespace mla::layer {

// cos and sin (times the YaRN attention factor) of one position: [rope_dim / 2] each.
struct RopeTable {
  std::vector<double> inv_freq;
  double factor = 1;
  bool interleave = true;
  void angles(int64_t pos, float* cos, float* sin) const;
  // Rotates x [64] in place: pairs (2i, 2i+1) when interleaved, else (i, i + 32).
  void apply(float* x, const float* cos, const float* sin) const;
};

// x[n] <- x / sqrt(mean(x^2) + eps) * weight.
void rms_norm(float* x, int64_t n, const float* weight, double eps);

// The kv path for n tokens: kv_a projection, RMSNorm of c_kv, RoPE of k_pe, cache write at
// slots[i] (quantized for an int8 cache). kv: scratch [n, 576].
void write_kv(const AttnWeights& w, const RopeTable& rope, int64_t n, const float* hidden,
              const int32_t* positions, const int64_t* slots, PagedLatentCache& cache, int threads,
              std::vector<float>& kv);

// Preprocess of n new tokens: the kv path (write_kv) and the query [n, H, 576] =
// [W_UK[h]^T q_nope[h] ; RoPE(q_pe[h])].
void preprocess(const ModelConfig& c, const AttnWeights& w, const RopeTable& rope, int64_t n,
                const float* hidden, const int32_t* positions, const int64_t* slots,
                PagedLatentCache& cache, int threads, float* q_out);

// out [n, hidden] = o_proj(concat_h W_UV[h] o_latent[n, h]); o_latent [n, H, 512].
void einsum_o_proj(const ModelConfig& c, const AttnWeights& w, int64_t n, const float* o_latent,
                   int threads, float* out);

}  // namespace mla::layer
