// Comparing a kernel's outputs with the float64 reference (FlashMLA's comparator, DESIGN §6):
// relative-norm error, cosine similarity, largest lse error, and the positions where one side is
// NaN / Inf and the other is not.
#pragma once

#include <cstdint>
#include <string>

#include "mla/cache.h"

namespace mla::ref {

struct Tolerance {
  double rel_err;     // ||out - ref|| / ||ref||
  double cosine;      // minimum cosine similarity
  double lse_abs;     // max |lse - lse_ref| over rows with finite lse
};

// DESIGN §6: fp32 reference path 1e-5; bf16/fp16 5e-3; int8 2e-2 and cosine > 0.999.
Tolerance tolerance_for(KvDType kv, bool reference_impl);

struct Comparison {
  double rel_err = 0, cosine = 1, lse_abs = 0;
  int64_t mismatched_nonfinite = 0;  // elements where exactly one side is not finite, or -inf lse differs
  bool pass = false;
  std::string summary() const;  // "rel 1.2e-03 cos 0.999998 lse 3.1e-05"
};

// o [rows, dv] and lse [rows] against the reference.
Comparison compare(const float* o, const float* lse, const double* ref_o, const double* ref_lse,
                   int64_t rows, int dv, const Tolerance& tol);

}  // namespace mla::ref
