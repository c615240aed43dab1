// The BLAS-composed baseline: gather + de-quantize, sgemm, fp32 softmax, sgemm.
#include "harness/blas_baseline.h"

#include <cblas.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "mla/status.h"
#include "harness/parallel.h"

namespace mla::bench {

namespace {

// The element-wise stages are written as a user who cares would write them next to a BLAS call:
// plain loops that the compiler vectorizes, built for AVX-512, AVX2 and baseline x86-64 with the
// choice made at load time (GCC's target_clones), and an exp that vectorizes (the C library's
// expf does not). With std::exp and the baseline target they took 25-45% of the time.
#define MLA_BASELINE_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))

// exp(x) for x <= 0 (a softmax numerator), relative error < 2e-7: Cephes' expf polynomial after
// reduction by ln 2. Below -87 it returns exp(-87) ~ 1.6e-38 instead of something smaller, which
// a sum that holds exp(0) = 1 cannot notice.
[[gnu::always_inline]] inline float exp_nonpositive(float x) {
  x = std::max(x, -87.f);
  const float n = (x * 1.44269504089f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.f;
  return y * std::bit_cast<float>(uint32_t(int32_t(n) + 127) << 23);
}

// IEEE half to float without a table or a branch, so that it vectorizes: the exponent and
// mantissa moved into place and rescaled by 2^112 (exact, subnormals included); Inf/NaN kept.
[[gnu::always_inline]] inline float half_to_float(uint16_t h) {
  const uint32_t em = uint32_t(h & 0x7fff) << 13;
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const float scaled = std::bit_cast<float>(em) * 0x1p112f;
  const uint32_t bits =
      em >= (0x7c00u << 13) ? (em | 0x7f800000u) : std::bit_cast<uint32_t>(scaled);
  return std::bit_cast<float>(bits | sign);
}

// Tokens [begin, end) of a sequence (block table `table`) as fp32 rows of 576 in k.
MLA_BASELINE_CLONES
void dequantize_tokens(const PagedLatentCache& c, const int32_t* table, int64_t begin, int64_t end,
                       float* k) {
  const int bs = c.block_size();
  for (int64_t t = begin; t < end; ++t) {
    const int64_t slot = int64_t(table[t / bs]) * bs + t % bs;
    float* out = k + t * kQkDim;
    if (c.dtype() == KvDType::bf16) {
      const uint16_t* s = c.token16(slot);
      for (int d = 0; d < kQkDim; ++d) out[d] = std::bit_cast<float>(uint32_t(s[d]) << 16);
      continue;
    }
    if (c.dtype() == KvDType::fp16) {
      const uint16_t* s = c.token16(slot);
      for (int d = 0; d < kQkDim; ++d) out[d] = half_to_float(s[d]);
      continue;
    }
    if (c.dtype() == KvDType::fp8 || kv_token_scales(c.scale_mode()) > 1) {
      c.read(slot, out);  // fp8 and the int8 group modes: the cache's own de-quantization
      continue;
    }
    const int8_t* l = c.latent_i8(slot);
    if (c.scale_mode() == KvScale::channel) {
      const float* s = c.channel_scales();
      for (int d = 0; d < kLatentDim; ++d) out[d] = float(l[d]) * s[d];
    } else {
      const float s = c.scale_mode() == KvScale::token ? c.token_scale(slot) : c.tensor_scale();
      for (int d = 0; d < kLatentDim; ++d) out[d] = float(l[d]) * s;
    }
    const uint16_t* r = c.rope_bf16(slot);
    for (int d = 0; d < kRopeDim; ++d)
      out[kLatentDim + d] = std::bit_cast<float>(uint32_t(r[d]) << 16);
  }
}

// Softmax of rows [begin, end) of s ([rows, sl], scores already scaled) in place, normalized, the
// masked tail zeroed; lse[r] = max + log(sum). Row r = i * H + h sees keys 0 .. sl - ql + i
// (causal) or all sl. 16 independent lanes for the max and the sum, so both vectorize.
MLA_BASELINE_CLONES
void softmax_rows(float* s, int sl, int64_t begin, int64_t end, int H, int ql, bool causal,
                  float* lse) {
  constexpr int L = 16;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int64_t r = begin; r < end; ++r) {
    const int i = int(r / H);
    const int n = causal ? sl - ql + i + 1 : sl;
    float* x = s + r * sl;
    float mx[L];
    std::fill(mx, mx + L, neg_inf);
    int t = 0;
    for (; t + L <= n; t += L)
      for (int j = 0; j < L; ++j) mx[j] = std::max(mx[j], x[t + j]);
    for (; t < n; ++t) mx[0] = std::max(mx[0], x[t]);
    const float m = *std::max_element(mx, mx + L);
    float acc[L] = {};
    t = 0;
    for (; t + L <= n; t += L)
      for (int j = 0; j < L; ++j) {
        x[t + j] = exp_nonpositive(x[t + j] - m);
        acc[j] += x[t + j];
      }
    for (; t < n; ++t) {
      x[t] = exp_nonpositive(x[t] - m);
      acc[0] += x[t];
    }
    float l = 0;
    for (float a : acc) l += a;
    const float inv = 1.f / l;
    for (t = 0; t < n; ++t) x[t] *= inv;
    std::fill(x + n, x + sl, 0.f);
    lse[r] = m + std::log(l);
  }
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
  const int H = p.num_heads;
  const float neg_inf = -std::numeric_limits<float>::infinity();
  for (int b = 0; b < p.batch; ++b) {
    const int sl = p.seq_lens[b];
    const int ql = sl == 0 ? 0 : q_len_of(p, b);
    const int64_t row0 = int64_t(b) * p.q_len * H;
    // Padding rows: query tokens past q_lens[b], or all of an empty sequence.
    std::fill(o + (row0 + int64_t(ql) * H) * kLatentDim,
              o + (row0 + int64_t(p.q_len) * H) * kLatentDim, 0.f);
    std::fill(lse + row0 + int64_t(ql) * H, lse + row0 + int64_t(p.q_len) * H, neg_inf);
    if (ql == 0) continue;

    const int M = ql * H;
    if (k_.size() < size_t(sl) * kQkDim) k_.resize(size_t(sl) * kQkDim);
    if (s_.size() < size_t(M) * sl) s_.resize(size_t(M) * sl);
    const int32_t* table = p.block_table + int64_t(b) * p.max_blocks_per_seq;
    parallel_for(sl, threads_, [&](int64_t begin, int64_t end) {
      dequantize_tokens(cache, table, begin, end, k_.data());
    });

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, sl, kQkDim, p.softmax_scale,
                q + row0 * kQkDim, kQkDim, k_.data(), kQkDim, 0.f, s_.data(), sl);

    // P is normalized in place, so O = P V needs no pass of its own.
    parallel_for(M, threads_, [&](int64_t begin, int64_t end) {
      softmax_rows(s_.data(), sl, begin, end, H, ql, p.causal, lse + row0);
    });

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, kLatentDim, sl, 1.f, s_.data(), sl,
                k_.data(), kQkDim, 0.f, o + row0 * kLatentDim, kLatentDim);
  }
}

}  // namespace mla::bench
