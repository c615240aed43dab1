// The projection kernels (src/cpu/linear) against a float64 reference, on every kernel the CPU
// runs: portable, AVX-512, the tile kernel over the scalar emulation (any AVX-512 CPU) and on the
// AMX instructions (where the CPU has them). Batches 1..64 across the 16-token tile edge, rows
// and columns that are not multiples of 16 or 32, every weight type incl. per-row int8, NaN in
// weights and inputs, and guards around the outputs.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/linear/linear.h"
#include "harness/random_case.h"
#include "mla/dtype.h"

namespace mla {
namespace {

using cpu::LinearIsa;
using cpu::LinearWeight;
using cpu::WDType;

std::vector<LinearIsa> isas() {
  std::vector<LinearIsa> v{LinearIsa::portable};
  if (cpu::cpu_has_avx512_set()) v.push_back(LinearIsa::avx512), v.push_back(LinearIsa::amx_emu);
  if (cpu::cpu_has_amx_set()) v.push_back(LinearIsa::amx);
  return v;
}
bool on_tiles(LinearIsa k) { return k == LinearIsa::amx || k == LinearIsa::amx_emu; }

// A weight of one type with its storage (and its tiles and int8 scales).
struct TestWeight {
  std::vector<unsigned char> bytes;
  std::vector<float> scales, row_scale;
  AlignedVec<uint16_t> tiles;
  AlignedVec<int8_t> tiles_i8;
  LinearWeight w;
};

TestWeight make_weight(WDType dt, int64_t out, int64_t in, std::mt19937_64& rng) {
  std::normal_distribution<float> nd(0.f, 1.f);
  TestWeight t;
  t.bytes.resize(out * in * cpu::wdtype_size(dt));
  t.scales.resize(((out + 127) / 128) * ((in + 127) / 128));
  for (auto& s : t.scales) s = 0.01f + 0.01f * float(rng() % 100);
  t.row_scale.resize(out);
  for (auto& s : t.row_scale) s = 0.001f + 0.001f * float(rng() % 100);
  for (int64_t i = 0; i < out * in; ++i) {
    const float v = nd(rng);
    if (dt == WDType::bf16) { const uint16_t h = f32_to_bf16(v); std::memcpy(&t.bytes[i * 2], &h, 2); }
    if (dt == WDType::f16) { const uint16_t h = f32_to_f16(v); std::memcpy(&t.bytes[i * 2], &h, 2); }
    if (dt == WDType::f32) std::memcpy(&t.bytes[i * 4], &v, 4);
    if (dt == WDType::fp8_e4m3) t.bytes[i] = f32_to_fp8e4m3(v * 50);
    if (dt == WDType::i8) t.bytes[i] = uint8_t(int8_t(rng() % 255 - 127));
  }
  t.w = LinearWeight{.out = out, .in = in, .dtype = dt, .w = t.bytes.data(), .ld = in,
                     .scale_inv = t.scales.data(), .scale_ld = (in + 127) / 128,
                     .row_scale = t.row_scale.data()};
  t.tiles.resize(cpu::tile_elems(out, in));
  if (dt == WDType::i8) {  // as the layer keeps them: int8 tiles
    t.tiles_i8.resize(cpu::tile_elems(out, in));
    cpu::pack_tiles_i8(t.w, t.tiles_i8.data());
    t.w.tiles_i8 = t.tiles_i8.data();
  } else {
    cpu::pack_tiles(t.w, t.tiles.data());
    t.w.tiles = t.tiles.data();
  }
  return t;
}

float bf16_round(float v) { return bf16_to_f32(f32_to_bf16(v)); }

// Every kernel, type, batch and shape against float64. The tile kernels round W to bf16 and x
// to bf16 (beyond 16 tokens) or to two bf16 parts hi + lo: they are held to the float64 sum of
// those operands (fp32 accumulation: 1e-5 of the sum of magnitudes) and to the exact one within
// the roundings (2^-8 each, relative; the split's 2^-16).
TEST(Linear, EveryKernelMatchesFloat64) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Shape { int64_t out, in; };
  for (const Shape sh : {Shape{37, 300}, Shape{48, 64}, Shape{5, 7}, Shape{20, 1100}})
    for (WDType dt : {WDType::bf16, WDType::f16, WDType::f32, WDType::fp8_e4m3, WDType::i8}) {
      TestWeight tw = make_weight(dt, sh.out, sh.in, rng);
      const LinearWeight& w = tw.w;
      for (int64_t n : {1, 2, 3, 15, 16, 17, 33, 64}) {
        const int64_t ldx = sh.in + 5, ldy = sh.out + 3;
        std::vector<float> x(n * ldx, std::nanf(""));  // NaN between rows: must never be read
        for (int64_t t = 0; t < n; ++t)
          for (int64_t c = 0; c < sh.in; ++c) x[t * ldx + c] = nd(rng);
        for (LinearIsa k : isas()) {
          std::vector<float> y(n * ldy + 8, -777.f);
          cpu::linear(w, n, x.data(), ldx, y.data(), ldy, 2, k);
          for (int64_t t = 0; t < n; ++t)
            for (int64_t r = 0; r < ldy; ++r) {
              const float got = y[t * ldy + r];
              if (r >= sh.out) {
                ASSERT_EQ(got, -777.f) << "wrote past the row end";
                continue;
              }
              double s = 0, a = 0, sr = 0;
              for (int64_t c = 0; c < sh.in; ++c) {
                const double wv = w.at(r, c), xv = x[t * ldx + c];
                s += wv * xv, a += std::fabs(wv * xv);
                const double wq = dt == WDType::i8 ? double(static_cast<const int8_t*>(w.w)[r * sh.in + c]) * w.row_scale[r]
                                                   : bf16_round(float(wv));
                const bool split = n <= cpu::kTileSplitMaxTokens;
                const float hi = bf16_round(float(xv)), lo = split ? bf16_round(float(xv) - hi) : 0.f;
                sr += (on_tiles(k) ? wq * (double(hi) + lo) : wv * xv);
              }
              ASSERT_NEAR(got, sr, 1e-5 * a + 1e-30)
                  << cpu::wdtype_name(dt) << " " << cpu::linear_isa_name(k) << " n " << n << " out "
                  << sh.out << " in " << sh.in << " t " << t << " r " << r;
              const double x_err = on_tiles(k) && n > cpu::kTileSplitMaxTokens ? 0x1p-8 : 0x1p-15;
              ASSERT_NEAR(got, s, (0x1p-8 + x_err) * a + 1e-30) << cpu::linear_isa_name(k);
            }
          for (int i = 0; i < 8; ++i) ASSERT_EQ(y[n * ldy + i], -777.f) << "past the end";
        }
      }
    }
}

// Per-head products on the tiles give what one product per head gives.
TEST(Linear, TileHeadsMatchOneProductPerHead) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int heads = 3;
  const int64_t out = 37, in = 50;
  std::vector<TestWeight> tws;
  for (int h = 0; h < heads; ++h) tws.push_back(make_weight(WDType::bf16, out, in, rng));
  std::vector<LinearWeight> ws;
  for (auto& t : tws) ws.push_back(t.w);
  for (int64_t n : {2, 17, 40}) {
    std::vector<float> x(n * heads * in);
    for (auto& v : x) v = nd(rng);
    for (LinearIsa k : isas()) {
      if (!on_tiles(k)) continue;
      std::vector<float> y(n * heads * out, std::nanf("")), want(y.size(), std::nanf(""));
      cpu::linear_heads(ws.data(), heads, n, x.data(), heads * in, in, y.data(), heads * out, out, 2, k);
      for (int h = 0; h < heads; ++h)
        cpu::linear(ws[h], n, x.data() + h * in, heads * in, want.data() + h * out, heads * out, 2, k);
      for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(y[i], want[i]) << i << " " << cpu::linear_isa_name(k);
    }
  }
}

