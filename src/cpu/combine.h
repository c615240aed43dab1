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
// Partial buffers, one slot per partial, rows and heads local to the slot's head group:
//   partial_o   [num_partials][q_len][slot_heads][dv]   fp32, row i head h at slot[i][h - head_begin]
//   partial_lse [num_partials][q_len][slot_heads]       fp32
// Only rows i < q_lens[seq] of a slot are written by the kernel and read here.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "mla/plan.h"

namespace mla::cpu {

class ThreadPool;

struct CombineParams {
  int q_len = 1;                        // rows per sequence in o / lse and in each partial slot
  int num_heads = 0;                    // H
  int dv = 512;                         // kv_lora_rank
  const int32_t* q_lens = nullptr;      // [batch] rows per sequence, or nullptr: q_len each
  const float* partial_o = nullptr;     // [num_partials][q_len][slot_heads][dv]
  const float* partial_lse = nullptr;   // [num_partials][q_len][slot_heads]
  int slot_heads = 0;                   // >= every merge group's head count (max_group_heads)
  float* o = nullptr;                   // [batch, q_len, num_heads, dv]
  float* lse = nullptr;                 // [batch, q_len, num_heads]
};

// Offsets of row i, head h (h counted from the group's first head) of partial slot p.
inline std::size_t partial_lse_offset(const CombineParams& c, int p, int i, int h) {
  return (static_cast<std::size_t>(p) * c.q_len + i) * c.slot_heads + h;
}
inline std::size_t partial_o_offset(const CombineParams& c, int p, int i, int h) {
  return partial_lse_offset(c, p, i, h) * c.dv;
}

// Heads of the largest merge group of the plan: the slot_heads that suffices (0 if none).
int max_group_heads(const Plan& plan);

// Merges rows [row_begin, row_end) of group g, row r being query row r / heads, head r % heads of
// the group (heads = g.head_end - g.head_begin), over the rows i < q_len of g.seq.
void combine_rows(const MergeGroup& g, const CombineParams& c, int row_begin, int row_end);
// Merges every row of group g.
void combine_group(const MergeGroup& g, const CombineParams& c);

// The separate pass: merges every group of the plan, its rows split evenly (by rows x partials)
// over `threads` workers of `pool` (nullptr or threads <= 1: on the calling thread).
void combine_all(const Plan& plan, const CombineParams& c, ThreadPool* pool, int threads);

// One arrival counter per merge group, for the last-worker strategy.
class MergeCounters {
 public:
  explicit MergeCounters(std::size_t num_groups = 0) { reset(num_groups); }
  // Sets every counter to 0. Not concurrently with arrive().
  void reset(std::size_t num_groups);
  std::size_t size() const { return size_; }
  // Call once per partial of `group`, after that partial is completely written. Returns true for
  // exactly one caller, the last of the group's num_partials, which must then merge the group. The
  // increment is acq_rel: it publishes the caller's partial (release), and the last caller's
  // acquire sees every earlier one's, since all increments are read-modify-writes of one counter
  // (a release sequence). The last caller also sets the counter back to 0, so the counters serve
  // the next run (a pool run's end orders that store before any later arrival).
  bool arrive(int group, int num_partials) {
    const int prev = count_[group].fetch_add(1, std::memory_order_acq_rel);
    if (prev != num_partials - 1) return false;
    count_[group].store(0, std::memory_order_relaxed);
    return true;
  }

 private:
  std::unique_ptr<std::atomic<int32_t>[]> count_;
  std::size_t size_ = 0;
};

// The last-worker strategy, after the worker has written item `item`'s partial: does nothing for
// an item without partial; merges the item's group if this was its last partial. Returns whether
// it merged.
bool finish_partial(const Plan& plan, int item, MergeCounters& counters, const CombineParams& c);

}  // namespace mla::cpu
