// The fast decode driver: converts the query to the kernel's type, plans the work (a pure
// function of the lengths, heads and workers), runs the kernel on each worker's items, and merges
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
#include "cpu/combine.h"
#include "cpu/thread_pool.h"
#include "mla/plan.h"
#include "mla/status.h"

namespace mla {

namespace {

using cpu::KernelArgs;
using cpu::KernelInfo;

// Rows no kernel writes: padding rows (i >= q_len_b) and every row of a seq_len 0 entry.
void write_padding_rows(const DecodeParams& p, float* o, float* lse) {
  for (int b = 0; b < p.batch; ++b)
    for (int i = 0; i < p.q_len; ++i) {
      if (last_visible(p, b, i) >= 0) continue;
      const int64_t row0 = (int64_t(b) * p.q_len + i) * p.num_heads;
      std::fill(o + row0 * kLatentDim, o + (row0 + p.num_heads) * kLatentDim, 0.f);
      std::fill(lse + row0, lse + row0 + p.num_heads, -std::numeric_limits<float>::infinity());
    }
}

}  // namespace

void decode_fast(const DecodeParams& p, DType q_dtype, const void* q, const PagedLatentCache& cache,
                 const DecodeOptions& opt, float* o, float* lse) {
  MLA_CHECK(opt.chunk >= 1 && opt.chunk <= kMaxChunk,
            "chunk = " << opt.chunk << " is outside 1.." << kMaxChunk);
  MLA_CHECK(opt.threads >= 0 && opt.threads <= kMaxThreads,
            "threads = " << opt.threads << " is outside 0.." << kMaxThreads << " (0: all cores)");
  const KernelInfo& kernel = cpu::select_kernel(cache.dtype(), opt.isa, opt.kernel);
  const int64_t nq = int64_t(p.batch) * p.q_len * p.num_heads * kQkDim;

  // The query in the kernel's type (bf16 bits, or f16 for an fp16 cache).
  const DType kt = kernel_q_dtype(cache.dtype(), q_dtype);
  std::vector<uint16_t> qconv;
  const uint16_t* qk = static_cast<const uint16_t*>(q);
  if (q_dtype != kt) {
    qconv.resize(nq);
    for (int64_t i = 0; i < nq; ++i) {
      const float v = load_f32(q_dtype, q, i);
      qconv[i] = kt == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
    }
    qk = qconv.data();
  }

  // Large finite inputs are computed like the reference or refused, never turned into Inf/NaN:
  // the kernels' fp32 scores are bounded by 576 max|q| max|kv| |scale| log2(e), their sums of
  // p v (p <= 2^8 between rescales, int8) by 2^8 seq_len max|kv|; both must stay below 2^126.
  {
    float qmax = 0.f;
    for (int64_t i = 0; i < nq; ++i) {
      const float v = std::fabs(kt == DType::f16 ? f16_to_f32(qk[i]) : bf16_to_f32(qk[i]));
      if (v > qmax && v <= std::numeric_limits<float>::max()) qmax = v;  // NaN/Inf: the rule
    }
    int max_len = 0;
    for (int b = 0; b < p.batch; ++b) max_len = std::max(max_len, p.seq_lens[b]);
    const double kmax = cache.max_abs(), limit = std::ldexp(1.0, 126);
    const double score = double(kQkDim) * qmax * kmax * std::max(1.0, std::fabs(double(p.softmax_scale)) * 1.4426950408889634);
    MLA_CHECK(score < limit && 256.0 * max_len * kmax < limit,
              "inputs too large for the fp32 kernels: max|q| = " << qmax << ", max|kv| = " << kmax
                  << ", softmax_scale = " << p.softmax_scale << " (scores up to " << score
                  << ") would overflow; scale them down");
  }
  const int workers = opt.threads > 0 ? opt.threads : cpu::ThreadPool::available_cpus();
  const Plan plan = make_plan(PlanInput{.batch = p.batch, .seq_lens = p.seq_lens, .q_lens = p.q_lens,
                                        .q_len = p.q_len, .num_heads = p.num_heads,
                                        .num_workers = workers, .kv_tile = kKvTile});
  const cpu::PartialLayout layout = cpu::layout_partials(plan, p.q_lens, p.q_len);
  std::vector<float> part_o(layout.total_rows * kLatentDim), part_lse(layout.total_rows);
  cpu::MergeCounters counters(plan.merges.size());
  const cpu::CombineParams cp{.q_len = p.q_len, .num_heads = p.num_heads, .dv = kLatentDim,
                              .layout = &layout, .partial_o = part_o.data(),
                              .partial_lse = part_lse.data(), .o = o, .lse = lse};

  write_padding_rows(p, o, lse);

  cpu::ThreadPool& pool = cpu::thread_pool(workers);
  pool.run(plan.num_workers, [&](int w) {
    thread_local cpu::Scratch scratch;
    for (int32_t it = plan.worker_offsets[w]; it < plan.worker_offsets[w + 1]; ++it) {
      const WorkItem& item = plan.items[it];
      const int nh = item.head_end - item.head_begin;
      KernelArgs a{.p = &p, .cache = &cache, .q = qk, .seq = item.seq,
                   .head_begin = item.head_begin, .head_end = item.head_end,
                   .kv_begin = item.kv_begin, .kv_end = item.kv_end, .chunk = opt.chunk,
                   .up = opt.up};
      const int gi = plan.item_merge[it];
      if (gi < 0) {
        const int64_t row0 = int64_t(item.seq) * p.q_len * p.num_heads + item.head_begin;
        a.o = o + row0 * kLatentDim;
        a.o_stride_i = int64_t(p.num_heads) * kLatentDim;
        a.o_stride_h = kLatentDim;
        a.lse = lse + row0;
        a.lse_stride_i = p.num_heads;
        a.lse_stride_h = 1;
      } else {
        const int64_t row0 = layout.row(gi, item.partial - plan.merges[gi].partial_begin, 0);
        a.o = part_o.data() + row0 * kLatentDim;
        a.o_stride_i = int64_t(nh) * kLatentDim;
        a.o_stride_h = kLatentDim;
        a.lse = part_lse.data() + row0;
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
}

}  // namespace mla
