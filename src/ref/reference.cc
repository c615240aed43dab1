// Float64 references. Everything here is the textbook formula, evaluated in double.
#include "ref/reference.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "mla/status.h"

namespace mla::ref {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

int64_t slot_of(const DecodeParams& p, const CacheView& cache, int b, int pos) {
  const int bs = cache.block_size();
  return int64_t(p.block_table[int64_t(b) * p.max_blocks_per_seq + pos / bs]) * bs + pos % bs;
}

// Softmax-weighted sum of rows of `vals` ([n, dv]) with scores s[n]; writes o[dv] and lse.
// DESIGN §6: a NaN or Inf among the scores (from the query or a key) or the values makes o and lse
// NaN; the textbook formula would drop a -inf score or a 0 * Inf.
void softmax_sum(const std::vector<double>& s, const std::vector<double>& vals, int dv, double* o,
                 double* lse) {
  const int n = int(s.size());
  std::fill(o, o + dv, 0.0);
  if (n == 0) {
    *lse = kNegInf;
    return;
  }
  bool finite = true;
  for (int t = 0; t < n; ++t) finite &= std::isfinite(s[t]);
  for (size_t i = 0; i < size_t(n) * dv; ++i) finite &= std::isfinite(vals[i]);
  if (!finite) {
    std::fill(o, o + dv, std::numeric_limits<double>::quiet_NaN());
    *lse = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  const double m = *std::max_element(s.begin(), s.end());
  double l = 0;
  for (int t = 0; t < n; ++t) {
    const double e = std::exp(s[t] - m);
    l += e;
    for (int d = 0; d < dv; ++d) o[d] += e * vals[size_t(t) * dv + d];
  }
  for (int d = 0; d < dv; ++d) o[d] /= l;
  *lse = m + std::log(l);
}

}  // namespace

namespace {

// decode_range over a token reader: read(slot, float[576]).
template <class Read>
void range_of(const DecodeParams& p, const float* q, const CacheView& cache, Read read, int seq,
              int head_begin, int head_end, int kv_begin, int kv_end, std::vector<double>* o,
              std::vector<double>* lse) {
  const int ql = q_len_of(p, seq), nh = head_end - head_begin, n = kv_end - kv_begin;
  // The range's keys, de-quantized once; the values are their first 512.
  std::vector<float> tok(kQkDim);
  std::vector<double> keys(size_t(n) * kQkDim), vals(size_t(n) * kLatentDim);
  for (int t = 0; t < n; ++t) {
    read(slot_of(p, cache, seq, kv_begin + t), tok.data());
    for (int d = 0; d < kQkDim; ++d) keys[size_t(t) * kQkDim + d] = tok[d];
    for (int d = 0; d < kLatentDim; ++d) vals[size_t(t) * kLatentDim + d] = tok[d];
  }
  o->assign(size_t(ql) * nh * kLatentDim, 0.0);
  lse->assign(size_t(ql) * nh, kNegInf);
  for (int i = 0; i < ql; ++i) {
    const int visible = std::min(last_visible(p, seq, i), kv_end - 1) - kv_begin + 1;
    for (int hh = 0; hh < nh; ++hh) {
      const float* qr = q + ((int64_t(seq) * p.q_len + i) * p.num_heads + head_begin + hh) * kQkDim;
      std::vector<double> s(std::max(visible, 0));
      for (int t = 0; t < visible; ++t) {
        double acc = 0;
        for (int d = 0; d < kQkDim; ++d) acc += double(qr[d]) * keys[size_t(t) * kQkDim + d];
        s[t] = acc * double(p.softmax_scale);
      }
      softmax_sum(s, vals, kLatentDim, o->data() + (size_t(i) * nh + hh) * kLatentDim,
                  lse->data() + size_t(i) * nh + hh);
    }
  }
}

}  // namespace

void decode_range(const DecodeParams& p, const float* q, const CacheView& cache, int seq,
                  int head_begin, int head_end, int kv_begin, int kv_end, std::vector<double>* o,
                  std::vector<double>* lse) {
  range_of(p, q, cache, [&](int64_t slot, float* x) { cache.read(slot, x); }, seq, head_begin,
           head_end, kv_begin, kv_end, o, lse);
}

void decode_original(const DecodeParams& p, const float* q, const float* kv, int64_t num_blocks,
                     int block_size, double* o, double* lse) {
  // A view that only carries the pool's geometry, for validation and slot arithmetic.
  CacheView geom{.format = KvDType::bf16, .blocks = num_blocks, .tokens_per_block = block_size};
  validate(p, geom);
  const int H = p.num_heads;
  std::vector<double> so, sl;
  auto read = [&](int64_t slot, float* x) { std::copy(kv + slot * kQkDim, kv + (slot + 1) * kQkDim, x); };
  for (int b = 0; b < p.batch; ++b) {
    const int64_t row0 = int64_t(b) * p.q_len * H;
    std::fill(o + row0 * kLatentDim, o + (row0 + int64_t(p.q_len) * H) * kLatentDim, 0.0);
    std::fill(lse + row0, lse + row0 + int64_t(p.q_len) * H, kNegInf);
    if (p.seq_lens[b] == 0) continue;
    range_of(p, q, geom, read, b, 0, H, 0, p.seq_lens[b], &so, &sl);
    std::copy(so.begin(), so.end(), o + row0 * kLatentDim);
    std::copy(sl.begin(), sl.end(), lse + row0);
  }
}

void decode(const DecodeParams& p, const float* q, const CacheView& cache, double* o,
            double* lse) {
  validate(p, cache);
  const int H = p.num_heads;
  std::vector<double> so, sl;
  for (int b = 0; b < p.batch; ++b) {
    // Padding rows (i >= q_len_b, or a seq_len 0 entry): o = 0, lse = -inf.
    const int64_t row0 = int64_t(b) * p.q_len * H;
    std::fill(o + row0 * kLatentDim, o + (row0 + int64_t(p.q_len) * H) * kLatentDim, 0.0);
    std::fill(lse + row0, lse + row0 + int64_t(p.q_len) * H, kNegInf);
    if (p.seq_lens[b] == 0) continue;
    decode_range(p, q, cache, b, 0, H, 0, p.seq_lens[b], &so, &sl);
    std::copy(so.begin(), so.end(), o + row0 * kLatentDim);
    std::copy(sl.begin(), sl.end(), lse + row0);
  }
}

void combine(int n, int dv, const double* o_parts, const double* lse_parts, double* o,
             double* lse) {
  double L = kNegInf;
  bool nan = false;
  for (int i = 0; i < n; ++i) {
    L = std::max(L, lse_parts[i]);
    nan |= std::isnan(lse_parts[i]);
  }
  if (nan) {  // a part that saw a NaN or Inf poisons the row
    std::fill(o, o + dv, std::numeric_limits<double>::quiet_NaN());
    *lse = std::numeric_limits<double>::quiet_NaN();
    return;
  }
  std::fill(o, o + dv, 0.0);
  if (L == kNegInf) {
    *lse = kNegInf;
    return;
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    if (lse_parts[i] == kNegInf) continue;
    const double w = std::exp(lse_parts[i] - L);
    sum += w;
    for (int d = 0; d < dv; ++d) o[d] += w * o_parts[size_t(i) * dv + d];
  }
  for (int d = 0; d < dv; ++d) o[d] /= sum;
  *lse = L + std::log(sum);
}

std::vector<double> absorb_query(const UpProjections& w, const std::vector<double>& q_nope,
                                 int rows) {
  const int H = w.heads, N = w.nope_dim;
  std::vector<double> out(size_t(rows) * H * kLatentDim, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < H; ++h) {
      const double* qn = &q_nope[(size_t(r) * H + h) * N];
      double* qa = &out[(size_t(r) * H + h) * kLatentDim];
      for (int j = 0; j < N; ++j) {
        const double* wrow = &w.w_uk[(size_t(h) * N + j) * kLatentDim];
        for (int c = 0; c < kLatentDim; ++c) qa[c] += qn[j] * wrow[c];
      }
    }
  return out;
}

std::vector<double> project_output(const UpProjections& w, const std::vector<double>& o_latent,
                                   int rows) {
  const int H = w.heads, V = w.v_dim;
  std::vector<double> out(size_t(rows) * H * V, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int h = 0; h < H; ++h) {
      const double* ol = &o_latent[(size_t(r) * H + h) * kLatentDim];
      for (int j = 0; j < V; ++j) {
        const double* wrow = &w.w_uv[(size_t(h) * V + j) * kLatentDim];
        double acc = 0;
        for (int c = 0; c < kLatentDim; ++c) acc += wrow[c] * ol[c];
        out[(size_t(r) * H + h) * V + j] = acc;
      }
    }
  return out;
}

void mha_unabsorbed(const DecodeParams& p, const std::vector<double>& q_nope,
                    const std::vector<double>& q_pe, const CacheView& cache,
                    const UpProjections& w, double* out, double* lse) {
  validate(p, cache);
  const int H = p.num_heads, N = w.nope_dim, V = w.v_dim;
  MLA_CHECK(w.heads == H, "mha_unabsorbed: weights for " << w.heads << " heads, params have " << H);
  std::vector<float> tok(kQkDim);
  for (int b = 0; b < p.batch; ++b) {
    const int sl = p.seq_lens[b];
    std::vector<double> latent(size_t(sl) * kLatentDim), pe(size_t(sl) * kRopeDim);
    for (int t = 0; t < sl; ++t) {
      cache.read(slot_of(p, cache, b, t), tok.data());
      for (int d = 0; d < kLatentDim; ++d) latent[size_t(t) * kLatentDim + d] = tok[d];
      for (int d = 0; d < kRopeDim; ++d) pe[size_t(t) * kRopeDim + d] = tok[kLatentDim + d];
    }
    for (int h = 0; h < H; ++h) {
      // Decompress this head's keys and values.
      std::vector<double> k_nope(size_t(sl) * N), v(size_t(sl) * V);
      for (int t = 0; t < sl; ++t) {
        const double* c = &latent[size_t(t) * kLatentDim];
        for (int j = 0; j < N; ++j) {
          const double* wr = &w.w_uk[(size_t(h) * N + j) * kLatentDim];
          double acc = 0;
          for (int x = 0; x < kLatentDim; ++x) acc += wr[x] * c[x];
          k_nope[size_t(t) * N + j] = acc;
        }
        for (int j = 0; j < V; ++j) {
          const double* wr = &w.w_uv[(size_t(h) * V + j) * kLatentDim];
          double acc = 0;
          for (int x = 0; x < kLatentDim; ++x) acc += wr[x] * c[x];
          v[size_t(t) * V + j] = acc;
        }
      }
      for (int i = 0; i < p.q_len; ++i) {
        const int last = last_visible(p, b, i);
        const size_t row = (size_t(b) * p.q_len + i) * H + h;
        std::vector<double> s(last + 1);
        for (int t = 0; t <= last; ++t) {
          double acc = 0;
          for (int j = 0; j < N; ++j) acc += q_nope[row * N + j] * k_nope[size_t(t) * N + j];
          for (int j = 0; j < kRopeDim; ++j) acc += q_pe[row * kRopeDim + j] * pe[size_t(t) * kRopeDim + j];
          s[t] = acc * double(p.softmax_scale);
        }
        softmax_sum(s, v, V, out + row * V, lse + row);
      }
    }
  }
}

}  // namespace mla::ref
