// The online-softmax state of one query row (FlashInfer's state_t), shared by the attention
// kernels' update stage (UP) and the split-KV combine, so the log-sum-exp algebra lives in this one
// file.
//
// A row's state over a set of keys with scaled scores s_t and values v_t is
//     m = max_t s_t,   l = sum_t exp(s_t - m),   o = sum_t exp(s_t - m) v_t   (o: dv floats, the
//     caller's)
// and the row's result is o / l with lse = m + log(l). No keys yet: m = -inf, l = 0, o = 0.
//
// Fully masked keys have s = -inf. Every exp here is taken against `shift()`, never against a raw
// m that may be -inf, so exp(-inf - -inf) = NaN cannot occur: a row or chunk with no visible key
// contributes exactly nothing, and finalize turns a row that saw none into o = 0, lse = -inf.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>

namespace mla::cpu {

// In an anonymous namespace, as everything here the ISA kernels use: each file gets its own copy,
// built with its own instructions, never a symbol the linker could share between them (isa.h; an
// odr-used `inline constexpr` variable is one, as the sanitized -O1 build showed).
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The vector kernels' base-2 domain: scores scaled by softmax_scale * log2(e), p = 2^(s - m2), so
// one exp2 per score; their lse is ln 2 * (m2 + log2 l).
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
// The lse of a row kept in the base-2 domain: running maximum m2, sum l > 0; in double, so that
// log2 l adds no rounding of its own to m2's. One formula for every vector kernel.
inline float lse_base2(float m2, float l) {
  return float((double(m2) + std::log2(double(l))) * 0.6931471805599453);
}

}  // namespace

// exp(a - b) for b >= a, with exp(-inf - anything) = 0 (in particular exp(-inf - -inf) = 0).
inline float exp_diff(float a, float b) { return a == kNegInf ? 0.f : std::exp(a - b); }

struct SoftmaxState {
  float m = kNegInf;  // running maximum of the scaled scores
  float l = 0.f;      // running sum of exp(s - m)

  // What to subtract from a score before exp: m, or 0 while m = -inf (then every score seen is -inf
  // and exp(-inf - 0) = 0, where exp(s - m) would be NaN).
  float shift() const { return m == kNegInf ? 0.f : m; }

  // The kernel's SM stage for a chunk whose largest scaled score is chunk_max: raises m and returns
  // the factor exp(m_old - m_new) by which the caller multiplies its accumulator (UP's
  // go = go * dm; the accumulator starts at 0, so the factor 0 of the first chunk keeps it 0); l is
  // rescaled here. Then p_t = exp(s_t - shift()), add_sum(sum_t p_t), o += P V.
  float rescale_to(float chunk_max) {
    const float m_new = chunk_max > m ? chunk_max : m;
    const float factor = exp_diff(m, m_new == kNegInf ? 0.f : m_new);
    m = m_new;
    l *= factor;
    return factor;
  }
  void add_sum(float chunk_sum) { l += chunk_sum; }
};

// a <- a (+) b: folds the state b with accumulator ob into the state a with accumulator oa (dv
// floats each). ob is taken times ob_scale (a dequantisation scale; 1 for float accumulators).
// Used by UP when a chunk is computed against its own local maximum (the int8 path quantizes P
// against it), and by anything merging partial states that are not yet normalised.
inline void merge(SoftmaxState& a, float* oa, const SoftmaxState& b, const float* ob, int dv,
                  float ob_scale = 1.f) {
  if (b.m == kNegInf) return;  // b saw no visible key: nothing to add (ob is not read)
  const float m = a.m > b.m ? a.m : b.m;
  const float fa = exp_diff(a.m, m);
  const float fb = std::exp(b.m - m) * ob_scale;
  if (a.m == kNegInf) {
    // Nothing in a yet: its accumulator may hold anything, overwrite it rather than scale it by 0.
    for (int d = 0; d < dv; ++d) oa[d] = fb * ob[d];
  } else {
    for (int d = 0; d < dv; ++d) oa[d] = fa * oa[d] + fb * ob[d];
  }
  a.l = fa * a.l + std::exp(b.m - m) * b.l;
  a.m = m;
}

// Normalises the accumulator in place and returns the row's lse (natural log). A row that saw no
// visible key (l = 0) gets o = 0 and lse = -inf, never NaN.
inline float finalize(const SoftmaxState& s, float* o, int dv) {
  if (s.l == 0.f || s.m == kNegInf) {
    for (int d = 0; d < dv; ++d) o[d] = 0.f;
    return kNegInf;
  }
  // A NaN l or m (a NaN score) falls through and propagates into this row only.
  const float inv = 1.f / s.l;
  for (int d = 0; d < dv; ++d) o[d] *= inv;
  return s.m + std::log(s.l);
}

// Combines n normalised partial results (o_i, lse_i) of one row, computed over disjoint key sets:
//     L = max_i lse_i,  w_i = exp(lse_i - L),  o = sum_i w_i o_i / sum_i w_i,  lse = L + log sum_i
//     w_i
// Parts with lse_i = -inf (no visible key) are skipped, their o_i never read; if every part is
// -inf: o = 0, lse = -inf. This is merge() of the states (m = lse_i, l = 1, o = o_i) followed by
// finalize(), with the maximum taken first so each o_i is scaled once. lse_i is read at
// lse + i * lse_stride, o_i at o + i * o_stride. Returns lse.
inline float combine(int n, const float* lse, std::ptrdiff_t lse_stride, const float* o,
                     std::ptrdiff_t o_stride, int dv, float* out) {
  float L = kNegInf;
  bool nan = false;
  for (int i = 0; i < n; ++i) {
    const float x = lse[i * lse_stride];
    if (x > L) L = x;
    nan |= std::isnan(x);
  }
  if (nan)
    L = std::numeric_limits<float>::quiet_NaN();  // a NaN part poisons this row, as it should
  if (L == kNegInf) {
    for (int d = 0; d < dv; ++d) out[d] = 0.f;
    return kNegInf;
  }
  SoftmaxState s{.m = L, .l = 0.f};
  for (int d = 0; d < dv; ++d) out[d] = 0.f;
  for (int i = 0; i < n; ++i) {
    const float x = lse[i * lse_stride];
    if (x == kNegInf) continue;
    const float w = std::exp(x - L);
    const float* oi = o + i * o_stride;
    for (int d = 0; d < dv; ++d) out[d] += w * oi[d];
    s.add_sum(w);
  }
  return finalize(s, out, dv);
}

}  // namespace mla::cpu
