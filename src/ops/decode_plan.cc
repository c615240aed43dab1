// The reusable decode plan (include/mla/decode_plan.h): planning and the check that a plan fits
// the decode it is given. (The workspace layout is src/plan/workspace.cc: the kernels' driver,
// a layer below, reads it too.)
#include "mla/decode_plan.h"

#include <algorithm>

#include "cpu/thread_pool.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/status.h"

namespace mla {

// Left uninitialized (not an AlignedVec, which would zero it): a decode writes every byte it reads,
// and untouched pages of the query section cost nothing when the query needs no conversion.
struct DecodePlan::Owned {
  explicit Owned(size_t n) : bytes(n), data(n ? AlignedAlloc<unsigned char>().allocate(n) : nullptr) {}
  ~Owned() {
    if (data) AlignedAlloc<unsigned char>().deallocate(data, bytes);
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  size_t bytes;
  unsigned char* data;
};

DecodePlan::DecodePlan(DecodePlan&&) noexcept = default;
DecodePlan& DecodePlan::operator=(DecodePlan&&) noexcept = default;
DecodePlan::~DecodePlan() = default;

void* DecodePlan::owned_workspace() const { return owned_ ? owned_->data : nullptr; }

DecodePlan make_decode_plan(const DecodePlanInput& in) {
  MLA_CHECK(in.workers >= 0, "workers = " << in.workers << " is negative");
  DecodePlan d;
  d.work_ = make_plan(PlanInput{.batch = in.batch, .seq_lens = in.seq_lens, .q_lens = in.q_lens,
                                .q_len = in.q_len, .num_heads = in.num_heads,
                                .num_workers = in.workers > 0 ? in.workers
                                                              : cpu::ThreadPool::available_cpus(),
                                .kv_tile = in.kv_tile});
  d.partials_ = layout_partials(d.work_, in.q_lens, in.q_len);
  d.batch_ = in.batch;
  d.q_len_ = in.q_len;
  d.num_heads_ = in.num_heads;
  if (in.batch > 0) d.seq_lens_.assign(in.seq_lens, in.seq_lens + in.batch);
  if (in.batch > 0 && in.q_lens) d.q_lens_.assign(in.q_lens, in.q_lens + in.batch);
  const int64_t query_elems = int64_t(in.batch) * in.q_len * in.num_heads * kQkDim;
  d.workspace_bytes_ = workspace_layout(d.partials_, d.work_.merges.size(), query_elems).total;
  d.owned_ = std::make_unique<DecodePlan::Owned>(d.workspace_bytes_);
  return d;
}

void DecodePlan::check_matches(const DecodeParams& p) const {
  MLA_CHECK(p.batch == batch_, "the decode plan was built for batch " << batch_ << ", not "
                                                                      << p.batch);
  MLA_CHECK(p.q_len == q_len_, "the decode plan was built for q_len " << q_len_ << ", not "
                                                                      << p.q_len);
  MLA_CHECK(p.num_heads == num_heads_, "the decode plan was built for " << num_heads_
                                                                        << " heads, not "
                                                                        << p.num_heads);
  for (int b = 0; b < batch_; ++b) {
    MLA_CHECK(p.seq_lens[b] == seq_lens_[b], "the decode plan was built for seq_lens["
                                                 << b << "] = " << seq_lens_[b] << ", not "
                                                 << p.seq_lens[b]);
    const int planned = q_lens_.empty() ? q_len_ : q_lens_[b];
    const int given = q_len_of(p, b);
    // q_lens of a padding entry (seq_len 0) do not enter the plan.
    MLA_CHECK(seq_lens_[b] == 0 || given == planned, "the decode plan was built for q_lens["
                                                         << b << "] = " << planned << ", not "
                                                         << given);
  }
}

}  // namespace mla
