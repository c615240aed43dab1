// The einsum after the attention (W_UV absorption, 512 -> v_head_dim per head) and o_proj.
#include <vector>

#include "layer/ops.h"

namespace mla::layer {

void einsum_o_proj(const ModelConfig& c, const AttnWeights& w, int64_t n, const float* o_latent,
                   int threads, float* out) {
  const int64_t H = c.num_heads, v = c.v_head_dim;
  thread_local std::vector<float> ov;  // the calling thread's, grown once: no allocation per step
  ov.resize(size_t(n) * H * v);
  cpu::linear_heads(w.uv.data(), int(H), n, o_latent, H * kLatentDim, kLatentDim, ov.data(), H * v, v,
                    threads);
  cpu::linear(w.o, n, ov.data(), H * v, out, c.hidden_size, threads);
}

}  // namespace mla::layer
