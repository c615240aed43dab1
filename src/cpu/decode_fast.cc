// The fast decode driver: converts the query to the kernel's type, runs the kernel on each
// worker's items of the decode plan (made by the caller, or by decode() per call), and merges
// split-KV partials, either in a separate pass after all workers or by the last worker to finish
// a merge group (DESIGN §5).
#include "cpu/decode_fast.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cpu/attention/kernel.h"
#include "core/stages.h"
#include "cpu/combine.h"
#include "cpu/thread_pool.h"
#include "mla/plan.h"
#include "mla/status.h"

namespace mla {

namespace {

using cpu::KernelArgs;
using cpu::KernelInfo;

// Rows no kernel writes: padding rows (i >= q_len_b) and every row of a seq_len 0 entry.
void write_padding_rows(const DecodeParams& p, const OutputStrides& os, const OutputStrides& ls,
                        float* o, float* lse) {
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.q_len; ++i) {
      if (last_visible(p, b, i) >= 0) continue;
      for (int h = 0; h < p.num_heads; ++h) {
        float* orow = o + b * os.b + i * os.i + h * os.h;
        std::fill(orow, orow + kLatentDim, 0.f);
        lse[b * ls.b + i * ls.i + h * ls.h] = -std::numeric_limits<float>::infinity();
      }
    }
}

}  // namespace

