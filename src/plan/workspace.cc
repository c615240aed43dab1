// The decode workspace's layout (include/mla/decode_plan.h): where the partial results, the merge
// counters and the converted query sit. In the planning layer because both the plan (mla_ops,
// which sizes the workspace) and the driver (mla_cpu, which carves it up) read it.
#include "mla/cache.h"
#include "mla/decode_plan.h"

namespace mla {

WorkspaceLayout workspace_layout(const PartialLayout& partials, size_t num_merges,
                                 int64_t query_elems) {
  auto up64 = [](size_t n) { return (n + 63) & ~size_t(63); };
  WorkspaceLayout w;
  w.partial_lse = 0;
  w.partial_o = up64(size_t(partials.total_rows) * sizeof(float));
  w.counters = w.partial_o + up64(size_t(partials.total_rows) * kLatentDim * sizeof(float));
  w.query = w.counters + up64(num_merges * sizeof(int32_t));
  w.total = w.query + up64(size_t(query_elems) * sizeof(uint16_t));
  return w;
}

}  // namespace mla
