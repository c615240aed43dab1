// The split-KV combine (DESIGN §5): merges the partial (o_i, lse_i) of every (sequence, head group)
// that the planner split across workers into the final o / lse, by log-sum-exp (the algebra is
// softmax_state.h's combine). Separate from the kernels, which only write partials, and from the
// planner, which only says which partials exist. Two strategies (the seed's "reduction strategy"):
//
//   separate pass   after every worker has finished, combine_all() merges every group, its rows
//                   spread across the pool's threads;
//   last worker     each worker calls finish_partial() after writing a partial; the one that writes
//                   the last partial of a group merges that group at once, while the other workers
//                   still compute (MergeCounters decides who is last).
//
// The partial buffers are laid out as mla::PartialLayout (plan.h) says.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "mla/attention.h"
#include "mla/plan.h"

namespace mla::cpu {

class ThreadPool;

using mla::PartialLayout;
using mla::layout_partials;

struct CombineParams {
  int q_len = 1;      // rows per sequence in o / lse
  int num_heads = 0;  // H
  int dv = 512;       // kv_lora_rank
  const PartialLayout* layout = nullptr;
  const float* partial_o = nullptr;    // [layout->total_rows][dv]
  const float* partial_lse = nullptr;  // [layout->total_rows]
  float* o = nullptr;                  // [batch, q_len, num_heads, dv] by o_strides
  float* lse = nullptr;                // [batch, q_len, num_heads] by lse_strides
  OutputStrides o_strides, lse_strides;  // all zero: dense
};

// Merges rows [row_begin, row_end) of merge group `group` of the plan.
void combine_rows(const Plan& plan, int group, const CombineParams& c, int row_begin, int row_end);
// Merges every row of merge group `group`.
void combine_group(const Plan& plan, int group, const CombineParams& c);

// The separate pass: merges every group of the plan, its rows split evenly (by rows x partials, so
// one long group is shared too) over `threads` workers of `pool` (nullptr or threads <= 1: on the
// calling thread). Returns at once when nothing was split.
void combine_all(const Plan& plan, const CombineParams& c, ThreadPool* pool, int threads);

// One arrival counter per merge group, for the last-worker strategy.
class MergeCounters {
 public:
  explicit MergeCounters(std::size_t num_groups = 0) { reset(num_groups); }
  // Counters in memory the caller owns (a decode workspace): num_groups int32, set to 0 here.
  MergeCounters(int32_t* storage, std::size_t num_groups);
  // Sets every counter to 0 (growing owned storage as needed). Not concurrently with arrive().
  void reset(std::size_t num_groups);
  std::size_t size() const { return size_; }
  // Call once per partial of `group`, after that partial is completely written. Returns true for
  // exactly one caller, the last of the group's num_partials, which must then merge the group. The
  // increment is acq_rel: it publishes the caller's partial (release), and the last caller's
  // acquire sees every earlier one's, since all increments are read-modify-writes of one counter
  // (a release sequence). The last caller also sets the counter back to 0, so the counters serve
  // the next run (a pool run's end orders that store before any later arrival).
  bool arrive(int group, int num_partials) {
    std::atomic_ref<int32_t> c(count_[group]);
    const int prev = c.fetch_add(1, std::memory_order_acq_rel);
    if (prev != num_partials - 1) return false;
    c.store(0, std::memory_order_relaxed);
    return true;
  }

 private:
  std::unique_ptr<int32_t[]> owned_;
  int32_t* count_ = nullptr;
  std::size_t size_ = 0, capacity_ = 0;
};

// The last-worker strategy, after the worker has written plan item `item`'s partial: nothing for an
// item without partial; merges the item's group if this was its last partial. Returns whether it
// merged.
bool finish_partial(const Plan& plan, int item, MergeCounters& counters, const CombineParams& c);

}  // namespace mla::cpu
