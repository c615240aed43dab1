#include "ref/compare.h"

#include <cmath>
#include <cstdio>

namespace mla::ref {

Tolerance tolerance_for(KvDType kv, bool reference_impl) {
  if (reference_impl)
    return {.rel_err = 1e-5, .cosine = 0.99999, .lse_abs = 1e-5, .row_rel_err = 2e-5};
  if (kv == KvDType::int8)
    return {.rel_err = 2e-2, .cosine = 0.999, .lse_abs = 1e-2, .row_rel_err = 4e-2};
  return {.rel_err = 5e-3, .cosine = 0.9999, .lse_abs = 1e-3, .row_rel_err = 1e-2};
}

std::string Comparison::summary() const {
  char buf[200];
  std::snprintf(buf, sizeof buf, "rel %.2e cos %.6f lse %.1e row %.2e%s", rel_err, cosine, lse_abs,
                max_row_rel, mismatched_nonfinite ? " NONFINITE" : "");
  return buf;
}

namespace {
// 0 finite, 1 NaN, 2 +inf, 3 -inf.
int fp_class(double x) { return std::isfinite(x) ? 0 : std::isnan(x) ? 1 : x > 0 ? 2 : 3; }
}  // namespace

Comparison compare(const float* o, const float* lse, const double* ref_o, const double* ref_lse,
                   int64_t rows, int dv, const Tolerance& tol) {
  Comparison c;
  double diff2 = 0, ref2 = 0, out2 = 0, dot = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double rd2 = 0, rr2 = 0;
    for (int64_t i = r * dv; i < (r + 1) * dv; ++i) {
      const double a = o[i], b = ref_o[i];
      if (fp_class(a) != fp_class(b)) {
        ++c.mismatched_nonfinite;
        continue;
      }
      if (!std::isfinite(a)) continue;
      rd2 += (a - b) * (a - b);
      rr2 += b * b;
      out2 += a * a;
      dot += a * b;
    }
    diff2 += rd2;
    ref2 += rr2;
    const double row_rel = rr2 > 0 ? std::sqrt(rd2 / rr2) : std::sqrt(rd2);
    if (row_rel > c.max_row_rel || c.worst_row < 0) {
      c.max_row_rel = std::max(c.max_row_rel, row_rel);
      c.worst_row = r;
    }
    const double a = lse[r], b = ref_lse[r];
    if (fp_class(a) != fp_class(b)) {
      ++c.mismatched_nonfinite;
      continue;
    }
    if (std::isfinite(b)) c.lse_abs = std::max(c.lse_abs, std::fabs(a - b));
  }
  // An all-zero reference (every row padding) is matched exactly or not at all.
  c.rel_err = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  c.cosine = (ref2 > 0 && out2 > 0) ? dot / std::sqrt(ref2 * out2) : (diff2 == 0 ? 1.0 : 0.0);
  c.pass = c.mismatched_nonfinite == 0 && c.rel_err <= tol.rel_err && c.cosine >= tol.cosine &&
           c.lse_abs <= tol.lse_abs && c.max_row_rel <= tol.row_rel_err;
  return c;
}

}  // namespace mla::ref
