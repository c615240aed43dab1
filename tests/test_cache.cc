// The paged latent cache: formats, quantization bounds, lossless int8 import/export, the block
// allocator, and refusal of bad input.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "mla/cache.h"
#include "mla/dtype.h"
#include "mla/status.h"
#include "harness/random_case.h"

namespace mla {
namespace {

std::vector<float> random_tokens(int64_t n, uint64_t seed, float spread = 3.f) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> v(n * kQkDim);
  // Per-token magnitudes vary, so per-token and per-tensor scales differ.
  for (int64_t t = 0; t < n; ++t) {
    const float mag = std::exp(nd(rng) * 0.5f) * spread;
    for (int d = 0; d < kQkDim; ++d) v[t * kQkDim + d] = nd(rng) * mag;
  }
  return v;
}

TEST(Cache, Bf16AndFp16StoreRoundedValues) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  for (KvDType t : {KvDType::bf16, KvDType::fp16}) {
    PagedLatentCache c({.num_blocks = 3, .block_size = 16, .dtype = t});
    auto kv = random_tokens(c.num_slots(), seed);
    c.import_f32(kv.data());
    std::vector<float> back(kv.size());
    c.export_f32(back.data());
    const DType rt = t == KvDType::bf16 ? DType::bf16 : DType::f16;
    for (size_t i = 0; i < kv.size(); ++i) ASSERT_EQ(back[i], round_through(rt, kv[i])) << i;
  }
}

class Int8Cache : public ::testing::TestWithParam<std::tuple<KvScale, int>> {};

TEST_P(Int8Cache, WithinHalfAStepAndLosslessExport) {
  const auto [mode, block_size] = GetParam();
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  PagedLatentCache c({.num_blocks = 5, .block_size = block_size, .dtype = KvDType::int8, .scale = mode});
  const int64_t n = c.num_slots();
  auto kv = random_tokens(n, seed);
  std::vector<int64_t> all(n);
  for (int64_t i = 0; i < n; ++i) all[i] = i;
  c.calibrate(kv.data(), all);
  c.import_f32(kv.data());
  std::vector<float> back(kv.size());
  c.export_f32(back.data());
  for (int64_t s = 0; s < n; ++s) {
    for (int d = 0; d < kLatentDim; ++d) {
      const int gs = kv_scale_group(mode);
      const float step = gs                        ? c.view().token_scales(s)[d / gs]
                         : mode == KvScale::tensor ? c.tensor_scale()
                                                   : c.channel_scales()[d];
      ASSERT_GT(step, 0.f);
      // Half a step, plus the float rounding of x / step (which picks the neighbour when x sits
      // within an ulp of a midpoint) and of q * step: an ulp of |x| each.
      const float x = kv[s * kQkDim + d], y = back[s * kQkDim + d];
      ASSERT_LE(std::fabs(y - x), 0.5f * step + 2 * FLT_EPSILON * (std::fabs(x) + std::fabs(y)))
          << "slot " << s << " dim " << d;
    }
    for (int d = kLatentDim; d < kQkDim; ++d)
      ASSERT_EQ(back[s * kQkDim + d], round_through(DType::bf16, kv[s * kQkDim + d]));
  }
  // Export the logical content, import it into a fresh cache: identical values.
  Int8CacheContent content = c.export_int8();
  PagedLatentCache d({.num_blocks = 5, .block_size = block_size, .dtype = KvDType::int8, .scale = mode});
  d.import_int8(content);
  std::vector<float> back2(kv.size());
  d.export_f32(back2.data());
  for (size_t i = 0; i < back.size(); ++i) ASSERT_EQ(back[i], back2[i]) << i;
  EXPECT_EQ(d.export_int8().latent, content.latent);
  EXPECT_EQ(d.export_int8().token_scale, content.token_scale);
  EXPECT_EQ(content.token_scale.size(), size_t(n * kv_token_scales(mode)));
  if (kv_token_scales(mode)) {  // the wrong count of scales is refused, naming it
    content.token_scale.pop_back();
    EXPECT_THROW(d.import_int8(content), Error);
  }
}

// Group scales follow each group's own maximum: a group of small values next to a group of
// large ones keeps its resolution (the point of the format).
TEST(Cache, GroupScalesAreEachGroupsMaximum) {
  for (KvScale mode : {KvScale::group32, KvScale::group64, KvScale::group128}) {
    PagedLatentCache c({.num_blocks = 1, .block_size = 2, .dtype = KvDType::int8, .scale = mode});
    std::vector<float> x(kQkDim, 0.f);
    for (int d = 0; d < kLatentDim; ++d) x[d] = (d % 7 - 3) * (d < 32 ? 100.f : 0.01f);
    c.write(1, x.data());
    const int gs = kv_scale_group(mode);
    const float* ts = c.view().token_scales(1);
    EXPECT_FLOAT_EQ(ts[0], 300.f / 127.f) << kv_scale_name(mode);
    EXPECT_FLOAT_EQ(ts[1], 0.03f / 127.f) << kv_scale_name(mode);  // channels gs..2gs: small
    std::vector<float> back(kQkDim);
    c.read(1, back.data());
    for (int d = 32; d < 64; ++d)
      EXPECT_NEAR(back[d], x[d], gs == 32 ? 1.2e-4 : 1.2) << kv_scale_name(mode) << " " << d;
  }
}

