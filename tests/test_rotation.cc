// The rotated latent cache (issue 20): R = D H / sqrt(512) is orthogonal and the fast transforms
// (portable, AVX-512) match a float64 matmul with it and each other bit for bit; a rotated cache
// stores c R and reads back c; decode with a rotated cache (every int8 scale mode, fp8 in both
// scale modes, bf16; block sizes 1, 16, 64) matches the float64 reference on the unrotated
// problem; q and o given in the rotated space (DecodeOptions::qo_rotated) give the same result.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/linear/hadamard.h"
#include "harness/random_case.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "ref/compare.h"
#include "ref/reference.h"

namespace mla {
namespace {

constexpr KvRotation kHad = KvRotation::hadamard;

// R[i][j] = d_i (-1)^popcount(i & j) / sqrt(512), in float64: x R is row vector x times R.
std::vector<double> explicit_r() {
  std::vector<double> r(size_t(kLatentDim) * kLatentDim);
  const double n = 1.0 / std::sqrt(512.0);
  for (int i = 0; i < kLatentDim; ++i)
    for (int j = 0; j < kLatentDim; ++j)
      r[size_t(i) * kLatentDim + j] =
          hadamard_signs()[i] * ((__builtin_popcount(unsigned(i & j)) & 1) ? -n : n);
  return r;
}

std::vector<float> normal(size_t n, uint64_t seed, float sd = 1.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

TEST(Rotation, SignsAreFixedPlusMinusOne) {
  int neg = 0;
  for (int i = 0; i < kLatentDim; ++i) {
    ASSERT_TRUE(hadamard_signs()[i] == 1.f || hadamard_signs()[i] == -1.f) << i;
    neg += hadamard_signs()[i] < 0;
  }
  EXPECT_GT(neg, 200);  // a random diagonal, not all +1
  EXPECT_LT(neg, 312);
  // The first signs, so a change of seed or generator shows (other programs rebuild them).
  const float first[8] = {hadamard_signs()[0], hadamard_signs()[1], hadamard_signs()[2],
                          hadamard_signs()[3], hadamard_signs()[4], hadamard_signs()[5],
                          hadamard_signs()[6], hadamard_signs()[7]};
  uint64_t state = kHadamardSeed;
  for (int i = 0; i < 8; ++i) {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    EXPECT_EQ(first[i], (z >> 63) ? -1.f : 1.f) << i;
  }
}

TEST(Rotation, IsOrthogonalAndMatchesFloat64Matmul) {
  const std::vector<double> r = explicit_r();
  // R R^T = I.
  double worst = 0;
  for (int i = 0; i < kLatentDim; i += 7)
    for (int j = 0; j < kLatentDim; ++j) {
      double acc = 0;
      for (int k = 0; k < kLatentDim; ++k) acc += r[size_t(i) * kLatentDim + k] * r[size_t(j) * kLatentDim + k];
      worst = std::max(worst, std::fabs(acc - (i == j)));
    }
  EXPECT_LT(worst, 1e-12);
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  const int rows = 5;
  std::vector<float> x = normal(size_t(rows) * kQkDim, seed);
  x[3] = 1e4f;  // an outlier channel
  std::vector<float> y = x;
  rotate_latent(kHad, y.data(), rows, kQkDim);
  std::vector<double> yd(x.begin(), x.end());
  rotate_latent(kHad, yd.data(), rows, kQkDim);
  for (int row = 0; row < rows; ++row) {
    double err = 0, norm = 0;
    for (int j = 0; j < kLatentDim; ++j) {
      double want = 0;
      for (int i = 0; i < kLatentDim; ++i) want += double(x[row * kQkDim + i]) * r[size_t(i) * kLatentDim + j];
      err += std::pow(y[row * kQkDim + j] - want, 2);
      norm += want * want;
      EXPECT_NEAR(yd[row * kQkDim + j], want, 1e-9 * std::sqrt(512.0) * 1e4);
    }
    EXPECT_LT(std::sqrt(err / norm), 3e-6) << "row " << row;
    for (int c = kLatentDim; c < kQkDim; ++c)  // the rope part is never touched
      ASSERT_EQ(y[row * kQkDim + c], x[row * kQkDim + c]);
  }
  // The inverse brings x back (float: a few ulps), and none leaves x unchanged.
  unrotate_latent(kHad, y.data(), rows, kQkDim);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 3e-6 * (std::fabs(x[i]) + 1e4 / 20)) << i;
  std::vector<float> z = x;
  rotate_latent(KvRotation::none, z.data(), rows, kQkDim);
  EXPECT_EQ(z, x);
}

// The decode path's rows (AVX-512 where the CPU has it) and the portable transform give the same
// bits, forward and inverse, on dense and strided rows; so does the query conversion.
TEST(Rotation, FastRowsMatchPortableBitForBit) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  if (!cpu::hadamard_avx512_supported()) GTEST_SKIP() << "no AVX-512 on this CPU";
  const int64_t rows = 300;  // several workers
  const std::vector<float> x = normal(size_t(rows) * 600, seed, 3.f);
  for (bool inverse : {false, true}) {
    std::vector<float> a = x, b = x;
    const cpu::LatentRows lr{.base = nullptr, .n0 = 3, .n1 = 1, .n2 = rows / 3, .s0 = 600 * (rows / 3), .s1 = 0, .s2 = 600};
    cpu::LatentRows la = lr, lb = lr;
    la.base = a.data();
    lb.base = b.data();
    cpu::hadamard_rows(kHad, inverse, la, 2, false);
    cpu::hadamard_rows(kHad, inverse, lb, 2, true);
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4)) << "inverse " << inverse;
    std::vector<float> c = x;
    if (inverse)
      unrotate_latent(kHad, c.data(), rows, 600);
    else
      rotate_latent(kHad, c.data(), rows, 600);
    ASSERT_EQ(0, std::memcmp(a.data(), c.data(), a.size() * 4));
  }
  for (DType qt : {DType::f32, DType::bf16, DType::f16}) {
    std::vector<float> q = normal(size_t(rows) * kQkDim, seed + 1);
    q[5] = std::nanf("");
    std::vector<uint16_t> q16(q.size()), fast(q.size());
    for (size_t i = 0; i < q.size(); ++i) q16[i] = qt == DType::f16 ? f32_to_f16(q[i]) : f32_to_bf16(q[i]);
    const void* src = qt == DType::f32 ? static_cast<const void*>(q.data()) : q16.data();
    cpu::rotate_query(kHad, qt, src, rows, DType::bf16, fast.data(), 2);
    std::vector<float> want(q.size());
    for (size_t i = 0; i < q.size(); ++i) want[i] = load_f32(qt, src, int64_t(i));
    rotate_latent(kHad, want.data(), rows, kQkDim);
    for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(fast[i], f32_to_bf16(want[i])) << dtype_name(qt) << " " << i;
  }
}

