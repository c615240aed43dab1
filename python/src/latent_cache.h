// mla.LatentCache's C++ half: a paged latent cache with its own block allocator, so that the
// block tables and slot mappings it hands out always point into it. Declared here because the
// FlashMLA calls (flashmla.cc) decode from it as well as the cache's own bindings
// (latent_cache.cc) use it.
#pragma once

#include <cstdint>
#include <shared_mutex>
#include <string>
#include <vector>

#include "interop.h"
#include "mla/cache.h"
#include "mla/dtype.h"
#include "mla/status.h"

namespace mla_py {

struct LatentCache {
  mla::PagedLatentCache cache;
  mla::BlockAllocator alloc;
  bool static_scale = false;  // int8 tensor / channel mode: a scale was set (writes need one)
  // The cache's contents: decodes read them under a shared lock (any number at once, the GIL
  // released), writes, imports and scale changes take it exclusively. `alloc` and `static_scale`
  // are only touched with the GIL held, which orders them.
  mutable std::shared_mutex mu;

  LatentCache(int64_t num_blocks, int block_size, const std::string& dtype, const std::string& scale,
              uint64_t shuffle_seed, const std::string& rotation, const std::string& fp8_scale)
      : cache(config(num_blocks, block_size, dtype, scale, rotation, fp8_scale)),
        alloc(num_blocks, block_size, shuffle_seed) {}

  static mla::CacheConfig config(int64_t num_blocks, int block_size, const std::string& dtype,
                                 const std::string& scale, const std::string& rotation,
                                 const std::string& fp8_scale) {
    MLA_CHECK(num_blocks >= 1, "num_blocks = " << num_blocks << " must be at least 1");
    MLA_CHECK(block_size >= 1, "block_size = " << block_size << " must be at least 1");
    const mla::KvDType kv = mla::parse_kv_dtype(dtype);
    const mla::KvScale mode = mla::parse_kv_scale(scale);
    return {.num_blocks = num_blocks, .block_size = block_size, .dtype = kv, .scale = mode,
            .rotation = mla::parse_kv_rotation(rotation), .fp8_scale = mla::parse_fp8_scale(fp8_scale)};
  }

  void require_writable() const {
    MLA_CHECK(cache.dtype() != mla::KvDType::int8 || mla::kv_token_scales(cache.scale_mode()) >= 1 ||
                  static_scale,
              "this int8 cache has " << mla::kv_scale_name(cache.scale_mode())
                                     << " scales: call set_tensor_scale / set_channel_scales or "
                                        "calibrate before writing tokens");
  }

  // tokens [n, 576] as floats (converted from f16 / bf16), contiguous.
  static std::vector<float> tokens_f32(const Array& t, bool bf16_bits, const char* arg) {
    const mla::DType ty = float_type(t, bf16_bits, arg);
    require_shape(t, arg, {-1, mla::kQkDim});
    std::vector<uint8_t> hold;
    const void* d = contiguous(t, hold);
    std::vector<float> f(t.size());
    for (size_t i = 0; i < f.size(); ++i) f[i] = mla::load_f32(ty, d, int64_t(i));
    return f;
  }

  void write_rows(const int64_t* slots, const std::vector<float>& f, size_t n) {
    for (size_t i = 0; i < n; ++i)
      MLA_CHECK(slots[i] >= 0 && slots[i] < cache.num_slots(),
                "slot_mapping[" << i << "] = " << slots[i] << " is outside the cache's "
                                << cache.num_slots() << " slots");
    for (size_t i = 0; i < n; ++i) cache.write(slots[i], f.data() + i * mla::kQkDim);
  }
};

void bind_latent_cache(nb::module_& m);

}  // namespace mla_py
