// The split-KV combine (combine.h): per-row log-sum-exp merge of a group's partials, the separate
// pass over the thread pool, and the last-worker hand-off.
#include "cpu/combine.h"

#include <algorithm>

#include "cpu/attention/softmax_state.h"
#include "cpu/thread_pool.h"
#include "mla/status.h"

namespace mla::cpu {

void combine_rows(const Plan& plan, int group, const CombineParams& c, int row_begin, int row_end) {
  const MergeGroup& g = plan.merges[group];
  const int heads = g.head_end - g.head_begin;
  const std::ptrdiff_t stride = c.layout->rows[group];  // between consecutive partials of a row
  const OutputStrides os = resolved(c.o_strides, c.q_len, c.num_heads, c.dv);
  const OutputStrides ls = resolved(c.lse_strides, c.q_len, c.num_heads, 1);
  for (int r = row_begin; r < row_end; ++r) {
    const int i = r / heads, h = g.head_begin + r % heads;
    const int64_t first = c.layout->row(group, 0, r);
    c.lse[g.seq * ls.b + i * ls.i + h * ls.h] =
        combine(g.num_partials, c.partial_lse + first, stride, c.partial_o + first * c.dv,
                stride * c.dv, c.dv, c.o + g.seq * os.b + i * os.i + h * os.h);
  }
}

void combine_group(const Plan& plan, int group, const CombineParams& c) {
  combine_rows(plan, group, c, 0, c.layout->rows[group]);
}

void combine_all(const Plan& plan, const CombineParams& c, ThreadPool* pool, int threads) {
  const int groups = static_cast<int>(plan.merges.size());
  if (groups == 0) return;
  MLA_CHECK(c.layout && static_cast<int>(c.layout->rows.size()) == groups,
            "combine: the partial layout has " << (c.layout ? c.layout->rows.size() : 0)
                                               << " groups, the plan " << groups);
  if (!pool || threads <= 1) {
    for (int k = 0; k < groups; ++k) combine_group(plan, k, c);
    return;
  }
  // Work of a row: one dv-wide pass per partial. Thread t takes the rows whose start falls in
  // [t * total / threads, (t + 1) * total / threads) of all groups' rows laid end to end.
  std::vector<int64_t> start(groups + 1, 0);
  for (int k = 0; k < groups; ++k)
    start[k + 1] = start[k] + static_cast<int64_t>(c.layout->rows[k]) * plan.merges[k].num_partials;
  const int64_t total = start.back();
  pool->run(threads, [&](int t) {
    const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
    for (int k = 0; k < groups; ++k) {
      if (start[k + 1] <= lo || start[k] >= hi) continue;
      const int64_t np = plan.merges[k].num_partials;
      auto first_row_at = [&](int64_t x) {  // the first row of group k starting at or after x
        return static_cast<int>(
            std::clamp<int64_t>((x - start[k] + np - 1) / np, 0, c.layout->rows[k]));
      };
      combine_rows(plan, k, c, first_row_at(std::max(lo, start[k])),
                   first_row_at(std::min(hi, start[k + 1])));
    }
  });
}

MergeCounters::MergeCounters(int32_t* storage, std::size_t num_groups)
    : count_(storage), size_(num_groups), capacity_(num_groups) {
  for (std::size_t k = 0; k < size_; ++k)
    std::atomic_ref<int32_t>(count_[k]).store(0, std::memory_order_relaxed);
}

void MergeCounters::reset(std::size_t num_groups) {
  if (num_groups > capacity_ || !count_) {
    MLA_CHECK(!count_ || owned_, "merge counters in caller memory cannot grow to " << num_groups);
    capacity_ = std::max<std::size_t>(num_groups, 1);
    owned_ = std::make_unique<int32_t[]>(capacity_);
    count_ = owned_.get();
  }
  size_ = num_groups;
  for (std::size_t k = 0; k < size_; ++k)
    std::atomic_ref<int32_t>(count_[k]).store(0, std::memory_order_relaxed);
}

bool finish_partial(const Plan& plan, int item, MergeCounters& counters, const CombineParams& c) {
  const int group = plan.item_merge[item];
  if (group < 0) return false;
  if (!counters.arrive(group, plan.merges[group].num_partials)) return false;
  combine_group(plan, group, c);
  return true;
}

}  // namespace mla::cpu
