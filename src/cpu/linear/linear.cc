// The projection driver (rows split across the thread pool) and the portable kernel.
#include "cpu/linear/linear.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/thread_pool.h"
#include "mla/cache.h"  // AlignedVec
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
    case WDType::i8: return "int8";
  }
  return "?";
}

const char* linear_isa_name(LinearIsa isa) {
  switch (isa) {
    case LinearIsa::best: return "best";
    case LinearIsa::portable: return "portable";
    case LinearIsa::avx512: return "avx512";
    case LinearIsa::amx: return "amx";
    case LinearIsa::amx_emu: return "amx-emu";
  }
  return "?";
}

size_t wdtype_size(WDType t) {
  switch (t) {
    case WDType::bf16:
    case WDType::f16: return 2;
    case WDType::f32: return 4;
    case WDType::fp8_e4m3:
    case WDType::i8: return 1;
  }
  return 0;
}

int64_t LinearWeight::bytes() const {
  int64_t b = out * in * int64_t(wdtype_size(dtype));
  if (dtype == WDType::i8) b += out * 4;
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
    case WDType::i8: {
      const auto* p = static_cast<const int8_t*>(w.w) + r * w.ld;
      const float s = w.row_scale[r];
      for (int64_t c = 0; c < w.in; ++c) out[c] = float(p[c]) * s;
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
    case WDType::i8: return float(static_cast<const int8_t*>(w)[r * ld + c]) * row_scale[r];
  }
  return NAN;
}

int64_t tile_elems(int64_t out, int64_t in) {
  return (out + kTileRows - 1) / kTileRows * ((in + kTileCols - 1) / kTileCols) * kTileRows * kTileCols;
}

void pack_tiles(const LinearWeight& w, uint16_t* dst) {
  const int64_t nbs = (w.out + kTileRows - 1) / kTileRows, kbs = (w.in + kTileCols - 1) / kTileCols;
  std::vector<float> row(size_t(kbs * kTileCols), 0.f);
  std::fill(dst, dst + tile_elems(w.out, w.in), uint16_t(0));
  for (int64_t r = 0; r < w.out; ++r) {
    if (w.dtype == WDType::i8) {  // the integers; the kernel applies row_scale to the sums
      const auto* p = static_cast<const int8_t*>(w.w) + r * w.ld;
      for (int64_t c = 0; c < w.in; ++c) row[c] = float(p[c]);
    } else {
      widen_row(w, r, row.data());
    }
    const int64_t nb = r / kTileRows, rr = r % kTileRows;
    for (int64_t c = 0; c < w.in; ++c) {
      const int64_t kb = c / kTileCols, k2 = (c % kTileCols) / 2, e = c % 2;
      dst[((nb * kbs + kb) * 16 + k2) * 32 + rr * 2 + e] = f32_to_bf16(row[c]);
    }
  }
  (void)nbs;
}

void round_bf16(const float* x, uint16_t* y, int64_t n) {
  if (linear_avx512_supported()) return round_bf16_avx512(x, y, n);
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}

void pack_tiles_i8(const LinearWeight& w, int8_t* dst) {
  MLA_CHECK(w.dtype == WDType::i8, "pack_tiles_i8: the weight is " << wdtype_name(w.dtype) << ", not int8");
  const int64_t kbs = (w.in + kTileCols - 1) / kTileCols;
  std::fill(dst, dst + tile_elems(w.out, w.in), int8_t(0));
  for (int64_t r = 0; r < w.out; ++r) {
    const auto* p = static_cast<const int8_t*>(w.w) + r * w.ld;
    const int64_t nb = r / kTileRows, rr = r % kTileRows;
    for (int64_t c = 0; c < w.in; ++c) {
      const int64_t kb = c / kTileCols, k2 = (c % kTileCols) / 2, e = c % 2;
      dst[((nb * kbs + kb) * 16 + k2) * 32 + rr * 2 + e] = p[c];
    }
  }
}

