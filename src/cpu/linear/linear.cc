// The projection driver (rows split across the thread pool) and the portable kernel.
#include "cpu/linear/linear.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/thread_pool.h"
#include "mla/dtype.h"
#include "mla/status.h"

namespace mla::cpu {

// Baseline code: the check of exactly the instructions linear_avx512.cc is compiled with.
bool linear_avx512_supported() { return cpu_has_avx512_set(); }

const char* wdtype_name(WDType t) {
  switch (t) {
    case WDType::bf16: return "bf16";
    case WDType::f16: return "fp16";
    case WDType::f32: return "fp32";
    case WDType::fp8_e4m3: return "fp8_e4m3";
  }
  return "?";
}

size_t wdtype_size(WDType t) {
  switch (t) {
    case WDType::bf16:
    case WDType::f16: return 2;
    case WDType::f32: return 4;
    case WDType::fp8_e4m3: return 1;
  }
  return 0;
}

int64_t LinearWeight::bytes() const {
  int64_t b = out * in * int64_t(wdtype_size(dtype));
  if (dtype == WDType::fp8_e4m3)
    b += ((out + block_rows - 1) / block_rows) * ((in + block_cols - 1) / block_cols) * 4;
  return b;
}

namespace {

// fp8 e4m3 -> float for all 256 codes, built once.
const float* fp8_table() {
  static const std::vector<float> t = [] {
    std::vector<float> v(256);
    for (int i = 0; i < 256; ++i) v[i] = fp8e4m3_to_f32(uint8_t(i));
    return v;
  }();
  return t.data();
}

void widen_row(const LinearWeight& w, int64_t r, float* out) {
  switch (w.dtype) {
    case WDType::bf16: {
      const auto* p = static_cast<const uint16_t*>(w.w) + r * w.ld;
      for (int64_t c = 0; c < w.in; ++c) out[c] = bf16_to_f32(p[c]);
      break;
    }
    case WDType::f16: {
      const auto* p = static_cast<const uint16_t*>(w.w) + r * w.ld;
      for (int64_t c = 0; c < w.in; ++c) out[c] = f16_to_f32(p[c]);
      break;
    }
    case WDType::f32: {
      const auto* p = static_cast<const float*>(w.w) + r * w.ld;
      std::copy(p, p + w.in, out);
      break;
    }
    case WDType::fp8_e4m3: {
      const auto* p = static_cast<const uint8_t*>(w.w) + r * w.ld;
      const float* t = fp8_table();
      const float* s = w.scale_inv + ((w.row0 + r) / w.block_rows) * w.scale_ld;
      for (int64_t c = 0; c < w.in; ++c) out[c] = t[p[c]] * s[c / w.block_cols];
      break;
    }
  }
}

}  // namespace

float LinearWeight::at(int64_t r, int64_t c) const {
  switch (dtype) {
    case WDType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(w)[r * ld + c]);
    case WDType::f16: return f16_to_f32(static_cast<const uint16_t*>(w)[r * ld + c]);
    case WDType::f32: return static_cast<const float*>(w)[r * ld + c];
    case WDType::fp8_e4m3:
      return fp8_table()[static_cast<const uint8_t*>(w)[r * ld + c]] *
             scale_inv[((row0 + r) / block_rows) * scale_ld + c / block_cols];
  }
  return NAN;
}

void linear_rows_portable(const LinearWeight& w, int64_t r0, int64_t r1, int64_t n, const float* x,
                          int64_t ldx, float* y, int64_t ldy, float* row) {
  for (int64_t r = r0; r < r1; ++r) {
    widen_row(w, r, row);
    for (int64_t t = 0; t < n; ++t) {
      const float* xt = x + t * ldx;
      // Eight partial sums so the compiler can keep them in vector lanes without reassociating.
      float acc[8] = {};
      int64_t c = 0;
      for (; c + 8 <= w.in; c += 8)
        for (int j = 0; j < 8; ++j) acc[j] += row[c + j] * xt[c + j];
      for (; c < w.in; ++c) acc[0] += row[c] * xt[c];
      y[t * ldy + r] = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
  }
}

// The portable rows' buffer of n floats: the calling thread's own, not the pool's scratch(), since
// a run that finds the pool busy (another thread's layer) runs every share on its calling thread,
// beside the pool's workers, and two threads would then share worker w's scratch.
static float* row_buffer(int64_t n) {
  thread_local std::vector<float> buf;
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  return buf.data();
}

void linear(const LinearWeight& w, int64_t n, const float* x, int64_t ldx, float* y, int64_t ldy,
            int threads, bool isa_portable) {
  if (n <= 0 || w.out <= 0) return;
  // The AVX-512 kernel applies one fp8 scale per 16 columns, so block widths must be multiples.
  const bool fast = !isa_portable && linear_avx512_supported() &&
                    (w.dtype != WDType::fp8_e4m3 || w.block_cols % 16 == 0);
  ThreadPool& pool = thread_pool(threads);
  // Rows in units of 16 so each worker's tiles stay whole; fewer workers than units when small.
  constexpr int64_t kUnit = 16;
  const int64_t units = (w.out + kUnit - 1) / kUnit;
  const int nw = int(std::min<int64_t>(threads > 0 ? threads : pool.size(), units));
  pool.run(nw, [&](int wk) {
    const int64_t u0 = units * wk / nw, u1 = units * (wk + 1) / nw;
    const int64_t r0 = u0 * kUnit, r1 = std::min(w.out, u1 * kUnit);
    if (r0 >= r1) return;
    if (fast) {
      linear_rows_avx512(w, r0, r1, n, x, ldx, y, ldy);
    } else {
      float* buf = row_buffer(w.in);
      linear_rows_portable(w, r0, r1, n, x, ldx, y, ldy, buf);
    }
  });
}

void linear_heads(const LinearWeight* ws, int heads, int64_t n, const float* x, int64_t ldx,
                  int64_t x_head, float* y, int64_t ldy, int64_t y_head, int threads,
                  bool isa_portable) {
  if (n <= 0 || heads <= 0 || ws[0].out <= 0) return;
  const LinearWeight& w0 = ws[0];
  const bool fast = !isa_portable && linear_avx512_supported() &&
                    (w0.dtype != WDType::fp8_e4m3 || w0.block_cols % 16 == 0);
  ThreadPool& pool = thread_pool(threads);
  constexpr int64_t kUnit = 16;
  const int64_t per_head = (w0.out + kUnit - 1) / kUnit, units = per_head * heads;
  const int nw = int(std::min<int64_t>(threads > 0 ? threads : pool.size(), units));
  pool.run(nw, [&](int wk) {
    const int64_t u0 = units * wk / nw, u1 = units * (wk + 1) / nw;
    float* buf = fast ? nullptr : row_buffer(w0.in);
    for (int64_t u = u0; u < u1;) {
      const int64_t h = u / per_head, hu1 = std::min(u1, (h + 1) * per_head);
      const int64_t r0 = (u - h * per_head) * kUnit, r1 = std::min(w0.out, (hu1 - h * per_head) * kUnit);
      const float* xh = x + h * x_head;
      float* yh = y + h * y_head;
      if (fast) linear_rows_avx512(ws[h], r0, r1, n, xh, ldx, yh, ldy);
      else linear_rows_portable(ws[h], r0, r1, n, xh, ldx, yh, ldy, buf);
      u = hu1;
    }
  });
}

}  // namespace mla::cpu