// fp8: FlashMLA's 656-byte tokens. Each value within half an e4m3 step of its scaled value, the
// scales powers of two with max|x| / scale in (224, 448] (pow2), or max|x| / 448 exactly (exact),
// read back as the kernels widen them (bf16(e4m3 x scale)), the rope bf16, and export -> import a
// byte-exact round trip, in both scale modes.
TEST(Cache, Fp8TokensAreFlashMlaBytesAndRoundTripExactly) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE(seed);
  for (Fp8Scale mode : {Fp8Scale::exact, Fp8Scale::pow2})
  for (int block_size : {1, 16, 64}) {
    SCOPED_TRACE(fp8_scale_name(mode));
    PagedLatentCache c({.num_blocks = 3, .block_size = block_size, .dtype = KvDType::fp8,
                        .fp8_scale = mode});
    const int64_t n = c.num_slots();
    auto kv = random_tokens(n, seed + block_size);
    c.import_f32(kv.data());
    const std::vector<uint8_t> bytes = c.export_fp8();
    ASSERT_EQ(bytes.size(), size_t(n) * 656);
    std::vector<float> back(kv.size());
    c.export_f32(back.data());
    for (int64_t s = 0; s < n; ++s) {
      const uint8_t* tok = bytes.data() + s * 656;
      for (int g = 0; g < 4; ++g) {
        float sc;
        std::memcpy(&sc, tok + 512 + 4 * g, 4);
        int e;
        const float m = std::frexp(sc, &e);
        float amax = 0.f;
        for (int d = g * 128; d < (g + 1) * 128; ++d) amax = std::max(amax, std::fabs(kv[s * kQkDim + d]));
        if (mode == Fp8Scale::pow2) {
          ASSERT_EQ(m, 0.5f) << "scale " << sc << " is not a power of two";
          EXPECT_GT(amax / sc, 224.f);
        } else {
          ASSERT_EQ(sc, std::max(amax / 448.f, 1e-4f));
        }
        EXPECT_LE(amax / sc, 448.0001f);  // exact: max / (max / 448) may round just above 448
        for (int d = g * 128; d < (g + 1) * 128; ++d) {
          ASSERT_EQ(back[s * kQkDim + d], bf16_to_f32(f32_to_bf16(fp8e4m3_to_f32(tok[d]) * sc)))
              << s << " " << d;
          ASSERT_EQ(tok[d], f32_to_fp8e4m3(kv[s * kQkDim + d] / sc)) << s << " " << d;
        }
      }
      for (int i = 0; i < 64; ++i) {
        uint16_t r;
        std::memcpy(&r, tok + 528 + 2 * i, 2);
        ASSERT_EQ(r, f32_to_bf16(kv[s * kQkDim + 512 + i]));
        ASSERT_EQ(back[s * kQkDim + 512 + i], bf16_to_f32(r));
      }
    }
    PagedLatentCache d({.num_blocks = 3, .block_size = block_size, .dtype = KvDType::fp8,
                        .fp8_scale = mode});
    d.import_fp8(bytes.data(), bytes.size());
    EXPECT_EQ(d.export_fp8(), bytes);
    // Refused: wrong size, a negative or NaN scale (naming the slot), nothing imported.
    std::vector<uint8_t> bad = bytes;
    EXPECT_THROW(d.import_fp8(bad.data(), bad.size() - 1), Error);
    const float neg = -1.f;
    std::memcpy(bad.data() + 656 + 512 + 4, &neg, 4);
    try {
      d.import_fp8(bad.data(), bad.size());
      ADD_FAILURE() << "negative scale accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("slot 1 scale[1]"), std::string::npos) << e.what();
    }
    EXPECT_EQ(d.export_fp8(), bytes);
    EXPECT_THROW(c.export_int8(), Error);
  }
}

