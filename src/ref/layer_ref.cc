// The float64 un-absorbed attention layer (see layer_ref.h).
#include "ref/layer_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>

#include "mla/cache.h"
#include "mla/status.h"

namespace mla::ref {

namespace {

double elem(const StTensor& t, int64_t i) {
  switch (t.dtype) {
    case StDType::f32: return static_cast<const float*>(t.data)[i];
    case StDType::bf16: {
      const uint32_t u = uint32_t(static_cast<const uint16_t*>(t.data)[i]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
    case StDType::f16: {
      const uint16_t h = static_cast<const uint16_t*>(t.data)[i];
      const int e = (h >> 10) & 31, m = h & 1023;
      const double mag = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                              : std::ldexp(1024 + m, e - 25);
      return (h & 0x8000) ? -mag : mag;
    }
    case StDType::f8_e4m3: {
      const uint8_t v = static_cast<const uint8_t*>(t.data)[i];
      const int e = (v >> 3) & 15, m = v & 7;
      if (e == 15 && m == 7) return NAN;
      const double mag = e == 0 ? std::ldexp(m, -9) : std::ldexp(8 + m, e - 10);
      return (v & 0x80) ? -mag : mag;
    }
    default: MLA_FAIL(t.file << ": tensor " << t.name << " has unsupported dtype " << t.dtype_str);
  }
}

std::vector<double> load(const ModelConfig& c, const TensorStore& s, const std::string& name,
                         int64_t rows, int64_t cols) {
  const StTensor t = s.get(name + ".weight");
  MLA_CHECK(t.numel() == rows * cols, t.file << ": tensor " << t.name << " has shape " << t.shape_str());
  std::vector<double> w(rows * cols);
  for (int64_t i = 0; i < rows * cols; ++i) w[i] = elem(t, i);
  if (t.dtype == StDType::f8_e4m3) {
    const StTensor sc = s.get(name + ".weight_scale_inv");
    const int br = c.fp8_block_rows, bc = c.fp8_block_cols;
    const int64_t scols = (cols + bc - 1) / bc;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < cols; ++k) w[r * cols + k] *= elem(sc, (r / br) * scols + k / bc);
  }
  return w;
}

// Four partial sums: the compiler keeps them in vector lanes (float64 throughout).
double dot(const double* a, const double* b, int64_t n) {
  double s[4] = {};
  int64_t k = 0;
  for (; k + 4 <= n; k += 4)
    for (int j = 0; j < 4; ++j) s[j] += a[k + j] * b[k + j];
  for (; k < n; ++k) s[0] += a[k] * b[k];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

void matvec(const std::vector<double>& w, int64_t rows, int64_t cols, const double* x, double* y) {
  for (int64_t r = 0; r < rows; ++r) y[r] = dot(w.data() + r * cols, x, cols);
}

// fn(h) for every head, spread over the CPUs (the reference of a full-size layer decompresses
// K and V of thousands of positions for 128 heads).
template <class F>
void for_heads(int64_t H, F&& fn) {
  const int n = int(std::min<int64_t>(H, std::max(1u, std::thread::hardware_concurrency())));
  std::vector<std::thread> th;
  for (int w = 1; w < n; ++w)
    th.emplace_back([&, w] { for (int64_t h = w; h < H; h += n) fn(h); });
  for (int64_t h = 0; h < H; h += n) fn(h);
  for (auto& t : th) t.join();
}

void rms(double* x, int64_t n, const std::vector<double>& g) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const double r = 1.0 / std::sqrt(ss / n + kAttnNormEps);
  for (int64_t i = 0; i < n; ++i) x[i] = g[i] * x[i] * r;
}

// RoPE at `pos` on x [64]: interleaved pairs (x_2i, x_2i+1) as complex numbers times
// e^{i pos f_i} (DeepSeek's and transformers' V2 form), or rotate-half pairs (x_i, x_i+32).
void rope(const ModelConfig& c, int64_t pos, double* x) {
  const std::vector<double> f = rope_inv_freq(c);
  const double af = rope_attention_factor(c);
  const int half = int(f.size());
  for (int i = 0; i < half; ++i) {
    const int a = c.rope_interleave ? 2 * i : i, b = c.rope_interleave ? 2 * i + 1 : i + half;
    const double cs = std::cos(pos * f[i]) * af, sn = std::sin(pos * f[i]) * af;
    const double re = x[a], im = x[b];
    x[a] = re * cs - im * sn;
    x[b] = re * sn + im * cs;
  }
}

}  // namespace

LayerWeights64 load_layer_weights64(const ModelConfig& c, const TensorStore& s, int layer) {
  const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
  const int64_t H = c.num_heads, D = c.hidden_size, qk = c.qk_head_dim();
  LayerWeights64 w;
  w.cfg = c;
  if (c.q_lora_rank > 0) {
    w.q_a = load(c, s, p + "q_a_proj", c.q_lora_rank, D);
    w.q_a_norm = load(c, s, p + "q_a_layernorm", 1, c.q_lora_rank);
    w.q_b = load(c, s, p + "q_b_proj", H * qk, c.q_lora_rank);
  } else {
    w.q_proj = load(c, s, p + "q_proj", H * qk, D);
  }
  w.kv_a = load(c, s, p + "kv_a_proj_with_mqa", c.kv_lora_rank + c.qk_rope_head_dim, D);
  w.kv_a_norm = load(c, s, p + "kv_a_layernorm", 1, c.kv_lora_rank);
  w.kv_b = load(c, s, p + "kv_b_proj", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank);
  w.o = load(c, s, p + "o_proj", D, H * c.v_head_dim);
  return w;
}

void layer_forward(const LayerWeights64& w, int64_t P, const float* hist_hidden,
                   const float* hist_latent, int64_t Q, const float* new_hidden, double* out) {
  const ModelConfig& c = w.cfg;
  const int64_t H = c.num_heads, D = c.hidden_size, nope = c.qk_nope_head_dim, rd = c.qk_rope_head_dim;
  const int64_t v = c.v_head_dim, L = c.kv_lora_rank, qk = nope + rd, T = P + Q;
  // Latent (c_kv normalized, k_pe rotated) of every position.
  std::vector<double> lat(T * (L + rd)), x(D);
  for (int64_t t = 0; t < T; ++t) {
    double* l = lat.data() + t * (L + rd);
    if (t < P && hist_latent) {
      for (int64_t i = 0; i < L + rd; ++i) l[i] = hist_latent[t * (L + rd) + i];
      continue;
    }
    const float* h = t < P ? hist_hidden + t * D : new_hidden + (t - P) * D;
    for (int64_t i = 0; i < D; ++i) x[i] = h[i];
    matvec(w.kv_a, L + rd, D, x.data(), l);
    rms(l, L, w.kv_a_norm);
    rope(c, t, l + L);
  }
  // Per head, K = [W_UK c_kv ; k_pe] and V = W_UV c_kv for every position.
  std::vector<double> K(H * T * qk), V(H * T * v);
  for_heads(H, [&](int64_t h) {
    for (int64_t t = 0; t < T; ++t) {
      const double* l = lat.data() + t * (L + rd);
      double* k = K.data() + (h * T + t) * qk;
      double* vv = V.data() + (h * T + t) * v;
      for (int64_t n = 0; n < nope; ++n) k[n] = dot(w.kv_b.data() + (h * (nope + v) + n) * L, l, L);
      for (int64_t i = 0; i < rd; ++i) k[nope + i] = l[L + i];
      for (int64_t j = 0; j < v; ++j) vv[j] = dot(w.kv_b.data() + (h * (nope + v) + nope + j) * L, l, L);
    }
  });
  const double scale = softmax_scale(c);
  std::vector<double> q(H * qk), attn(H * v);
  for (int64_t i = 0; i < Q; ++i) {
    const int64_t pos = P + i;
    for (int64_t d = 0; d < D; ++d) x[d] = new_hidden[i * D + d];
    if (c.q_lora_rank > 0) {
      std::vector<double> ca(c.q_lora_rank);
      matvec(w.q_a, c.q_lora_rank, D, x.data(), ca.data());
      rms(ca.data(), c.q_lora_rank, w.q_a_norm);
      matvec(w.q_b, H * qk, c.q_lora_rank, ca.data(), q.data());
    } else {
      matvec(w.q_proj, H * qk, D, x.data(), q.data());
    }
    for_heads(H, [&](int64_t h) {
      std::vector<double> sc(pos + 1);
      double* qh = q.data() + h * qk;
      rope(c, pos, qh + nope);
      double m = -INFINITY;
      for (int64_t t = 0; t <= pos; ++t) {
        const double* k = K.data() + (h * T + t) * qk;
        double s = 0;
        for (int64_t d = 0; d < qk; ++d) s += qh[d] * k[d];
        sc[t] = s * scale;
        m = std::max(m, sc[t]);
      }
      double l = 0;
      for (int64_t t = 0; t <= pos; ++t) l += (sc[t] = std::exp(sc[t] - m));
      for (int64_t j = 0; j < v; ++j) {
        double s = 0;
        for (int64_t t = 0; t <= pos; ++t) s += sc[t] * V[(h * T + t) * v + j];
        attn[h * v + j] = s / l;
      }
    });
    matvec(w.o, D, H * v, attn.data(), out + i * D);
  }
}

}  // namespace mla::ref