// A NaN or infinite weight makes its row's outputs NaN (int8: a NaN row scale), a NaN input its
// token's outputs, on every kernel; everything else stays finite.
TEST(Linear, NonFiniteWeightsAndInputsGiveNan) {
  const int64_t out = 40, in = 70, n = 20;
  std::vector<uint16_t> w16(out * in, f32_to_bf16(1.f));
  w16[3 * in + 17] = 0x7fc0;                 // NaN
  w16[30 * in + 65] = f32_to_bf16(INFINITY);  // Inf (times 0.25 in every token: +Inf, or NaN in token 5)
  const LinearWeight wb{.out = out, .in = in, .dtype = WDType::bf16, .w = w16.data(), .ld = in};
  std::vector<int8_t> q(out * in);
  std::vector<float> rs(out);
  cpu::quantize_rows_i8(wb, q.data(), rs.data());
  EXPECT_TRUE(std::isnan(rs[3]) && std::isnan(rs[30]) && rs[0] == 1.f / 127.f);
  const LinearWeight wq{.out = out, .in = in, .dtype = WDType::i8, .w = q.data(), .ld = in, .row_scale = rs.data()};
  for (LinearWeight w : {wb, wq}) {
    AlignedVec<uint16_t> tiles(cpu::tile_elems(out, in));
    AlignedVec<int8_t> tiles_i8(cpu::tile_elems(out, in));
    if (w.dtype == WDType::i8) {
      cpu::pack_tiles_i8(w, tiles_i8.data());
      w.tiles_i8 = tiles_i8.data();
    } else {
      cpu::pack_tiles(w, tiles.data());
      w.tiles = tiles.data();
    }
    std::vector<float> x(n * in, 0.25f);
    x[5 * in + 9] = std::nanf("");
    for (LinearIsa k : isas()) {
      std::vector<float> y(n * out, -1.f);
      cpu::linear(w, n, x.data(), in, y.data(), out, 2, k);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t r = 0; r < out; ++r) {
          const float v = y[t * out + r];
          const bool bad = r == 3 || t == 5 || (r == 30 && w.dtype == WDType::i8);
          if (bad) EXPECT_TRUE(std::isnan(v)) << cpu::wdtype_name(w.dtype) << " " << cpu::linear_isa_name(k) << " t " << t << " r " << r;
          else if (r == 30) EXPECT_FALSE(std::isfinite(v)) << cpu::linear_isa_name(k);  // Inf, or NaN (Inf x lo = 0 on the tiles)
          else EXPECT_NEAR(v, 0.25f * in, 1e-3) << cpu::wdtype_name(w.dtype) << " " << cpu::linear_isa_name(k) << " t " << t << " r " << r;
        }
    }
  }
}

