// Caller-owned memory on both ends of the decode: a cache view over a FlashMLA-style k_cache
// array (strided tokens and blocks) reads exactly what the owning cache reads, and outputs written
// through strides (FlashMLA's lse [b, h, s_q], o with gaps between rows) hold exactly the dense
// result, with nothing written outside the rows.
#include <gtest/gtest.h>

#include <array>

#include <cmath>
#include <cstring>

#include "mla/attention.h"
#include "mla/status.h"
#include "harness/random_case.h"

namespace mla {
namespace {

using test::CaseSpec;

struct Dense {
  std::vector<float> o, lse;
};

Dense run_dense(const test::Case& c, const CacheView& view, const DecodeOptions& opt) {
  const int64_t rows = int64_t(c.p.batch) * c.p.q_len * c.p.num_heads;
  Dense d{std::vector<float>(rows * kLatentDim, std::nanf("")), std::vector<float>(rows, std::nanf(""))};
  decode(c.p, c.q_dtype, c.q16.data(), view, opt, d.o.data(), d.lse.data());
  return d;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

TEST(DecodeLayout, StridedOutputsHoldTheDenseResult) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  for (KvDType kv : {KvDType::bf16, KvDType::fp16, KvDType::int8}) {
    CaseSpec s{.batch = 3, .q_len = 3, .heads = 16, .block_size = 32, .seq_lens = {700, 5, 0},
               .q_lens = {3, 2, 1}};
    s.kv = kv;
    const test::Case c = test::make_case(s, seed);
    const int B = s.batch, Q = s.q_len, H = s.heads;
    std::vector<DecodeOptions> opts = {
        DecodeOptions{.threads = 1}, DecodeOptions{.threads = 3, .reduction = Reduction::last},
        DecodeOptions{.threads = 3, .reduction = Reduction::separate},
        DecodeOptions{.impl = Impl::ref}};
    for (Isa isa : test::runnable_isas(kv)) opts.push_back(DecodeOptions{.threads = 2, .isa = isa});
    for (const DecodeOptions& opt : opts) {
      SCOPED_TRACE(std::string(kv_dtype_name(kv)) + " threads " + std::to_string(opt.threads) +
                   " isa " + isa_name(opt.isa) + (opt.impl == Impl::ref ? " ref" : ""));
      const Dense d = run_dense(c, c.cache, opt);
      // o as [b, h, i, 512 + 8] (a gap after each row), lse as FlashMLA's [b, h, s_q].
      const int64_t orow = kLatentDim + 8;
      DecodeParams p = c.p;
      p.o_strides = {.b = int64_t(H) * Q * orow, .i = orow, .h = int64_t(Q) * orow};
      p.lse_strides = {.b = int64_t(H) * Q, .i = 1, .h = Q};
      std::vector<float> o(size_t(B) * H * Q * orow, std::nanf("")), lse(size_t(B) * H * Q, std::nanf(""));
      decode(p, c.q_dtype, c.q16.data(), c.cache, opt, o.data(), lse.data());
      for (int b = 0; b < B; ++b)
        for (int i = 0; i < Q; ++i)
          for (int h = 0; h < H; ++h) {
            const int64_t r = (int64_t(b) * Q + i) * H + h;
            const float* got = &o[b * p.o_strides.b + i * p.o_strides.i + h * p.o_strides.h];
            for (int k = 0; k < kLatentDim; ++k)
              ASSERT_TRUE(same_bits(got[k], d.o[r * kLatentDim + k])) << "o b " << b << " i " << i << " h " << h;
            for (int k = kLatentDim; k < orow; ++k) ASSERT_TRUE(std::isnan(got[k])) << "gap written";
            ASSERT_TRUE(same_bits(lse[b * p.lse_strides.b + h * p.lse_strides.h + i], d.lse[r]))
                << "lse b " << b << " i " << i << " h " << h;
          }
    }
  }
}

TEST(DecodeLayout, ViewOverCallerMemoryReadsWhatTheCacheReads) {
  const uint64_t seed = test::test_seed();
  SCOPED_TRACE("seed " + std::to_string(seed) + " (set MLA_TEST_SEED to repeat)");
  for (int variant = 0; variant < 5; ++variant) {
    // int8 twice: channel scales and group64 scales.
    const KvDType kv = std::array{KvDType::bf16, KvDType::fp16, KvDType::int8, KvDType::int8,
                                  KvDType::fp8}[variant];
    const KvScale mode = variant == 2 ? KvScale::channel : variant == 3 ? KvScale::group64
                                                                        : KvScale::token;
    SCOPED_TRACE(std::string(kv_dtype_name(kv)) + " " + kv_scale_name(mode));
    CaseSpec s{.batch = 2, .q_len = 2, .heads = 8, .block_size = 16, .seq_lens = {300, 37}};
    s.kv = kv;
    s.scale = mode;
    const test::Case c = test::make_case(s, seed);
    const PagedLatentCache& cache = c.cache;
    const int bs = cache.block_size();
    // A k_cache of the caller's own: tokens 600 values apart, blocks with 40 more values between.
    const int64_t ts = 600, bstride = bs * ts + 40;
    std::vector<uint16_t> k_cache;
    std::vector<uint8_t> fp8_cache;
    Int8CacheContent i8;
    CacheView v{.format = kv, .blocks = cache.num_blocks(), .tokens_per_block = bs};
    if (kv == KvDType::fp8) {
      // FlashMLA's test layout: blocks of block_size + 1 tokens of 656 bytes, the last unused
      // (filled with NaN codes).
      const int64_t fbs = int64_t(bs + 1) * kFp8TokenBytes;
      const std::vector<uint8_t> bytes = cache.export_fp8();
      fp8_cache.assign(size_t(cache.num_blocks()) * fbs, 0x7f);
      for (int64_t slot = 0; slot < cache.num_slots(); ++slot)
        std::memcpy(&fp8_cache[(slot / bs) * fbs + (slot % bs) * kFp8TokenBytes],
                    bytes.data() + slot * kFp8TokenBytes, kFp8TokenBytes);
      v.fp8 = fp8_cache.data();
      v.kv_block_stride = fbs;
      v.kv_token_stride = kFp8TokenBytes;
    } else if (kv != KvDType::int8) {
      k_cache.assign(size_t(cache.num_blocks()) * bstride, 0x7fc0);  // NaN bits between tokens
      for (int64_t slot = 0; slot < cache.num_slots(); ++slot)
        std::memcpy(&k_cache[(slot / bs) * bstride + (slot % bs) * ts], cache.token16(slot),
                    kQkDim * sizeof(uint16_t));
      v.kv = k_cache.data();
      v.kv_block_stride = bstride;
      v.kv_token_stride = ts;
    } else {
      i8 = cache.export_int8();
      v.latent = i8.latent.data();
      v.rope = i8.rope.data();
      v.scale = mode;
      v.scale_per_channel = i8.channel_scale.empty() ? nullptr : i8.channel_scale.data();
      v.scale_per_token = i8.token_scale.empty() ? nullptr : i8.token_scale.data();
    }
    std::vector<DecodeOptions> opts = {DecodeOptions{.threads = 2}, DecodeOptions{.impl = Impl::ref}};
    for (Isa isa : test::runnable_isas(kv, mode)) opts.push_back(DecodeOptions{.threads = 2, .isa = isa});
    for (const DecodeOptions& opt : opts) {
      SCOPED_TRACE(std::string("isa ") + isa_name(opt.isa) + (opt.impl == Impl::ref ? " ref" : ""));
      const Dense a = run_dense(c, cache, opt), b = run_dense(c, v, opt);
      ASSERT_EQ(std::memcmp(a.o.data(), b.o.data(), a.o.size() * sizeof(float)), 0);
      ASSERT_EQ(std::memcmp(a.lse.data(), b.lse.data(), a.lse.size() * sizeof(float)), 0);
    }
  }
}

TEST(DecodeLayout, BadViewsAndStridesAreRefused) {
  CaseSpec s{.batch = 1, .q_len = 1, .heads = 2, .block_size = 16, .seq_lens = {40}};
  const test::Case c = test::make_case(s, test::test_seed());
  std::vector<float> o(2 * kLatentDim, 7.f), lse(2, 7.f);
  auto refused = [&](const DecodeParams& p, const CacheView& v, const char* needle) {
    try {
      decode(p, c.q_dtype, c.q16.data(), v, DecodeOptions{}, o.data(), lse.data());
      ADD_FAILURE() << "not refused: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  CacheView v = c.cache.view();
  v.kv_token_stride = 500;
  refused(c.p, v, "token stride 500");
  v = c.cache.view();
  v.kv = nullptr;
  refused(c.p, v, "pointer is null");
  v = c.cache.view();
  v.kv_block_stride = 100;
  refused(c.p, v, "block stride 100");
  DecodeParams p = c.p;
  p.o_strides = {.b = 1024, .i = 512, .h = 4};
  refused(p, c.cache, "o strides (1024, 512, 4)");
  p = c.p;
  p.lse_strides = {.b = 0, .i = 1, .h = 1};
  refused(p, c.cache, "lse strides (0, 1, 1)");
  for (float x : o) ASSERT_EQ(x, 7.f);
  for (float x : lse) ASSERT_EQ(x, 7.f);
}

}  // namespace
}  // namespace mla