void decode_fast(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
                 const DecodeOptions& opt, const DecodePlan& dplan, void* workspace, float* o,
                 float* lse) {
  const KernelInfo& kernel = cpu::select_kernel(cache.dtype(), opt.isa, opt.kernel, cache.scale_mode());
  const int64_t nq = int64_t(p.batch) * p.q_len * p.num_heads * kQkDim;
  const Plan& plan = dplan.work();
  const PartialLayout& layout = dplan.partials();
  const WorkspaceLayout wl = workspace_layout(layout, plan.merges.size(), nq);
  unsigned char* ws = static_cast<unsigned char*>(workspace);

  // The query in the kernel's type (bf16 bits, or f16 for an fp16 cache).
  const DType kt = kernel_q_dtype(cache.dtype(), q_dtype);
  const uint16_t* qk = static_cast<const uint16_t*>(q);
  if (q_dtype != kt) {
    uint16_t* qconv = reinterpret_cast<uint16_t*>(ws + wl.query);
    for (int64_t i = 0; i < nq; ++i) {
      const float v = load_f32(q_dtype, q, i);
      qconv[i] = kt == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
    }
    qk = qconv;
  }

  // Large finite inputs are computed like the reference or refused, never turned into Inf/NaN:
  // the kernels' fp32 scores are bounded by 576 max|q| max|kv| |scale| log2(e), their sums of
  // p v (p <= 2^8 between rescales, int8) by 2^8 seq_len max|kv|; both must stay below 2^126.
  {
    // max|q| over the finite values (NaN/Inf follow the rule instead) on the bits: without the
    // sign, bf16 and f16 bits order like magnitudes, and exponent all ones (>= inf) is not
    // finite. An int16 max the compiler vectorizes: a float loop cost 8-12 us per call at 16
    // heads (9216 values), a tenth of a 512-token decode.
    const int16_t inf_bits = kt == DType::f16 ? 0x7c00 : 0x7f80;
    int16_t qmax_bits = 0;
    for (int64_t i = 0; i < nq; ++i) {
      const int16_t a = int16_t(qk[i] & 0x7fff);
      qmax_bits = std::max(qmax_bits, a < inf_bits ? a : int16_t(0));
    }
    const float qmax = kt == DType::f16 ? f16_to_f32(uint16_t(qmax_bits)) : bf16_to_f32(uint16_t(qmax_bits));
    int max_len = 0;
    for (int b = 0; b < p.batch; ++b) max_len = std::max(max_len, p.seq_lens[b]);
    // max|kv|: tracked by the cache that owns the memory; for a view over caller memory, the
    // format's own bound where it has one (fp16, static int8 scales). A bf16 or token-scaled
    // int8 view over caller memory has none short of reading the whole cache (as much memory
    // traffic as the decode itself), so only the query side is bounded there.
    double kmax = cache.max_abs;
    if (kmax < 0) {
      if (cache.dtype() == KvDType::fp16) kmax = 65504.0;
      else if (cache.dtype() == KvDType::int8 && cache.scale_mode() == KvScale::tensor)
        kmax = 127.0 * cache.tensor_scale();
      else if (cache.dtype() == KvDType::int8 && cache.scale_mode() == KvScale::channel)
        for (int c = 0; c < kLatentDim; ++c) kmax = std::max(kmax, 127.0 * cache.channel_scales()[c]);
    }
    kmax = std::max(kmax, 0.0);
    const double limit = std::ldexp(1.0, 126);
    const double score = double(kQkDim) * qmax * kmax * std::max(1.0, std::fabs(double(p.softmax_scale)) * 1.4426950408889634);
    MLA_CHECK(score < limit && 256.0 * max_len * kmax < limit,
              "inputs too large for the fp32 kernels: max|q| = " << qmax << ", max|kv| = " << kmax
                  << ", softmax_scale = " << p.softmax_scale << " (scores up to " << score
                  << ") would overflow; scale them down");
  }
  float* part_o = reinterpret_cast<float*>(ws + wl.partial_o);
  float* part_lse = reinterpret_cast<float*>(ws + wl.partial_lse);
  cpu::MergeCounters counters(reinterpret_cast<int32_t*>(ws + wl.counters), plan.merges.size());
  const OutputStrides os = resolved(p.o_strides, p.q_len, p.num_heads, kLatentDim);
  const OutputStrides ls = resolved(p.lse_strides, p.q_len, p.num_heads, 1);
  const cpu::CombineParams cp{.q_len = p.q_len, .num_heads = p.num_heads, .dv = kLatentDim,
                              .layout = &layout, .partial_o = part_o,
                              .partial_lse = part_lse, .o = o, .lse = lse, .o_strides = os,
                              .lse_strides = ls};

  write_padding_rows(p, os, ls, o, lse);

  // Stage timers: one recorder per worker, only when asked for (allocates then).
  std::vector<StageRecorder> recorders(opt.stage_times ? plan.num_workers : 0);

  cpu::ThreadPool& pool = cpu::thread_pool(plan.num_workers);
  pool.run(plan.num_workers, [&](int w) {
    thread_local cpu::Scratch scratch;
    for (int32_t it = plan.worker_offsets[w]; it < plan.worker_offsets[w + 1]; ++it) {
      const WorkItem& item = plan.items[it];
      const int nh = item.head_end - item.head_begin;
      KernelArgs a{.p = &p, .cache = &cache, .q = qk, .seq = item.seq,
                   .head_begin = item.head_begin, .head_end = item.head_end,
                   .kv_begin = item.kv_begin, .kv_end = item.kv_end, .chunk = opt.chunk,
                   .up = opt.up, .stages = opt.stage_times ? &recorders[w] : nullptr};
      const int gi = plan.item_merge[it];
      if (gi < 0) {
        a.o = o + item.seq * os.b + item.head_begin * os.h;
        a.o_stride_i = os.i;
        a.o_stride_h = os.h;
        a.lse = lse + item.seq * ls.b + item.head_begin * ls.h;
        a.lse_stride_i = ls.i;
        a.lse_stride_h = ls.h;
      } else {
        const int64_t row0 = layout.row(gi, item.partial - plan.merges[gi].partial_begin, 0);
        a.o = part_o + row0 * kLatentDim;
        a.o_stride_i = int64_t(nh) * kLatentDim;
        a.o_stride_h = kLatentDim;
        a.lse = part_lse + row0;
        a.lse_stride_i = nh;
        a.lse_stride_h = 1;
      }
      kernel.run(a, scratch);
      // The last worker to finish a partial of a group merges it.
      if (opt.reduction == Reduction::last) cpu::finish_partial(plan, it, counters, cp);
    }
  });

  if (opt.reduction == Reduction::separate)  // a separate pass after all workers
    cpu::combine_all(plan, cp, &pool, plan.num_workers);

  for (const StageRecorder& r : recorders)
    for (int k = 0; k < kNumStages; ++k) {
      opt.stage_times->seconds[k] += double(r.ns(Stage(k))) * 1e-9;
      opt.stage_times->steps[k] += r.count(Stage(k));
    }
}

}  // namespace mla
