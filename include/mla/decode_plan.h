// A reusable decode plan (FlashMLA's get_mla_metadata, FlashInfer's plan/run): everything about a
// decode step that depends only on its shape and lengths, made once and reused by every layer of
// the step (DESIGN §5). It holds the work split (plan.h's Plan), where split items put their
// partial results, the workspace those need, and the shape it was built for; decode() refuses a
// plan built for another batch shape, other seq_lens / q_lens or another head count.
//
//   DecodePlan plan = make_decode_plan({.batch = B, .q_len = 2, .num_heads = 128,
//                                       .seq_lens = lens, .q_lens = nullptr, .workers = 8});
//   for (layer ...) decode(p, q_dtype, q[layer], cache[layer], opt, plan, o, lse);
//
// The second and later calls do no planning and allocate nothing: the partial buffers live in a
// workspace, owned by the plan or given by the caller (workspace_bytes() of 64-byte aligned
// memory). A plan's own workspace serves one decode at a time; concurrent decodes on one plan each
// pass their own workspace.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "mla/export.h"
#include "mla/plan.h"

namespace mla {

struct DecodeParams;

struct DecodePlanInput {
  int batch = 0;
  int q_len = 1;                       // rows per sequence in q / o / lse
  int num_heads = 0;
  const int32_t* seq_lens = nullptr;   // [batch]; copied
  const int32_t* q_lens = nullptr;     // [batch] or nullptr: q_len each; copied
  int workers = 0;                     // threads that run the decode; 0 = all cores
  int kv_tile = 64;                    // planning grain in tokens (kKvTile)
};

class MLA_API DecodePlan {
 public:
  DecodePlan(DecodePlan&&) noexcept;
  DecodePlan& operator=(DecodePlan&&) noexcept;
  ~DecodePlan();

  const Plan& work() const { return work_; }
  const PartialLayout& partials() const { return partials_; }
  int batch() const { return batch_; }
  int q_len() const { return q_len_; }
  int num_heads() const { return num_heads_; }
  int workers() const { return work_.num_workers; }
  const std::vector<int32_t>& seq_lens() const { return seq_lens_; }
  const std::vector<int32_t>& q_lens() const { return q_lens_; }  // empty: q_len each

  // Bytes of 64-byte aligned workspace a decode with this plan needs (partial o / lse, merge
  // counters, the query in the kernel's type).
  size_t workspace_bytes() const { return workspace_bytes_; }
  // The plan's own workspace (allocated by make_decode_plan).
  void* owned_workspace() const;

  // Throws mla::Error naming the first difference between p and the shape this plan was built for.
  void check_matches(const DecodeParams& p) const;

 private:
  DecodePlan() = default;
  friend DecodePlan make_decode_plan(const DecodePlanInput& in);
  struct Owned;

  Plan work_;
  PartialLayout partials_;
  int batch_ = 0, q_len_ = 1, num_heads_ = 0;
  std::vector<int32_t> seq_lens_, q_lens_;
  size_t workspace_bytes_ = 0;
  std::unique_ptr<Owned> owned_;
};

// Plans a decode step; throws mla::Error on invalid lengths (as make_plan does).
MLA_API DecodePlan make_decode_plan(const DecodePlanInput& in);

// The workspace's sections, in bytes from its start (each 64-byte aligned).
struct WorkspaceLayout {
  size_t partial_lse = 0, partial_o = 0, counters = 0, query = 0, total = 0;
};
MLA_API WorkspaceLayout workspace_layout(const PartialLayout& partials, size_t num_merges,
                                         int64_t query_elems);

}  // namespace mla
