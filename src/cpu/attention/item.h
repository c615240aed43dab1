// A work item's plumbing, the same for every instruction set: its query rows (r = i * nh + h -
// head_begin: output row, lse, query, last visible position), the stride of the rows-in-lanes
// arrays, and the walk over its cache positions (slots and 16-bit token rows, one block-table read
// per block). In an anonymous namespace: each kernel file gets its own copy, built with its own
// instructions (isa.h).
#pragma once

#include <algorithm>
#include <cstdint>

#include "cpu/attention/kernel.h"
#include "cpu/attention/softmax_state.h"

namespace mla::cpu {
namespace {

// The rows of a work item: r = i * nh + (h - head_begin), output row and lse of each.
struct ItemRows {
  const KernelArgs& a;
  int nh, rows;
  explicit ItemRows(const KernelArgs& args)
      : a(args), nh(args.head_end - args.head_begin), rows(q_len_of(*args.p, args.seq) * nh) {}
  float* o(int r) const { return a.o + (r / nh) * a.o_stride_i + (r % nh) * a.o_stride_h; }
  float* lse(int r) const { return a.lse + (r / nh) * a.lse_stride_i + (r % nh) * a.lse_stride_h; }
  // The query row's 576 values (bf16 or f16 bits) in q [batch, q_len, H, 576].
  const uint16_t* q(int r) const {
    const DecodeParams& p = *a.p;
    return a.q +
           ((int64_t(a.seq) * p.q_len + r / nh) * p.num_heads + a.head_begin + r % nh) * kQkDim;
  }
  // Last position row r sees within the item's range (< kv_begin: none), or -1 for r >= rows.
  int last(int r) const {
    return r < rows ? std::min(last_visible(*a.p, a.seq, r / nh), a.kv_end - 1) : -1;
  }
};

// Stride, in floats, of the rows-in-lanes arrays for rows_pad rows: an odd number of cache lines,
// so that walking them down the token axis spreads over all L1 sets (at 256 rows, 1 KiB apart,
// they would hit 4 of 64 sets).
inline int64_t lanes_row_stride(int rows_pad) {
  const int64_t r16 = (rows_pad + 15) & ~15;
  return (r16 / 16) % 2 == 0 ? r16 + 16 : r16;
}

// The online-softmax state of an item's rows_pad rows, carved from the kernel's scratch (both
// passes of the carver): running maximum m, sum l, the step's rescale factor alpha, and each row's
// last visible position. init(): m = -inf, l = 0, last = ir.last(r).
struct RowState {
  float *m, *l, *alpha;
  int32_t* last;
  RowState(ScratchCarver& cv, int rows_pad)
      : m(cv.take<float>(rows_pad)),
        l(cv.take<float>(rows_pad)),
        alpha(cv.take<float>(rows_pad)),
        last(cv.take<int32_t>(rows_pad)) {}
  void init(const ItemRows& ir, int rows_pad) const {
    for (int r = 0; r < rows_pad; ++r) {
      m[r] = kNegInf;
      l[r] = 0.f;
      last[r] = ir.last(r);
    }
  }
};

// Calls f(t, block, offset) for positions [t0, t0 + n) of the item's sequence, t from 0: the block
// table is read once per block, with no division per token.
template <class F>
inline void walk_positions(const KernelArgs& a, int t0, int n, F&& f) {
  const DecodeParams& p = *a.p;
  const int bs = a.cache->block_size();
  const int32_t* table = p.block_table + int64_t(a.seq) * p.max_blocks_per_seq;
  int blk = t0 / bs, off = t0 % bs;
  for (int t = 0; t < n; ++t) {
    f(t, table[blk], off);
    if (++off == bs) off = 0, ++blk;
  }
}

// Cache slots of positions [t0, t0 + n).
inline void step_slots(const KernelArgs& a, int t0, int n, int64_t* slot) {
  const int64_t bs = a.cache->block_size();
  walk_positions(a, t0, n, [&](int t, int32_t blk, int off) { slot[t] = blk * bs + off; });
}

// Token rows (bf16 / fp16) of positions [t0, t0 + n), read through the cache view by block and
// offset (views may have any block stride); entries [n, n_pad) point at `zero` (a zero token), so
// that chunk tails never touch a slot the item does not own.
inline void step_token_ptrs(const KernelArgs& a, int t0, int n, int n_pad, const uint16_t* zero,
                            const uint16_t** tok) {
  walk_positions(a, t0, n,
                 [&](int t, int32_t blk, int off) { tok[t] = a.cache->token16_at(blk, off); });
  for (int t = n; t < n_pad; ++t) tok[t] = zero;
}

}  // namespace
}  // namespace mla::cpu
