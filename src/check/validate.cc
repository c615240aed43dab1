// Validation of the decode parameters against the cache: every refusal happens here, before any
// work, with a message naming the offending value.
#include <cmath>

#include "mla/attention.h"
#include "mla/status.h"

namespace mla {

void validate(const DecodeParams& p, const CacheView& cache) {
  MLA_CHECK(p.batch >= 0, "batch = " << p.batch << " is negative");
  MLA_CHECK(p.num_heads >= 1 && p.num_heads <= kMaxHeads,
            "num_heads = " << p.num_heads << " is outside 1.." << kMaxHeads);
  MLA_CHECK(p.q_len >= 1 && p.q_len <= kMaxQLen, "q_len = " << p.q_len << " is outside 1.." << kMaxQLen);
  MLA_CHECK(std::isfinite(p.softmax_scale), "softmax_scale = " << p.softmax_scale << " is not finite");
  auto check_strides = [](const OutputStrides& s, const char* name, int64_t row) {
    if (!s.b && !s.i && !s.h) return;
    MLA_CHECK(s.b >= row && s.i >= row && s.h >= row,
              name << " strides (" << s.b << ", " << s.i << ", " << s.h << ") must each be at least "
                   << row);
  };
  check_strides(p.o_strides, "o", kLatentDim);
  check_strides(p.lse_strides, "lse", 1);
  if (p.batch == 0) return;
  MLA_CHECK(p.seq_lens != nullptr, "seq_lens is missing");
  MLA_CHECK(p.max_blocks_per_seq >= 1, "block_table has " << p.max_blocks_per_seq
                                                          << " columns; at least 1 is needed");
  MLA_CHECK(p.block_table != nullptr, "block_table is missing");
  const int bs = cache.block_size();
  for (int b = 0; b < p.batch; ++b) {
    const int sl = p.seq_lens[b];
    const int ql = q_len_of(p, b);
    MLA_CHECK(sl >= 0, "seq_lens[" << b << "] = " << sl << " is negative");
    MLA_CHECK(ql >= 0 && ql <= p.q_len,
              "q_lens[" << b << "] = " << ql << " is outside 0.." << p.q_len << " (the q array's q_len)");
    if (sl == 0) continue;  // padding entry: nothing is read
    MLA_CHECK(ql >= 1, "q_lens[" << b << "] = 0 for a sequence of " << sl
                                 << " tokens (only padding entries, seq_len 0, have no query)");
    MLA_CHECK(sl >= ql, "seq_lens[" << b << "] = " << sl << " is shorter than its " << ql
                                    << " query tokens");
    MLA_CHECK(int64_t(sl) <= int64_t(p.max_blocks_per_seq) * bs,
              "seq_lens[" << b << "] = " << sl << " exceeds " << p.max_blocks_per_seq
                          << " blocks x " << bs << " tokens");
    const int nb = (sl + bs - 1) / bs;
    for (int j = 0; j < nb; ++j) {
      const int32_t id = p.block_table[int64_t(b) * p.max_blocks_per_seq + j];
      MLA_CHECK(id >= 0 && id < cache.num_blocks(),
                "block_table[" << b << ", " << j << "] = " << id << " is outside the pool of "
                               << cache.num_blocks() << " blocks");
    }
  }
}

}  // namespace mla
