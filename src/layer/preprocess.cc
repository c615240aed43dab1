// Preprocess (MLAPO) of the new tokens: q path (q LoRA or q_proj), kv path, RoPE at each token's
// position, W_UK absorption per head, and the cache write. Also the kv path alone for prefill.
#include <cmath>

#include "layer/ops.h"

namespace mla::layer {

void RopeTable::angles(int64_t pos, float* c, float* s) const {
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const double a = double(pos) * inv_freq[i];
    c[i] = float(std::cos(a) * factor);
    s[i] = float(std::sin(a) * factor);
  }
}

void RopeTable::apply(float* x, const float* c, const float* s) const {
  const int half = int(inv_freq.size());
  for (int i = 0; i < half; ++i) {
    const int a = interleave ? 2 * i : i, b = interleave ? 2 * i + 1 : i + half;
    const float x0 = x[a], x1 = x[b];
    x[a] = x0 * c[i] - x1 * s[i];
    x[b] = x1 * c[i] + x0 * s[i];
  }
}

void rms_norm(float* x, int64_t n, const float* weight, double eps) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float r = float(1.0 / std::sqrt(ss / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) x[i] = weight[i] * (x[i] * r);
}

void write_kv(const AttnWeights& w, const RopeTable& rope, int64_t n, const float* hidden,
              const int32_t* positions, const int64_t* slots, PagedLatentCache& cache, int threads,
              std::vector<float>& kv) {
  kv.resize(size_t(n) * kQkDim);
  cpu::linear(w.kv_a, n, hidden, w.kv_a.in, kv.data(), kQkDim, threads);
  float c[kRopeDim / 2], s[kRopeDim / 2];
  for (int64_t t = 0; t < n; ++t) {
    float* row = kv.data() + t * kQkDim;
    rms_norm(row, kLatentDim, w.kv_a_norm.data(), kAttnNormEps);
    rope.angles(positions[t], c, s);
    rope.apply(row + kLatentDim, c, s);
    cache.write(slots[t], row);
  }
}

void preprocess(const ModelConfig& cf, const AttnWeights& w, const RopeTable& rope, int64_t n,
                const float* hidden, const int32_t* positions, const int64_t* slots,
                PagedLatentCache& cache, int threads, float* q_out) {
  const int64_t H = cf.num_heads, qk = cf.qk_head_dim(), nope = cf.qk_nope_head_dim;
  // The calling thread's buffers, grown once: a step allocates nothing after the first.
  thread_local std::vector<float> q, ca, kv;
  q.resize(size_t(n) * H * qk);
  if (cf.q_lora_rank > 0) {
    ca.resize(size_t(n) * cf.q_lora_rank);
    cpu::linear(w.q_a, n, hidden, w.q_a.in, ca.data(), cf.q_lora_rank, threads);
    for (int64_t t = 0; t < n; ++t)
      rms_norm(ca.data() + t * cf.q_lora_rank, cf.q_lora_rank, w.q_a_norm.data(), kAttnNormEps);
    cpu::linear(w.q_b, n, ca.data(), cf.q_lora_rank, q.data(), H * qk, threads);
  } else {
    cpu::linear(w.q_proj, n, hidden, w.q_proj.in, q.data(), H * qk, threads);
  }
  write_kv(w, rope, n, hidden, positions, slots, cache, threads, kv);
  float c[kRopeDim / 2], s[kRopeDim / 2];
  for (int64_t t = 0; t < n; ++t) {
    rope.angles(positions[t], c, s);
    for (int64_t h = 0; h < H; ++h) {
      float* dst = q_out + (t * H + h) * kQkDim + kLatentDim;
      const float* src = q.data() + (t * H + h) * qk + nope;
      for (int i = 0; i < kRopeDim; ++i) dst[i] = src[i];
      rope.apply(dst, c, s);
    }
  }
  cpu::linear_heads(w.uk_t.data(), int(H), n, q.data(), H * qk, qk, q_out, H * kQkDim, kQkDim, threads);
}

}  // namespace mla::layer
