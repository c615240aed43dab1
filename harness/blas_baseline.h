// The baseline a user could assemble from a BLAS library (OpenBLAS), to show what the dedicated
// kernels buy. Per sequence:
//   1. gather its cache tokens and de-quantize them to fp32: K [seq_len, 576] (V = K[:, :512]);
//   2. S = softmax_scale * Q K^T with one cblas_sgemm over all rows of the sequence
//      (Q [q_len * H, 576], rows ordered (query token, head) like q);
//   3. causal mask, row softmax in fp32, lse = max + log(sum);
//   4. O = P V with one cblas_sgemm (P [q_len * H, seq_len], V with leading dimension 576).
// OpenBLAS parallelizes the two products over `threads` threads; the element-wise stages 1 and 3
// are split over the same number of threads, so the baseline uses the machine as the kernels do.
#pragma once

#include <vector>

#include "mla/attention.h"
#include "mla/cache.h"

namespace mla::bench {

class BlasBaseline {
 public:
  explicit BlasBaseline(int threads);

  // q [batch, q_len, H, 576] fp32 (the kernel's rounded query), o [batch, q_len, H, 512],
  // lse [batch, q_len, H]. Honours seq_lens, q_lens, causal; padding rows get o = 0, lse = -inf.
  // Calls validate() first.
  void run(const DecodeParams& p, const float* q, const PagedLatentCache& cache, float* o,
           float* lse);

  int threads() const { return threads_; }

 private:
  int threads_;
  std::vector<float> k_;  // [seq_len, 576] the gathered, de-quantized keys of one sequence
  std::vector<float> s_;  // [q_len * H, seq_len] scores, then probabilities
};

}  // namespace mla::bench
