#include "ref/compare.h"

#include <cmath>
#include <cstdio>

namespace mla::ref {

Tolerance tolerance_for(KvDType kv, bool reference_impl) {
  if (reference_impl) return {.rel_err = 1e-5, .cosine = 0.99999, .lse_abs = 1e-5};
  if (kv == KvDType::int8) return {.rel_err = 2e-2, .cosine = 0.999, .lse_abs = 1e-2};
  return {.rel_err = 5e-3, .cosine = 0.9999, .lse_abs = 1e-3};
}

std::string Comparison::summary() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "rel %.2e cos %.6f lse %.1e%s", rel_err, cosine, lse_abs,
                mismatched_nonfinite ? " NONFINITE" : "");
  return buf;
}

Comparison compare(const float* o, const float* lse, const double* ref_o, const double* ref_lse,
                   int64_t rows, int dv, const Tolerance& tol) {
  Comparison c;
  double diff2 = 0, ref2 = 0, out2 = 0, dot = 0;
  for (int64_t i = 0; i < rows * dv; ++i) {
    const double a = o[i], b = ref_o[i];
    if (std::isfinite(a) != std::isfinite(b)) {
      ++c.mismatched_nonfinite;
      continue;
    }
    if (!std::isfinite(a)) continue;
    diff2 += (a - b) * (a - b);
    ref2 += b * b;
    out2 += a * a;
    dot += a * b;
  }
  for (int64_t r = 0; r < rows; ++r) {
    const double a = lse[r], b = ref_lse[r];
    if (std::isfinite(a) != std::isfinite(b) || (std::isinf(b) && a != b) || std::isnan(a)) {
      ++c.mismatched_nonfinite;
      continue;
    }
    if (std::isfinite(b)) c.lse_abs = std::max(c.lse_abs, std::fabs(a - b));
  }
  // An all-zero reference (every row padding) is matched exactly or not at all.
  c.rel_err = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  c.cosine = (ref2 > 0 && out2 > 0) ? dot / std::sqrt(ref2 * out2) : (diff2 == 0 ? 1.0 : 0.0);
  c.pass = c.mismatched_nonfinite == 0 && c.rel_err <= tol.rel_err && c.cosine >= tol.cosine &&
           c.lse_abs <= tol.lse_abs;
  return c;
}

}  // namespace mla::ref