// A rotated cache stores c R (what the kernels read) and reads back c; the rope is untouched.
TEST(Rotation, CacheStoresRotatedReadsOriginal) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  std::vector<float> tok = normal(kQkDim, seed);
  tok[10] = 40.f;
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8, KvDType::fp8}) {
    PagedLatentCache c({.num_blocks = 1, .block_size = 4, .dtype = kv, .rotation = kHad});
    EXPECT_EQ(c.write(2, tok.data()), 0) << kv_dtype_name(kv);
    std::vector<float> stored(kQkDim), back(kQkDim), rotated = tok;
    c.view().read_stored(2, stored.data());
    c.read(2, back.data());
    rotate_latent(kHad, rotated.data());
    const double tol = kv == KvDType::fp8 ? 0.07 : kv == KvDType::int8 ? 0.02 : 0.004;
    double e_stored = 0, e_back = 0, n = 0;
    for (int d = 0; d < kLatentDim; ++d) {
      e_stored += std::pow(stored[d] - rotated[d], 2);
      e_back += std::pow(back[d] - tok[d], 2);
      n += tok[d] * tok[d];
    }
    EXPECT_LT(std::sqrt(e_stored / n), tol) << kv_dtype_name(kv);
    EXPECT_LT(std::sqrt(e_back / n), tol) << kv_dtype_name(kv);
    for (int d = kLatentDim; d < kQkDim; ++d)
      EXPECT_EQ(back[d], kv == KvDType::fp16 ? f16_to_f32(f32_to_f16(tok[d]))
                                             : bf16_to_f32(f32_to_bf16(tok[d])));
    // One NaN latent value counts once, though it spreads over the whole rotated latent.
    std::vector<float> bad = tok;
    bad[7] = std::nanf("");
    if (kv == KvDType::int8 || kv == KvDType::fp8) {
      EXPECT_EQ(c.write(1, bad.data()), 1);
    } else {
      EXPECT_EQ(c.write(1, bad.data()), 0);
    }
    c.read(1, back.data());
    EXPECT_TRUE(std::isnan(back[100]));
  }
}

