// The decode operator's entry point: validation, query conversion to the working type, and the
// choice between the float64 reference and the fast CPU kernels.
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/attention/quantize.h"
#include "cpu/decode_fast.h"
#include "cpu/linear/hadamard.h"
#include "mla/attention.h"
#include "mla/status.h"
#include "ref/reference.h"

namespace mla {

void kernel_query_values(const CacheView& cache, int64_t rows, const float* q, float* out) {
  std::copy(q, q + rows * kQkDim, out);
  const KvRotation rot = cache.rotation;
  if (rot != KvRotation::none) {  // decode() rotates, then rounds to the kernel's type once
    rotate_latent(rot, out, rows, kQkDim);
    const bool f16 = kernel_q_dtype(cache.dtype(), DType::f32) == DType::f16;
    for (int64_t i = 0; i < rows * kQkDim; ++i)
      out[i] = f16 ? f16_to_f32(f32_to_f16(out[i])) : bf16_to_f32(f32_to_bf16(out[i]));
  }
  if (cache.dtype() == KvDType::int8) {
    const float* cs = cache.scale_mode() == KvScale::channel ? cache.channel_scales() : nullptr;
    float scaled[kLatentDim];
    int8_t q8[kLatentDim];
    for (int64_t r = 0; r < rows; ++r) {
      float* qr = out + r * kQkDim;
      for (int c = 0; c < kLatentDim; ++c) scaled[c] = cs ? qr[c] * cs[c] : qr[c];
      const float s = cpu::quantize_query_row(scaled, q8);
      for (int c = 0; c < kLatentDim; ++c)
        qr[c] = cs ? float(q8[c]) * s / cs[c] : float(q8[c]) * s;
    }
  }
  unrotate_latent(rot, out, rows, kQkDim);
}

float default_softmax_scale() { return float(1.0 / std::sqrt(192.0)); }

namespace {

void check_call(const DecodeParams& p, DType q_dtype, const CacheView& cache,
                const DecodeOptions& opt) {
  validate(p, cache);
  check_view(cache);
  MLA_CHECK(q_dtype == DType::f32 || q_dtype == DType::bf16 || q_dtype == DType::f16,
            "query dtype " << dtype_name(q_dtype) << " is not supported (fp32, bf16 or fp16)");
  MLA_CHECK(opt.chunk >= 1 && opt.chunk <= kMaxChunk,
            "chunk = " << opt.chunk << " is outside 1.." << kMaxChunk);
  MLA_CHECK(opt.threads >= 0 && opt.threads <= kMaxThreads,
            "threads = " << opt.threads << " is outside 0.." << kMaxThreads << " (0: all cores)");
}

// With a rotated cache and q, o in the rotated space (opt.qo_rotated), the reference un-rotates q
// and rotates its o, in float64: the cache reads back in the original space (CacheView::read).
void decode_ref(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
                const DecodeOptions& opt, float* o, float* lse) {
  const int64_t rows = int64_t(p.batch) * p.q_len * p.num_heads;
  const KvRotation rot = opt.qo_rotated ? cache.rotation : KvRotation::none;
  std::vector<double> qd(rows * kQkDim);
  for (int64_t i = 0; i < rows * kQkDim; ++i) qd[i] = load_f32(q_dtype, q, i);
  unrotate_latent(rot, qd.data(), rows, kQkDim);
  std::vector<float> qf(qd.begin(), qd.end());
  std::vector<double> od(rows * kLatentDim), ld(rows);
  ref::decode(p, qf.data(), cache, od.data(), ld.data());
  rotate_latent(rot, od.data(), rows, kLatentDim);
  const OutputStrides os = resolved(p.o_strides, p.q_len, p.num_heads, kLatentDim);
  const OutputStrides ls = resolved(p.lse_strides, p.q_len, p.num_heads, 1);
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.q_len; ++i)
      for (int h = 0; h < p.num_heads; ++h) {
        const int64_t r = (int64_t(b) * p.q_len + i) * p.num_heads + h;
        float* orow = o + b * os.b + i * os.i + h * os.h;
        for (int d = 0; d < kLatentDim; ++d) orow[d] = float(od[r * kLatentDim + d]);
        lse[b * ls.b + i * ls.i + h * ls.h] = float(ld[r]);
      }
}

// The fast path. With a rotated cache and q, o in the original space: q's latent parts are
// rotated (in fp32, then rounded once to the kernel's type) before the kernels, and o's rows
// un-rotated after them. Buffers per thread, grown once: no allocation per call after the first.
void decode_fast_rotated(const DecodeParams& p, DType q_dtype, const void* q,
                         const CacheView& cache, const DecodeOptions& opt, const DecodePlan& plan,
                         void* workspace, float* o, float* lse) {
  const KvRotation rot = cache.rotation;
  if (rot == KvRotation::none || opt.qo_rotated)
    return decode_fast(p, q_dtype, q, cache, opt, plan, workspace, o, lse);
  const int64_t rows = int64_t(p.batch) * p.q_len * p.num_heads, n = rows * kQkDim;
  const DType kt = kernel_q_dtype(cache.dtype(), q_dtype);
  thread_local AlignedVec<uint16_t> qk;
  if (int64_t(qk.size()) < n) qk.resize(n);
  cpu::rotate_query(rot, q_dtype, q, rows, kt, qk.data(), plan.workers());
  decode_fast(p, kt, qk.data(), cache, opt, plan, workspace, o, lse);
  const OutputStrides os = resolved(p.o_strides, p.q_len, p.num_heads, kLatentDim);
  cpu::hadamard_rows(rot, true,
                     {.base = o, .n0 = p.batch, .n1 = p.q_len, .n2 = p.num_heads, .s0 = os.b,
                      .s1 = os.i, .s2 = os.h},
                     plan.workers());
}

}  // namespace

void decode(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
            const DecodeOptions& opt, const DecodePlan& plan, float* o, float* lse,
            void* workspace) {
  check_call(p, q_dtype, cache, opt);
  plan.check_matches(p);
  MLA_CHECK(opt.threads == 0 || opt.threads == plan.workers(),
            "threads = " << opt.threads << " differs from the decode plan's " << plan.workers()
                         << " workers");
  if (opt.impl == Impl::ref) return decode_ref(p, q_dtype, q, cache, opt, o, lse);
  decode_fast_rotated(p, q_dtype, q, cache, opt, plan,
                      workspace ? workspace : plan.owned_workspace(), o, lse);
}

void decode(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
            const DecodeOptions& opt, float* o, float* lse) {
  check_call(p, q_dtype, cache, opt);
  if (opt.impl == Impl::ref) return decode_ref(p, q_dtype, q, cache, opt, o, lse);
  const DecodePlan plan = make_decode_plan({.batch = p.batch, .q_len = p.q_len,
                                            .num_heads = p.num_heads, .seq_lens = p.seq_lens,
                                            .q_lens = p.q_lens, .workers = opt.threads,
                                            .kv_tile = kKvTile});
  decode_fast_rotated(p, q_dtype, q, cache, opt, plan, plan.owned_workspace(), o, lse);
}

}  // namespace mla
