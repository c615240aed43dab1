// The split-KV combine (combine.h): per-row log-sum-exp merge of partial slots, the separate pass
// over the thread pool, and the last-worker hand-off.
#include "cpu/combine.h"

#include <algorithm>
#include <vector>

#include "cpu/softmax_state.h"
#include "cpu/thread_pool.h"
#include "mla/status.h"

namespace mla::cpu {
namespace {

int rows_of(const MergeGroup& g, const CombineParams& c) {
  const int q = c.q_lens ? c.q_lens[g.seq] : c.q_len;
  return q * (g.head_end - g.head_begin);
}

}  // namespace

int max_group_heads(const Plan& plan) {
  int heads = 0;
  for (const MergeGroup& g : plan.merges) heads = std::max(heads, g.head_end - g.head_begin);
  return heads;
}

void combine_rows(const MergeGroup& g, const CombineParams& c, int row_begin, int row_end) {
  const int heads = g.head_end - g.head_begin;
  // Between consecutive partials of one row: one slot apart.
  const std::ptrdiff_t lse_stride = static_cast<std::ptrdiff_t>(c.q_len) * c.slot_heads;
  const std::ptrdiff_t o_stride = lse_stride * c.dv;
  for (int r = row_begin; r < row_end; ++r) {
    const int i = r / heads, h = r % heads;
    const std::size_t out = (static_cast<std::size_t>(g.seq) * c.q_len + i) * c.num_heads + g.head_begin + h;
    c.lse[out] = combine(g.num_partials, c.partial_lse + partial_lse_offset(c, g.partial_begin, i, h),
                         lse_stride, c.partial_o + partial_o_offset(c, g.partial_begin, i, h), o_stride,
                         c.dv, c.o + out * c.dv);
  }
}

void combine_group(const MergeGroup& g, const CombineParams& c) { combine_rows(g, c, 0, rows_of(g, c)); }

void combine_all(const Plan& plan, const CombineParams& c, ThreadPool* pool, int threads) {
  if (plan.merges.empty()) return;
  MLA_CHECK(c.slot_heads >= max_group_heads(plan),
            "combine: slot_heads = " << c.slot_heads << " is less than a merge group's "
                                     << max_group_heads(plan) << " heads");
  if (!pool || threads <= 1) {
    for (const MergeGroup& g : plan.merges) combine_group(g, c);
    return;
  }
  // Work of a row: one dv-wide pass per partial. Thread t takes the rows whose start falls in
  // [t * total / threads, (t + 1) * total / threads) of the groups' rows laid end to end.
  std::vector<int64_t> start(plan.merges.size() + 1, 0);
  for (size_t k = 0; k < plan.merges.size(); ++k)
    start[k + 1] = start[k] + static_cast<int64_t>(rows_of(plan.merges[k], c)) * plan.merges[k].num_partials;
  const int64_t total = start.back();
  pool->run(threads, [&](int t) {
    const int64_t lo = total * t / threads, hi = total * (t + 1) / threads;
    for (size_t k = 0; k < plan.merges.size(); ++k) {
      if (start[k + 1] <= lo || start[k] >= hi) continue;
      const MergeGroup& g = plan.merges[k];
      const int64_t np = g.num_partials;
      auto row_at = [&](int64_t x) {  // first row whose start is >= x
        return static_cast<int>(std::clamp<int64_t>((x - start[k] + np - 1) / np, 0, rows_of(g, c)));
      };
      combine_rows(g, c, row_at(std::max(lo, start[k])), row_at(std::min(hi, start[k + 1])));
    }
  });
}

void MergeCounters::reset(std::size_t num_groups) {
  if (num_groups > size_ || !count_) {
    count_ = std::make_unique<std::atomic<int32_t>[]>(std::max<std::size_t>(num_groups, 1));
  }
  size_ = num_groups;
  for (std::size_t k = 0; k < size_; ++k) count_[k].store(0, std::memory_order_relaxed);
}

bool finish_partial(const Plan& plan, int item, MergeCounters& counters, const CombineParams& c) {
  const int group = plan.item_merge[item];
  if (group < 0) return false;
  const MergeGroup& g = plan.merges[group];
  if (!counters.arrive(group, g.num_partials)) return false;
  combine_group(g, c);
  return true;
}

}  // namespace mla::cpu