// The float64 reference on what the kernel saw (q via kernel_query_values, the cache via
// CacheView::read, both in the original space) against the fast path with a rotated cache.
void check_case(const test::CaseSpec& spec, uint64_t seed) {
  const test::Case c = test::make_case(spec, seed);
  SCOPED_TRACE(c.describe());
  const int64_t rows = int64_t(spec.batch) * spec.q_len * spec.heads;
  std::vector<double> ro(rows * kLatentDim), rl(rows);
  ref::decode(c.p, c.q_ref.data(), c.view, ro.data(), rl.data());
  const ref::Tolerance tol = ref::tolerance_for(spec.kv, false);
  for (Isa isa : test::runnable_isas(spec.kv, spec.scale)) {
    SCOPED_TRACE(isa_name(isa));
    std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));
    decode(c.p, c.q_dtype, c.q16.data(), c.view, {.threads = 2, .isa = isa}, o.data(), lse.data());
    const ref::Comparison cmp = ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows, kLatentDim, tol);
    EXPECT_TRUE(cmp.pass) << cmp.summary();
  }
}

TEST(Rotation, DecodeMatchesReferenceForEveryFormat) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  struct F {
    KvDType kv;
    KvScale scale;
    Fp8Scale fp8 = Fp8Scale::exact;
  };
  const F formats[] = {{KvDType::int8, KvScale::token},   {KvDType::int8, KvScale::group32},
                       {KvDType::int8, KvScale::group64}, {KvDType::int8, KvScale::group128},
                       {KvDType::int8, KvScale::tensor},  {KvDType::int8, KvScale::channel},
                       {KvDType::fp8, KvScale::token},    {KvDType::fp8, KvScale::token, Fp8Scale::pow2},
                       {KvDType::bf16, KvScale::token},   {KvDType::fp16, KvScale::token}};
  int k = 0;
  for (const F& f : formats)
    for (int bs : {1, 16, 64}) {
      test::CaseSpec s{.batch = 2, .q_len = 2, .heads = 8, .block_size = bs, .seq_lens = {70, 133},
                       .kv = f.kv, .scale = f.scale, .rotation = kHad, .fp8_scale = f.fp8,
                       .outliers = (k++ % 2) == 0};
      check_case(s, seed + k);
    }
}

// End to end on outlier latents: the rotation brings int8 token mode close to the unquantized
// result (without it the outliers set every token's scale).
TEST(Rotation, OutlierChannelsLoseLessWithRotation) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  double err[2];
  for (KvRotation rot : {KvRotation::none, kHad}) {
    test::CaseSpec s{.batch = 2, .q_len = 2, .heads = 16, .block_size = 64, .seq_lens = {300, 257},
                     .kv = KvDType::int8, .rotation = rot, .outliers = true};
    const test::Case c = test::make_case(s, seed);
    const int64_t rows = 2 * 2 * 16;
    std::vector<double> uo(rows * kLatentDim), ul(rows);
    ref::decode_original(c.p, c.q.data(), c.kv.data(), c.cache.num_blocks(), 64, uo.data(), ul.data());
    std::vector<float> o(rows * kLatentDim), lse(rows);
    decode(c.p, c.q_dtype, c.q16.data(), c.view, {.threads = 2}, o.data(), lse.data());
    err[rot == kHad] = ref::compare(o.data(), lse.data(), uo.data(), ul.data(), rows, kLatentDim,
                                    ref::tolerance_for(KvDType::int8, false)).rel_err;
  }
  EXPECT_LT(err[1], 0.6 * err[0]) << "none " << err[0] << " hadamard " << err[1];
}

// q and o in the rotated space (the layer's way) give what decode's own rotation gives; the
// reference implementation takes both ways too.
TEST(Rotation, QoRotatedMatchesDecodeOwnRotation) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  test::CaseSpec s{.batch = 2, .q_len = 2, .heads = 4, .block_size = 16, .seq_lens = {40, 77},
                   .kv = KvDType::int8, .scale = KvScale::group64, .rotation = kHad};
  const test::Case c = test::make_case(s, seed);
  const int64_t rows = 2 * 2 * 4;
  std::vector<float> qr = c.q;
  rotate_latent(kHad, qr.data(), rows, kQkDim);
  for (Impl impl : {Impl::fast, Impl::ref}) {
    std::vector<float> o1(rows * kLatentDim), l1(rows), o2(rows * kLatentDim), l2(rows);
    decode(c.p, DType::f32, c.q.data(), c.view, {.impl = impl, .threads = 2}, o1.data(), l1.data());
    decode(c.p, DType::f32, qr.data(), c.view, {.impl = impl, .threads = 2, .qo_rotated = true},
           o2.data(), l2.data());
    unrotate_latent(kHad, o2.data(), rows, kLatentDim);
    for (int64_t i = 0; i < rows; ++i) EXPECT_NEAR(l1[i], l2[i], 1e-5) << i;
    for (int64_t i = 0; i < rows * kLatentDim; ++i) ASSERT_NEAR(o1[i], o2[i], 1e-5) << i;
  }
}

}  // namespace
}  // namespace mla
