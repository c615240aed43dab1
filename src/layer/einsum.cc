// The einsum after the attention (W_UV absorption, 512 -> v_head_dim per head) and o_proj.
#include <vector>

#include "layer/ops.h"

namespace mla::layer {

void einsum_o_proj(const ModelConfig& c, const AttnWeights& w, int64_t n, const float* o_latent,
                   int threads, float* out) {
  const int64_t H = c.num_heads, v = c.v_head_dim;
  std::vector<float> ov(size_t(n) * H * v);
  for (int64_t h = 0; h < H; ++h)
    cpu::linear(w.uv[h], n, o_latent + h * kLatentDim, H * kLatentDim, ov.data() + h * v, H * v, threads);
  cpu::linear(w.o, n, ov.data(), H * v, out, c.hidden_size, threads);
}

}  // namespace mla::layer
