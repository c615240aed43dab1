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
#include "cpu/softmax_state.h"
#include "cpu/thread_pool.h"
#include "mla/plan.h"
#include "mla/status.h"

namespace mla {

namespace {

using cpu::KernelArgs;
using cpu::KernelInfo;

// Partial results of one merge group: `num_partials` slices of rows x 512 (o) and rows (lse),
// rows = q_len_b x heads of the group, row r = i * nh + hh as in the kernels.
struct PartialLayout {
  std::vector<int64_t> o_off, lse_off;  // per merge group
  int64_t o_size = 0, lse_size = 0;
};

PartialLayout layout_partials(const Plan& plan, const DecodeParams& p) {
  PartialLayout l;
  for (const MergeGroup& g : plan.merges) {
    const int64_t rows = int64_t(q_len_of(p, g.seq)) * (g.head_end - g.head_begin);
    l.o_off.push_back(l.o_size);
    l.lse_off.push_back(l.lse_size);
    l.o_size += rows * kLatentDim * g.num_partials;
    l.lse_size += rows * g.num_partials;
  }
  return l;
}

void combine_group(const DecodeParams& p, const MergeGroup& g, const PartialLayout& l, int gi,
                   const float* po, const float* pl, float* o, float* lse) {
  const int nh = g.head_end - g.head_begin;
  const int64_t rows = int64_t(q_len_of(p, g.seq)) * nh;
  for (int64_t r = 0; r < rows; ++r) {
    const int i = int(r / nh), h = g.head_begin + int(r % nh);
    const int64_t row = (int64_t(g.seq) * p.q_len + i) * p.num_heads + h;
    lse[row] = cpu::combine(g.num_partials, pl + l.lse_off[gi] + r, rows,
                            po + l.o_off[gi] + r * kLatentDim, rows * kLatentDim, kLatentDim,
                            o + row * kLatentDim);
  }
}

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
  MLA_CHECK(opt.chunk >= 1, "chunk = " << opt.chunk << " must be at least 1");
  MLA_CHECK(opt.threads >= 0, "threads = " << opt.threads << " is negative");
  const KernelInfo& kernel = cpu::select_kernel(cache.dtype(), opt.isa, opt.kernel);
  const int64_t nq = int64_t(p.batch) * p.q_len * p.num_heads * kQkDim;

  // The query in the kernel's type (bf16 bits, or f16 for an fp16 cache).
  const DType kt = kernel_q_dtype(cache.dtype(), q_dtype);
  std::vector<uint16_t> qconv;
  const uint16_t* qk = static_cast<const uint16_t*>(q);
  if (q_dtype != kt) {
    qconv.resize(nq);
    for (int64_t i = 0; i < nq; ++i) {
      const float v = q_dtype == DType::f32   ? static_cast<const float*>(q)[i]
                      : q_dtype == DType::bf16 ? bf16_to_f32(static_cast<const uint16_t*>(q)[i])
                                               : f16_to_f32(static_cast<const uint16_t*>(q)[i]);
      qconv[i] = kt == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
    }
    qk = qconv.data();
  }

  const int workers = opt.threads > 0 ? opt.threads : cpu::ThreadPool::available_cpus();
  const Plan plan = make_plan(PlanInput{.batch = p.batch, .seq_lens = p.seq_lens, .q_lens = p.q_lens,
                                        .q_len = p.q_len, .num_heads = p.num_heads,
                                        .num_workers = workers, .kv_tile = kKvTile});
  const PartialLayout layout = layout_partials(plan, p);
  std::vector<float> part_o(layout.o_size), part_lse(layout.lse_size);
  std::unique_ptr<std::atomic<int>[]> done(new std::atomic<int>[plan.merges.size()]);
  for (size_t g = 0; g < plan.merges.size(); ++g) done[g].store(0, std::memory_order_relaxed);

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
        const MergeGroup& g = plan.merges[gi];
        const int64_t rows = int64_t(q_len_of(p, item.seq)) * nh;
        const int k = item.partial - g.partial_begin;
        a.o = part_o.data() + layout.o_off[gi] + k * rows * kLatentDim;
        a.o_stride_i = int64_t(nh) * kLatentDim;
        a.o_stride_h = kLatentDim;
        a.lse = part_lse.data() + layout.lse_off[gi] + k * rows;
        a.lse_stride_i = nh;
        a.lse_stride_h = 1;
      }
      kernel.run(a, scratch);
      // The last worker to finish a partial of a group merges it; acq_rel makes the other
      // workers' partial writes visible to it.
      if (gi >= 0 && opt.reduction == Reduction::last &&
          done[gi].fetch_add(1, std::memory_order_acq_rel) == plan.merges[gi].num_partials - 1)
        combine_group(p, plan.merges[gi], layout, gi, part_o.data(), part_lse.data(), o, lse);
    }
  });

  if (opt.reduction == Reduction::separate && !plan.merges.empty()) {
    // A separate pass over the merge groups, spread over the same workers.
    const int n = std::min<int>(plan.num_workers, int(plan.merges.size()));
    pool.run(n, [&](int w) {
      for (size_t g = w; g < plan.merges.size(); g += n)
        combine_group(p, plan.merges[g], layout, int(g), part_o.data(), part_lse.data(), o, lse);
    });
  }
}

}  // namespace mla