// A NaN or Inf in a tile makes that tile read back non-finite, never a plausible number.
TEST(Cache, Fp8NonFiniteStaysNonFinite) {
  PagedLatentCache c({.num_blocks = 1, .block_size = 1, .dtype = KvDType::fp8});
  for (float bad : {std::nanf(""), INFINITY, -INFINITY}) {
    std::vector<float> x(kQkDim, 0.5f), back(kQkDim);
    x[130] = bad;
    c.write(0, x.data());
    c.read(0, back.data());
    EXPECT_TRUE(std::isnan(back[130])) << bad;
    EXPECT_TRUE(std::isfinite(back[0])) << "another tile stays finite";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, Int8Cache,
                         ::testing::Combine(::testing::Values(KvScale::token, KvScale::tensor,
                                                              KvScale::channel, KvScale::group32,
                                                              KvScale::group64, KvScale::group128),
                                            ::testing::Values(1, 16, 64, 128)));

TEST(Cache, StaticScaleSaturatesAndCalibrationIgnoresUnusedSlots) {
  PagedLatentCache c({.num_blocks = 2, .block_size = 2, .dtype = KvDType::int8, .scale = KvScale::tensor});
  std::vector<float> kv(c.num_slots() * kQkDim, 1.f);
  for (int d = 0; d < kQkDim; ++d) kv[3 * kQkDim + d] = std::nanf("");  // slot 3 unused garbage
  kv[0] = 2.f;
  c.calibrate(kv.data(), {0, 1, 2});
  EXPECT_FLOAT_EQ(c.tensor_scale(), 2.f / 127.f);
  kv[kQkDim] = 50.f;  // beyond the calibrated range: saturates at 127 steps
  c.write(1, kv.data() + kQkDim);
  std::vector<float> t(kQkDim);
  c.read(1, t.data());
  EXPECT_FLOAT_EQ(t[0], 2.f);
  c.write(3, kv.data() + 3 * kQkDim);  // NaN input stores 0 and does not crash
  c.read(3, t.data());
  EXPECT_EQ(t[0], 0.f);
}

TEST(Cache, RefusesBadInput) {
  EXPECT_THROW(PagedLatentCache({.num_blocks = 0, .block_size = 16}), Error);
  EXPECT_THROW(PagedLatentCache({.num_blocks = 4, .block_size = 0}), Error);
  PagedLatentCache c({.num_blocks = 2, .block_size = 4});
  std::vector<float> tok(kQkDim, 1.f);
  EXPECT_THROW(c.write(8, tok.data()), Error);
  EXPECT_THROW(c.write(-1, tok.data()), Error);
  try {
    c.read(99, tok.data());
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("slot 99"), std::string::npos) << e.what();
  }
  PagedLatentCache t({.num_blocks = 2, .block_size = 4, .dtype = KvDType::int8, .scale = KvScale::tensor});
  EXPECT_THROW(t.write(0, tok.data()), Error);  // no scale set yet
  EXPECT_THROW(t.set_tensor_scale(0.f), Error);
  EXPECT_THROW(t.set_tensor_scale(std::nanf("")), Error);
  std::vector<float> cs(kLatentDim, 1.f);
  EXPECT_THROW(t.set_channel_scales(cs.data()), Error);  // wrong mode
  Int8CacheContent bad;
  EXPECT_THROW(t.import_int8(bad), Error);
  EXPECT_THROW(c.export_int8(), Error);
  EXPECT_THROW(parse_kv_dtype("int4"), Error);
  EXPECT_THROW(parse_kv_scale("row"), Error);
}

TEST(BlockAllocator, AllocatesAppendsFreesAndRunsOut) {
  BlockAllocator a(6, 4, /*shuffle_seed=*/123);
  const int s0 = a.add_sequence(), s1 = a.add_sequence();
  auto slots0 = a.append(s0, 5);  // 2 blocks
  EXPECT_EQ(a.seq_len(s0), 5);
  EXPECT_EQ(a.block_table(s0).size(), 2u);
  EXPECT_EQ(a.free_blocks(), 4);
  auto more = a.append(s0, 3);  // fills block 2 exactly
  EXPECT_EQ(a.block_table(s0).size(), 2u);
  a.append(s1, 16);  // 4 blocks: pool exhausted
  EXPECT_EQ(a.free_blocks(), 0);
  // Every slot distinct and consistent with the block table.
  std::set<int64_t> seen;
  for (int s : {s0, s1})
    for (int t = 0; t < a.seq_len(s); ++t) {
      const int64_t slot = a.slot(s, t);
      EXPECT_TRUE(seen.insert(slot).second) << "slot " << slot << " handed out twice";
      EXPECT_EQ(slot, int64_t(a.block_table(s)[t / 4]) * 4 + t % 4);
    }
  EXPECT_EQ(slots0[4], a.slot(s0, 4));
  EXPECT_EQ(more[0], a.slot(s0, 5));
  // Running out is an error and changes nothing.
  EXPECT_THROW(a.append(s0, 1), Error);
  EXPECT_EQ(a.seq_len(s0), 8);
  a.free(s1);
  EXPECT_EQ(a.free_blocks(), 4);
  EXPECT_THROW(a.seq_len(s1), Error);
  const int s2 = a.add_sequence();
  a.append(s2, 16);
  int mb = 0;
  auto table = a.block_table_array({s0, s2}, &mb);
  EXPECT_EQ(mb, 4);
  EXPECT_EQ(table[2], -1);  // s0 has only 2 blocks
  EXPECT_THROW(a.append(s2, -1), Error);
  EXPECT_THROW(BlockAllocator(0, 4), Error);
}

TEST(BlockAllocator, ShuffledTablesAreScattered) {
  BlockAllocator a(64, 16, 7);
  const int s = a.add_sequence();
  a.append(s, 16 * 32);
  const auto& t = a.block_table(s);
  int ascending = 0;
  for (size_t i = 1; i < t.size(); ++i) ascending += t[i] == t[i - 1] + 1;
  EXPECT_LT(ascending, 8) << "block table looks sequential";
}

}  // namespace
}  // namespace mla
