// The int8 path's query quantization (DESIGN §3), shared by every int8 kernel and by
// kernel_query_values so that the exported q_used is exactly what the kernels saw: per row,
// q' = q (times the channel scales in channel mode), scale = max|q'| / 127, q8 = round(q' / scale)
// to nearest even, clamped to +-127 (the clamp never acts, max|q'| maps to 127).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "mla/cache.h"

namespace mla::cpu {
// Anonymous: the int8 AVX-512 kernel includes this too, and must not share its compiled copy with
// baseline files (isa.h).
namespace {

// q: 512 latent values (already including channel scales where used). Returns the row's scale.
// A row holding NaN or Inf cannot be quantized: q8 = 0 and the scale is NaN, so that every score
// of the row, and the row's result, is NaN (DESIGN §6).
inline float quantize_query_row(const float* q, int8_t* q8) {
  float mx = 0.f;
  bool finite = true;
  for (int c = 0; c < kLatentDim; ++c) {
    mx = std::max(mx, std::fabs(q[c]));
    finite &= std::isfinite(q[c]);
  }
  if (!finite) {
    std::fill(q8, q8 + kLatentDim, int8_t(0));
    return std::numeric_limits<float>::quiet_NaN();
  }
  const float scale = mx / 127.f;
  const float inv = mx > 0.f ? 127.f / mx : 0.f;
  for (int c = 0; c < kLatentDim; ++c)
    q8[c] = int8_t(std::clamp(std::nearbyint(q[c] * inv), -127.f, 127.f));
  return scale;
}

}  // namespace
}  // namespace mla::cpu
