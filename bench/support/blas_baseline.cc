// The BLAS-composed baseline: gather + de-quantize, sgemm, fp32 softmax, sgemm.
#include "support/blas_baseline.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "mla/status.h"
#include "support/parallel.h"

namespace mla::bench {

namespace {

// Token `slot` of the cache as 576 fp32 values; written so that the compiler vectorizes the
// bf16 and int8 loops (what a user would write; the fp16 conversion is a library call).
void dequantize_token(const PagedLatentCache& c, int64_t slot, float* out) {
  switch (c.dtype()) {
    case KvDType::bf16: {
      const uint16_t* s = c.token16(slot);
      for (int d = 0; d < kQkDim; ++d) out[d] = bf16_to_f32(s[d]);
      return;
    }
    case KvDType::fp16: {
      const uint16_t* s = c.token16(slot);
      for (int d = 0; d < kQkDim; ++d) out[d] = f16_to_f32(s[d]);
      return;
    }
    case KvDType::int8: break;
  }
  const int8_t* l = c.latent_i8(slot);
  switch (c.scale_mode()) {
    case KvScale::token: {
      const float s = c.token_scale(slot);
      for (int d = 0; d < kLatentDim; ++d) out[d] = float(l[d]) * s;
      break;
    }
    case KvScale::tensor: {
      const float s = c.tensor_scale();
      for (int d = 0; d < kLatentDim; ++d) out[d] = float(l[d]) * s;
      break;
    }
    case KvScale::channel: {
      const float* s = c.channel_scales();
      for (int d = 0; d < kLatentDim; ++d) out[d] = float(l[d]) * s[d];
      break;
    }
  }
  const uint16_t* r = c.rope_bf16(slot);
  for (int d = 0; d < kRopeDim; ++d) out[kLatentDim + d] = bf16_to_f32(r[d]);
}

}  // namespace

BlasBaseline::BlasBaseline(int threads) : threads_(threads) {
  MLA_CHECK(threads >= 1, "BLAS baseline: threads = " << threads << " must be at least 1");
}

void BlasBaseline::run(const DecodeParams& p, const float* q, const PagedLatentCache& cache,
                       float* o, float* lse) {
  validate(p, cache);
  // A process-wide setting in OpenBLAS: set it on every call, something else may have changed it.
  openblas_set_num_threads(threads_);
  const int H = p.num_heads, bs = cache.block_size();
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int b = 0; b < p.batch; ++b) {
    const int sl = p.seq_lens[b];
    const int ql = sl == 0 ? 0 : q_len_of(p, b);
    const int64_t row0 = int64_t(b) * p.q_len * H;
    // Padding rows: query tokens past q_lens[b], or all of an empty sequence.
    std::fill(o + (row0 + int64_t(ql) * H) * kLatentDim, o + (row0 + int64_t(p.q_len) * H) * kLatentDim,
              0.f);
    std::fill(lse + row0 + int64_t(ql) * H, lse + row0 + int64_t(p.q_len) * H, neg_inf);
    if (ql == 0) continue;

    const int M = ql * H;
    if (k_.size() < size_t(sl) * kQkDim) k_.resize(size_t(sl) * kQkDim);
    if (s_.size() < size_t(M) * sl) s_.resize(size_t(M) * sl);
    const int32_t* table = p.block_table + int64_t(b) * p.max_blocks_per_seq;
    parallel_for(sl, threads_, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t)
        dequantize_token(cache, int64_t(table[t / bs]) * bs + t % bs, k_.data() + t * kQkDim);
    });

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, sl, kQkDim, p.softmax_scale,
                q + row0 * kQkDim, kQkDim, k_.data(), kQkDim, 0.f, s_.data(), sl);

    // Row r = i * H + h sees keys 0 .. last(i); P is normalized here, so O = P V needs no pass.
    parallel_for(M, threads_, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int i = int(r / H);
        const int n = p.causal ? sl - ql + i + 1 : sl;
        float* s = s_.data() + r * sl;
        float m = neg_inf;
        for (int t = 0; t < n; ++t) m = std::max(m, s[t]);
        float l = 0.f;
        for (int t = 0; t < n; ++t) {
          s[t] = std::exp(s[t] - m);
          l += s[t];
        }
        const float inv = 1.f / l;
        for (int t = 0; t < n; ++t) s[t] *= inv;
        std::fill(s + n, s + sl, 0.f);
        lse[row0 + r] = m + std::log(l);
      }
    });

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, kLatentDim, sl, 1.f, s_.data(), sl,
                k_.data(), kQkDim, 0.f, o + row0 * kLatentDim, kLatentDim);
  }
}

}  // namespace mla::bench
