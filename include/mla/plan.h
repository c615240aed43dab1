// The work planner (DESIGN §5): FlashMLA's get_mla_metadata as a pure function. It splits one
// decode step's attention over `num_workers` workers, by sequence, by range of KV positions and,
// where that costs less, by group of heads. It runs no kernel and starts no thread, so its
// invariants are tested on their own (tests/test_plan.cc), and since it depends only on seq_lens,
// q_lens, H and the worker count, one plan serves every layer of a decode step.
//
// A plan is a list of work items per worker. An item is (sequence, head group, token range); an
// item that covers a whole (sequence, head group) writes the final o / lse, the others write a
// partial (o_i, lse_i) into a slot that a merge group later combines by log-sum-exp:
//
//   seq 0, heads 0..127, tokens 0..4095, 2 workers, KV split:
//     worker 0: [seq 0, h 0..128, kv 0..2048) -> partial 0 --+
//     worker 1: [seq 0, h 0..128, kv 2048..4096) -> partial 1 --+--> merge group 0 -> o, lse
//   the same with a head split (what the planner picks here: no merge at all):
//     worker 0: [seq 0, h 0..64, kv 0..4096) -> o, lse of heads 0..63
//     worker 1: [seq 0, h 64..128, kv 0..4096) -> o, lse of heads 64..127
#pragma once

#include <cstdint>
#include <vector>

#include "mla/export.h"

namespace mla {

// More workers than this are refused (the plan and its cost tables grow with them; no CPU this runs
// on has more threads).
constexpr int kMaxPlanWorkers = 4096;

struct PlanInput {
  int batch = 0;
  const int32_t* seq_lens = nullptr;  // [batch] cache tokens per sequence; 0 = padding entry
  const int32_t* q_lens = nullptr;    // [batch] query rows per sequence, or nullptr: q_len each
  int q_len = 1;                      // rows per sequence in q / o / lse (>= every q_lens[b])
  int num_heads = 0;
  int num_workers = 1;
  int kv_tile = 64;  // tokens per KV tile: the kernel's step, and the grain of KV splits
  // Fixed cost of one piece of work, in KV tiles of a whole sequence: loading the piece's queries,
  // setting up and draining the pipeline, writing o / lse (or a partial, later read back by the
  // combine). 2 tiles: FlashMLA uses 5 blocks of 64 on a GPU, where a piece also pays a kernel
  // block's launch; a CPU thread only pays the first / last chunk of its pipeline and the 512-wide
  // output row of every query row, about 1 to 2 tiles' worth of the tile's own traffic.
  int overhead_tiles = 2;
  // Head groups are multiples of this many heads where H allows (the last group takes the rest):
  // the kernels tile query rows by 8 / 16, and smaller groups leave those tiles half empty.
  int min_heads_per_group = 8;
  // Below this many query rows a piece costs as much as if it had this many (see piece_cost): its
  // keys must be read from memory whatever the number of rows, and at 16 rows reading a 576-wide
  // key (1152 B in bf16) already takes about as long as 16 rows' dot products over it on one core.
  int mem_bound_rows = 16;
};

struct WorkItem {
  int32_t seq;
  int32_t head_begin, head_end;  // heads [head_begin, head_end)
  int32_t kv_begin, kv_end;      // cache positions [kv_begin, kv_end) of the sequence
  // -1: the item covers the whole KV range of (seq, head group) and writes the final o / lse;
  // >= 0: the partial-result slot it writes, merged by plan.merges[plan.item_merge[item]].
  int32_t partial;
};

// The partials [partial_begin, partial_begin + num_partials) of one (seq, head group), in KV order.
struct MergeGroup {
  int32_t seq, head_begin, head_end;
  int32_t partial_begin, num_partials;
};

struct Plan {
  int num_workers = 0;
  std::vector<int32_t> worker_offsets;  // [num_workers + 1]: worker w runs items[off[w], off[w+1])
  std::vector<WorkItem> items;          // each worker's items are in (seq, head group, kv) order
  std::vector<MergeGroup> merges;       // in partial order
  int32_t num_partials = 0;
  std::vector<int32_t> item_merge;  // [items.size()]: the item's merge group, or -1
};

// Throws mla::Error on invalid input (negative lengths, q_lens[b] outside 1..q_len for a non-empty
// sequence, num_workers < 1, num_heads < 1, kv_tile < 1, ...), naming the offending value.
MLA_API Plan make_plan(const PlanInput& in);

// How many times make_plan has run in this process: tests check that a reused DecodePlan plans
// nothing on later calls.
MLA_API uint64_t plan_count();

// Where the partial results of a plan's split items go (DESIGN §5). Compact per merge group g
// (rows_g = q_lens[g.seq] x heads of g, row r = i x heads + (h - head_begin), the kernels' row
// order):
//
//   partial_lse  ... | group g: [num_partials][rows_g]      | group g+1 ...   (first at offset[g])
//   partial_o    ... | group g: [num_partials][rows_g][dv]  | group g+1 ...   (offset[g] x dv)
//
// Only real rows (i < q_lens[seq]) have a place: padding rows are written elsewhere.
struct PartialLayout {
  std::vector<int64_t> offset;  // [merges]: first row of group g's first partial
  std::vector<int32_t> rows;    // [merges]: rows per partial of group g
  int64_t total_rows = 0;       // floats in partial_lse; partial_o holds total_rows x dv

  // Row r of the k-th partial (k = item.partial - g.partial_begin) of group g.
  int64_t row(int g, int k, int r) const {
    return offset[g] + static_cast<int64_t>(k) * rows[g] + r;
  }
};

// q_lens: [batch] rows per sequence, or nullptr: q_len each.
MLA_API PartialLayout layout_partials(const Plan& plan, const int32_t* q_lens, int q_len);

// The planner's cost model, exposed so that tests and benchmarks check the balance the planner
// promises. Unit: one KV tile for one query row. A piece of sequence b with `heads` heads over
// positions [kv_begin, kv_end) costs
//     tiles x max(q_len_b x heads, mem_bound_rows) + overhead_tiles x tile_cost(in)
// where tiles counts the kv_tile-aligned tiles the range touches, and tile_cost(in) is the cost of
// one tile for the largest sequence's rows (max q_len_b x H, at least mem_bound_rows).
// Promise: every worker's total cost is at most ceil(T / num_workers) + tile_cost + overhead, T
// being the sum over the plan's (seq, head group) units of their cost unsplit.
MLA_API int64_t tile_cost(const PlanInput& in);
MLA_API int64_t piece_cost(const PlanInput& in, int seq, int heads, int kv_begin, int kv_end);

}  // namespace mla