// The layer's query rounding: the bits f32_to_bf16 gives (NaN kept NaN, infinities, ties to even),
// for every length around the 32- and 16-wide steps.
TEST(Linear, RoundBf16MatchesScalar) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 100.f);
  for (int64_t n : {1, 15, 16, 17, 31, 32, 33, 100}) {
    std::vector<float> x(n);
    for (auto& v : x) v = nd(rng);
    x[0] = std::nanf("");
    if (n > 2) x[1] = -INFINITY, x[2] = bf16_to_f32(0x3f80) + 0x1p-8f;  // a tie: rounds to even
    std::vector<uint16_t> y(n + 4, 0xdead);
    cpu::round_bf16(x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      if (std::isnan(x[i])) ASSERT_TRUE(std::isnan(bf16_to_f32(y[i]))) << i;
      else ASSERT_EQ(y[i], f32_to_bf16(x[i])) << "n " << n << " i " << i << " x " << x[i];
    }
    for (int i = 0; i < 4; ++i) ASSERT_EQ(y[n + i], 0xdead) << "wrote past the end";
  }
}

// int8 per-row quantization: within half a step of each weight, the row maximum exact.
TEST(Linear, Int8RowsWithinHalfAStep) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  TestWeight tw = make_weight(WDType::bf16, 33, 200, rng);
  std::vector<int8_t> q(33 * 200);
  std::vector<float> s(33);
  cpu::quantize_rows_i8(tw.w, q.data(), s.data());
  for (int64_t r = 0; r < 33; ++r) {
    float mx = 0;
    for (int64_t c = 0; c < 200; ++c) {
      const float v = tw.w.at(r, c);
      mx = std::max(mx, std::fabs(v));
      ASSERT_LE(std::fabs(v - q[r * 200 + c] * s[r]), 0.5001f * s[r]) << r << " " << c;
    }
    ASSERT_FLOAT_EQ(s[r] * 127.f, mx);
  }
}

}  // namespace
}  // namespace mla

