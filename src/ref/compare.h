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
  double row_rel_err; // the same per row (a row is a few hundred values: a looser bound)
};

// DESIGN §6: fp32 reference path 1e-5; bf16/fp16 5e-3; int8 2e-2 and cosine > 0.999; per row
// twice those.
Tolerance tolerance_for(KvDType kv, bool reference_impl);

// The non-finite rule (DESIGN §6) as the comparator states it: every element of o and lse must be
// in the reference's class (NaN where the reference is NaN, +-inf where it is that infinity,
// finite where it is finite); only finite pairs enter the error norms. Errors are measured over
// all rows together and per row (max_row_rel: the worst row's ||o - ref|| / ||ref||), so one bad
// row among many is not diluted.
struct Comparison {
  double rel_err = 0, cosine = 1, lse_abs = 0, max_row_rel = 0;
  int64_t worst_row = -1;            // the row of max_row_rel
  int64_t mismatched_nonfinite = 0;  // elements (o and lse) whose class differs from the reference's
  bool pass = false;
  std::string summary() const;  // "rel 1.2e-03 cos 0.999998 lse 3.1e-05"
};

// o [rows, dv] and lse [rows] against the reference.
Comparison compare(const float* o, const float* lse, const double* ref_o, const double* ref_lse,
                   int64_t rows, int dv, const Tolerance& tol);

}  // namespace mla::ref
