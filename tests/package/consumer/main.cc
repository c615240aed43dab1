// The C++ API of README ("C++ API"), written as README writes it, built against the installed
// package: the case of ../case.h decoded with and without a reusable plan, from an owned cache
// and from a view of this program's own bf16 array, the fast kernels against the library's float64
// reference (Impl::ref); an mla::Error thrown inside the library caught here; version.h's macros
// equal to the version find_package found. Exit 0 when everything holds.
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../case.h"
#include "mla/attention.h"
#include "mla/status.h"
#include "mla/version.h"

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "main.cc:%d: %s failed\n", __LINE__, #cond);     \
      return 1;                                                             \
    }                                                                       \
  } while (0)

int main() {
  const std::string version = std::to_string(MLA_VERSION_MAJOR) + "." +
                              std::to_string(MLA_VERSION_MINOR) + "." +
                              std::to_string(MLA_VERSION_PATCH);
  CHECK(version == CONSUMER_FOUND_VERSION);

  constexpr int B = CASE_BATCH, rows = B * CASE_Q_LEN * CASE_HEADS;
  constexpr int slots = CASE_BLOCKS * CASE_BLOCK;
  std::vector<float> kv(size_t(slots) * CASE_DIM);
  std::vector<uint16_t> q(size_t(rows) * CASE_DIM);
  case_fill(kv.data(), q.data());
  const int32_t* seq_lens = case_seq_lens;
  const int32_t* table = case_block_table;
  const int max_blocks = CASE_MAX_BLOCKS;

  mla::PagedLatentCache cache({.num_blocks = CASE_BLOCKS, .block_size = 64,
                               .dtype = mla::KvDType::bf16});
  for (int64_t slot = 0; slot < slots; ++slot) cache.write(slot, &kv[slot * CASE_DIM]);
  mla::DecodeParams p{.batch = B, .q_len = 2, .num_heads = CASE_HEADS,
                      .softmax_scale = 1 / sqrtf(192), .causal = true, .seq_lens = seq_lens,
                      .block_table = table, .max_blocks_per_seq = max_blocks};
  std::vector<float> o(size_t(rows) * 512), lse(rows), ref_o(o.size()), ref_lse(rows);
  mla::decode(p, mla::DType::bf16, q.data(), cache, {.impl = mla::Impl::ref}, ref_o.data(),
              ref_lse.data());
  mla::decode(p, mla::DType::bf16, q.data(), cache, {.threads = 2}, o.data(), lse.data());
  CHECK(case_compare("C++, owned cache", 0, o.data(), lse.data(), ref_o.data(), ref_lse.data(),
                     rows));

  // One plan per decode step, reused by every layer (here: twice, the same cache).
  mla::DecodePlan plan = mla::make_decode_plan({.batch = B, .q_len = 2, .num_heads = CASE_HEADS,
                                                .seq_lens = seq_lens, .workers = 2});
  std::vector<float> o2(o.size()), lse2(rows);
  for (int layer = 0; layer < 2; ++layer) {
    mla::decode(p, mla::DType::bf16, q.data(), cache, {}, plan, o2.data(), lse2.data());
    CHECK(std::memcmp(o.data(), o2.data(), o.size() * sizeof(float)) == 0);
  }
  std::puts("C++, reused plan: ok (same bits)");

  // A cache in memory the caller owns (FlashMLA's k_cache [blocks, block_size, 576] bf16).
  std::vector<uint16_t> k_cache(kv.size());
  for (size_t i = 0; i < kv.size(); ++i)
    k_cache[i] = uint16_t(std::bit_cast<uint32_t>(kv[i]) >> 16);
  mla::CacheView kc{.format = mla::KvDType::bf16, .blocks = CASE_BLOCKS, .tokens_per_block = 64,
                    .kv = k_cache.data(), .kv_block_stride = 64 * 576};
  // Outputs with strides: FlashMLA's lse [B, H, q_len].
  const int H = CASE_HEADS, q_len = 2;
  p.lse_strides = {.b = int64_t(H) * q_len, .i = 1, .h = q_len};
  mla::decode(p, mla::DType::bf16, q.data(), kc, {}, plan, o2.data(), lse2.data());
  CHECK(std::memcmp(o.data(), o2.data(), o.size() * sizeof(float)) == 0);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < q_len; ++i)
      for (int h = 0; h < H; ++h)
        CHECK(lse2[(b * H + h) * q_len + i] == lse[(b * q_len + i) * H + h]);
  std::puts("C++, view of caller memory, strided lse: ok (same bits)");

  // A refusal thrown inside the library is an mla::Error here (its type crosses the .so).
  const int32_t too_long[B] = {70, 200};
  p.seq_lens = too_long;
  try {
    mla::decode(p, mla::DType::bf16, q.data(), cache, {}, o2.data(), lse2.data());
    CHECK(!"decode accepted 200 tokens in 3 blocks of 64");
  } catch (const mla::Error& e) {
    CHECK(std::string(e.what()).find("200") != std::string::npos);
    std::printf("C++, refused call: ok (mla::Error: %s)\n", e.what());
  }
  return 0;
}