namespace mla {
namespace {

// Not a check: times DeepSeek-V3's o_proj and q_b shapes per kernel and batch
// (--gtest_also_run_disabled_tests --gtest_filter=*Speed*).
TEST(Linear, DISABLED_Speed) {
  std::mt19937_64 rng(1);
  {  // hot: a 256 KB weight in cache, the tile rate alone
    TestWeight tw = make_weight(WDType::bf16, 64, 2048, rng);
    for (int64_t n : {16, 64}) {
      std::vector<float> x(n * 2048, 0.5f), y(n * 64);
      for (int threads : {1, 2}) {
        cpu::linear(tw.w, n, x.data(), 2048, y.data(), 64, threads, LinearIsa::amx);
        const auto t0 = std::chrono::steady_clock::now();
        for (int rep = 0; rep < 200; ++rep) cpu::linear(tw.w, n, x.data(), 2048, y.data(), 64, threads, LinearIsa::amx);
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 200;
        std::printf("hot n %ld threads %d: %.1f us, %.0f GFLOP/s (x2 split)\n", long(n), threads, s * 1e6,
                    2.0 * 64 * 2048 * n * 2 / s / 1e9);
      }
    }
  }
  {  // the kernel alone, one thread, hot
    TestWeight tw = make_weight(WDType::bf16, 64, 2048, rng);
    for (int64_t n : {16, 64}) {
      const int64_t mt = 2 * ((n + 15) / 16), kb = 64;
      std::vector<float> x(n * 2048, 0.5f), y(n * 64);
      AlignedVec<uint16_t> a(mt * kb * 512);
      AlignedVec<float> acc(4 * mt * 256);
      auto t0 = std::chrono::steady_clock::now();
      for (int rep = 0; rep < 200; ++rep) cpu::tiles_pack_x_avx512(n, 2048, x.data(), 2048, a.data(), kb, mt, true);
      const double tp = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 200;
      cpu::TileProduct p{.a = a.data(), .m_tiles = mt, .n = n, .split = true, .b = tw.w.tiles,
                         .k_blocks = kb, .out = 64, .y = y.data(), .ldy = 64, .acc = acc.data()};
      t0 = std::chrono::steady_clock::now();
      for (int rep = 0; rep < 200; ++rep) cpu::linear_tiles_amx(p, 0, 4);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 200;
      std::printf("kernel n %ld: pack %.1f us, tiles %.1f us = %.1f ns per tdpbf16ps\n", long(n), tp * 1e6, s * 1e6,
                  s * 1e9 / (4 * kb * mt));
    }
  }
  struct Shape { int64_t out, in; const char* name; };
  const WDType dt = std::getenv("MLA_SPEED_INT8") ? WDType::i8 : WDType::bf16;
  for (const Shape sh : {Shape{7168, 16384, "o_proj"}, Shape{24576, 1536, "q_b"}, Shape{1536, 7168, "q_a"}}) {
    TestWeight tw = make_weight(dt, sh.out, sh.in, rng);
    std::vector<char> flush(size_t(1) << 30, 1);
    for (int64_t n : {1, 2, 8, 32, 64}) {
      std::vector<float> x(n * sh.in, 0.5f), y(n * sh.out);
      for (LinearIsa k : {LinearIsa::avx512, LinearIsa::amx}) {
        double best = 1e9;
        for (int rep = 0; rep < 5; ++rep) {
          for (size_t i = 0; i < flush.size(); i += 64) flush[i]++;
          const auto t0 = std::chrono::steady_clock::now();
          cpu::linear(tw.w, n, x.data(), sh.in, y.data(), sh.out, 2, k);
          best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::printf("%-7s %s n %3ld %-7s %8.3f ms  %6.1f GB/s\n", sh.name, cpu::wdtype_name(dt), long(n),
                    cpu::linear_isa_name(k), best * 1e3, sh.out * sh.in * double(cpu::wdtype_size(dt)) / best / 1e9);
      }
    }
  }
}

}  // namespace
}  // namespace mla
