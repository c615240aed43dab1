// Preprocess (MLAPO) of the new tokens: the down-projections (q_a, kv_a; under tensor parallelism
// the rank's rows and their all-gather), q path (q LoRA or q_proj), kv path, RoPE at each token's
// position, W_UK absorption per head, and the cache write. Also the kv path alone for prefill.
#include <algorithm>
#include <cmath>

#include "layer/ops.h"
#include "mla/status.h"

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

void down_project(const AttnWeights& w, int64_t n, const float* hidden, bool with_q, int threads,
                  DownProj& d) {
  const int64_t Q = with_q ? w.q_a_split.back() : 0;
  d.kv.resize(size_t(n) * kQkDim);
  d.cq.resize(size_t(n) * Q);
  if (!down_split(w)) {
    if (with_q) cpu::linear(w.q_a, n, hidden, w.q_a.in, d.cq.data(), Q, threads);
    cpu::linear(w.kv_a, n, hidden, w.kv_a.in, d.kv.data(), kQkDim, threads);
    return;
  }
  const int64_t qr = with_q ? w.q_a.out : 0, kr = w.kv_a.out, ld = qr + kr;
  d.part.resize(size_t(n) * ld);
  if (qr > 0) cpu::linear(w.q_a, n, hidden, w.q_a.in, d.part.data(), ld, threads);
  if (kr > 0) cpu::linear(w.kv_a, n, hidden, w.kv_a.in, d.part.data() + qr, ld, threads);
}

void gather_down(const AttnWeights& w, Communicator& tp, int64_t n, bool with_q, DownProj& d) {
  const int p = tp.size();
  MLA_CHECK(int64_t(w.kv_a_split.size()) == p + 1,
            "the layer's weights were split over " << w.kv_a_split.size() - 1
                                                   << " ranks but its group has " << p);
  const int64_t Q = with_q ? w.q_a_split.back() : 0;
  const auto rows = [&](const std::vector<int64_t>& split, int r) {
    return split[r + 1] - split[r];
  };
  thread_local std::vector<int64_t> counts;  // grown once (a step allocates nothing)
  counts.resize(p);
  for (int r = 0; r < p; ++r)
    counts[r] = n * ((with_q ? rows(w.q_a_split, r) : 0) + rows(w.kv_a_split, r));
  d.all.resize(size_t(n) * (Q + kQkDim));
  tp.allgather(d.part.data(), d.all.data(), counts.data());
  const float* src = d.all.data();
  for (int r = 0; r < p; ++r) {
    const int64_t qr = with_q ? rows(w.q_a_split, r) : 0, kr = rows(w.kv_a_split, r);
    for (int64_t t = 0; t < n; ++t, src += qr + kr) {
      std::copy_n(src, qr, d.cq.data() + t * Q + (with_q ? w.q_a_split[r] : 0));
      std::copy_n(src + qr, kr, d.kv.data() + t * kQkDim + w.kv_a_split[r]);
    }
  }
}

void write_kv(const AttnWeights& w, const RopeTable& rope, int64_t n, float* kv,
              const int32_t* positions, const int64_t* slots, PagedLatentCache& cache) {
  float c[kRopeDim / 2], s[kRopeDim / 2];
  for (int64_t t = 0; t < n; ++t) {
    float* row = kv + t * kQkDim;
    rms_norm(row, kLatentDim, w.kv_a_norm.data(), kAttnNormEps);
    rope.angles(positions[t], c, s);
    rope.apply(row + kLatentDim, c, s);
    cache.write(slots[t], row);
  }
}

void preprocess(const ModelConfig& cf, const AttnWeights& w, const RopeTable& rope, int64_t n,
                const float* hidden, DownProj& d, const int32_t* positions, const int64_t* slots,
                PagedLatentCache& cache, int threads, float* q_out) {
  const int64_t H = cf.num_heads, qk = cf.qk_head_dim(), nope = cf.qk_nope_head_dim;
  // The calling thread's buffer, grown once: a step allocates nothing after the first.
  thread_local std::vector<float> q;
  q.resize(size_t(n) * H * qk);
  if (cf.q_lora_rank > 0) {
    float* ca = d.cq.data();
    for (int64_t t = 0; t < n; ++t)
      rms_norm(ca + t * cf.q_lora_rank, cf.q_lora_rank, w.q_a_norm.data(), kAttnNormEps);
    cpu::linear(w.q_b, n, ca, cf.q_lora_rank, q.data(), H * qk, threads);
  } else {
    cpu::linear(w.q_proj, n, hidden, w.q_proj.in, q.data(), H * qk, threads);
  }
  write_kv(w, rope, n, d.kv.data(), positions, slots, cache);
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