void quantize_rows_i8(const LinearWeight& w, int8_t* q, float* scale) {
  std::vector<float> row(size_t(w.in));
  for (int64_t r = 0; r < w.out; ++r) {
    widen_row(w, r, row.data());
    float mx = 0;
    bool finite = true;
    for (int64_t c = 0; c < w.in; ++c) {
      finite = finite && std::isfinite(row[c]);
      mx = std::max(mx, std::fabs(row[c]));
    }
    int8_t* qr = q + r * w.in;
    if (!finite) {  // NaN scale: the row's outputs are NaN, never a plausible number
      scale[r] = NAN;
      std::fill(qr, qr + w.in, int8_t(0));
      continue;
    }
    scale[r] = mx / 127.f;
    const float inv = mx > 0 ? 127.f / mx : 0.f;
    for (int64_t c = 0; c < w.in; ++c)
      qr[c] = int8_t(std::clamp(std::nearbyint(row[c] * inv), -127.f, 127.f));
  }
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

namespace {

bool avx512_ok(const LinearWeight& w) {
  // The AVX-512 kernel applies one fp8 scale per 16 columns, so block widths must be multiples.
  return linear_avx512_supported() && (w.dtype != WDType::fp8_e4m3 || w.block_cols % 16 == 0);
}

// The kernel a product runs on (see LinearIsa); forcing one the weight or CPU cannot run is an
// error naming both.
LinearIsa pick(const LinearWeight& w, int64_t n, LinearIsa isa) {
  switch (isa) {
    case LinearIsa::best:
      if ((w.tiles || w.tiles_i8) && n >= (w.tiles_i8 ? kTileMinTokensI8 : kTileMinTokens) &&
          cpu_has_amx_set())
        return LinearIsa::amx;
      return avx512_ok(w) ? LinearIsa::avx512 : LinearIsa::portable;
    case LinearIsa::portable: return isa;
    case LinearIsa::avx512:
      MLA_CHECK(avx512_ok(w), "linear: isa avx512 forced but the CPU lacks the AVX-512 set or the "
                                  << wdtype_name(w.dtype) << " weight's block width " << w.block_cols
                                  << " is not a multiple of 16");
      return isa;
    case LinearIsa::amx:
    case LinearIsa::amx_emu:
      MLA_CHECK(w.tiles || w.tiles_i8, "linear: isa " << linear_isa_name(isa) << " forced but the " << w.out << " x "
                                        << w.in << " weight has no tile-packed copy");
      MLA_CHECK(isa == LinearIsa::amx ? cpu_has_amx_set() : linear_avx512_supported(),
                "linear: isa " << linear_isa_name(isa) << " forced but the CPU lacks it"
                               << (isa == LinearIsa::amx ? " (or MLA_AMX=0)" : ""));
      return isa;
  }
  return LinearIsa::portable;
}

// The bf16 activations of a tile product: the calling thread's own buffer (kept between calls, so
// a step allocates nothing once the first has sized it).
uint16_t* tile_a_buffer(size_t elems) {
  thread_local AlignedVec<uint16_t> buf;
  if (buf.size() < elems) buf.resize(elems);
  return buf.data();
}
// The tile kernel's accumulators, [row blocks, m_tiles, 16, 16] (workers take disjoint ranges).
float* tile_acc_buffer(size_t elems) {
  thread_local AlignedVec<float> buf;
  if (buf.size() < elems) buf.resize(elems);
  return buf.data();
}

}  // namespace

void linear(const LinearWeight& w, int64_t n, const float* x, int64_t ldx, float* y, int64_t ldy,
            int threads, LinearIsa isa) {
  if (n <= 0 || w.out <= 0) return;
  const LinearIsa k = pick(w, n, isa);
  const bool split = n <= kTileSplitMaxTokens;
  ThreadPool& pool = thread_pool(threads);
  if (k == LinearIsa::amx || k == LinearIsa::amx_emu) {
    const int64_t kbs = (w.in + kTileCols - 1) / kTileCols, mt = (split ? 2 : 1) * ((n + 15) / 16);
    TileProduct p{.a = nullptr, .m_tiles = mt, .n = n, .split = split, .b = w.tiles_i8 ? nullptr : w.tiles, .b_i8 = w.tiles_i8,
                  .k_blocks = kbs, .out = w.out,
                  .row_scale = w.dtype == WDType::i8 ? w.row_scale : nullptr, .y = y, .ldy = ldy};
    uint16_t* a = tile_a_buffer(size_t(mt * kbs * 512));
    tiles_pack_x_avx512(n, w.in, x, ldx, a, kbs, mt, split);
    p.a = a;
    // Row blocks in pairs (the kernel's 2 x 2 tile blocking), split evenly over the workers.
    const int64_t nbs = (w.out + kTileRows - 1) / kTileRows, units = (nbs + 1) / 2;
    float* acc = tile_acc_buffer(size_t(nbs * mt * 256));
    const int nw = int(std::min<int64_t>(threads > 0 ? threads : pool.size(), units));
    pool.run(nw, [&](int wk) {
      const int64_t b0 = std::min(nbs, 2 * (units * wk / nw)), b1 = std::min(nbs, 2 * (units * (wk + 1) / nw));
      if (b0 >= b1) return;
      TileProduct q = p;
      q.acc = acc + b0 * mt * 256;
      if (k == LinearIsa::amx) linear_tiles_amx(q, b0, b1);
      else linear_tiles_amxemu(q, b0, b1);
    });
    return;
  }
  const bool fast = k == LinearIsa::avx512;
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
                  LinearIsa isa) {
  if (n <= 0 || heads <= 0 || ws[0].out <= 0) return;
  const LinearWeight& w0 = ws[0];
  LinearIsa k = pick(w0, n, isa);
  const bool split = n <= kTileSplitMaxTokens;
  for (int h = 1; h < heads && (k == LinearIsa::amx || k == LinearIsa::amx_emu); ++h)
    if (!ws[h].tiles && !ws[h].tiles_i8) k = pick(ws[h], n, isa == LinearIsa::best ? LinearIsa::avx512 : isa);
  ThreadPool& pool = thread_pool(threads);
  if (k == LinearIsa::amx || k == LinearIsa::amx_emu) {
    const int64_t kbs = (w0.in + kTileCols - 1) / kTileCols, mt = (split ? 2 : 1) * ((n + 15) / 16);
    const int64_t a_head = mt * kbs * 512;
    uint16_t* a = tile_a_buffer(size_t(heads * a_head));
    for (int h = 0; h < heads; ++h)
      tiles_pack_x_avx512(n, w0.in, x + h * x_head, ldx, a + h * a_head, kbs, mt, split);
    const int64_t nbs = (w0.out + kTileRows - 1) / kTileRows, per_head = (nbs + 1) / 2,
                  units = per_head * heads;
    float* acc = tile_acc_buffer(size_t(heads * nbs * mt * 256));
    const int nw = int(std::min<int64_t>(threads > 0 ? threads : pool.size(), units));
    pool.run(nw, [&](int wk) {
      const int64_t u0 = units * wk / nw, u1 = units * (wk + 1) / nw;
      for (int64_t u = u0; u < u1;) {
        const int64_t h = u / per_head, hu1 = std::min(u1, (h + 1) * per_head);
        const TileProduct p{.a = a + h * a_head, .m_tiles = mt, .n = n, .split = split,
                            .b = ws[h].tiles_i8 ? nullptr : ws[h].tiles, .b_i8 = ws[h].tiles_i8, .k_blocks = kbs, .out = w0.out,
                            .row_scale = ws[h].dtype == WDType::i8 ? ws[h].row_scale : nullptr,
                            .y = y + h * y_head, .ldy = ldy, .acc = nullptr};
        const int64_t b0 = std::min(nbs, 2 * (u - h * per_head)), b1 = std::min(nbs, 2 * (hu1 - h * per_head));
        TileProduct q = p;
        q.acc = acc + (h * nbs + b0) * mt * 256;
        if (k == LinearIsa::amx) linear_tiles_amx(q, b0, b1);
        else linear_tiles_amxemu(q, b0, b1);
        u = hu1;
      }
    });
    return;
  }
  const bool fast = k == LinearIsa::avx512;
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
