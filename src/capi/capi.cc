// The C API (include/mla/mla.h) over the C++ entry points: each function checks its pointers,
// converts the plain structs to the C++ ones and catches everything the C++ layer throws, turning
// it into a status code and a thread-local message (no exception may cross into C).
#include "mla/mla.h"

#include <memory>
#include <new>
#include <optional>
#include <string>

#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/decode_plan.h"
#include "mla/status.h"

struct mla_cache {
  std::unique_ptr<mla::PagedLatentCache> owned;  // null for a wrapped cache
  mla::CacheView view;                           // of `owned`, or of the caller's memory
};

struct mla_plan {
  mla::DecodePlan plan;
};

namespace {

thread_local std::string last_error;

mla_status fail(mla_status s, const std::string& message) {
  last_error = message;
  return s;
}

// Runs f, turning what it throws into a status (and the message into last_error).
template <class F>
mla_status guarded(F&& f) {
  try {
    f();
    return MLA_OK;
  } catch (const mla::Error& e) {
    return fail(MLA_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(MLA_ERROR_OUT_OF_MEMORY, "out of memory");
  } catch (const std::exception& e) {
    return fail(MLA_ERROR_INTERNAL, e.what());
  } catch (...) {
    return fail(MLA_ERROR_INTERNAL, "unknown exception");
  }
}

mla::KvDType kv_dtype(mla_kv_dtype t) {
  switch (t) {
    case MLA_KV_BF16: return mla::KvDType::bf16;
    case MLA_KV_FP16: return mla::KvDType::fp16;
    case MLA_KV_INT8: return mla::KvDType::int8;
    case MLA_KV_FP8: return mla::KvDType::fp8;
  }
  MLA_FAIL("cache dtype " << int(t) << " is not one of MLA_KV_BF16/FP16/INT8/FP8 (0..3)");
}

mla::KvScale kv_scale(mla_kv_scale s) {
  switch (s) {
    case MLA_SCALE_TOKEN: return mla::KvScale::token;
    case MLA_SCALE_TENSOR: return mla::KvScale::tensor;
    case MLA_SCALE_CHANNEL: return mla::KvScale::channel;
    case MLA_SCALE_GROUP32: return mla::KvScale::group32;
    case MLA_SCALE_GROUP64: return mla::KvScale::group64;
    case MLA_SCALE_GROUP128: return mla::KvScale::group128;
  }
  MLA_FAIL("cache scale " << int(s) << " is not one of MLA_SCALE_* (0..5)");
}

mla::DType q_type(mla_q_dtype t) {
  switch (t) {
    case MLA_Q_F32: return mla::DType::f32;
    case MLA_Q_F16: return mla::DType::f16;
    case MLA_Q_BF16: return mla::DType::bf16;
  }
  MLA_FAIL("query dtype " << int(t) << " is not one of MLA_Q_F32/F16/BF16 (0..2)");
}

mla::PagedLatentCache& owned_cache(mla_cache* cache) {
  MLA_CHECK(cache, "cache is NULL");
  MLA_CHECK(cache->owned, "the cache wraps the caller's memory (mla_cache_wrap): write it there");
  return *cache->owned;
}

}  // namespace

extern "C" {

const char* mla_last_error(void) { return last_error.c_str(); }

const char* mla_status_name(mla_status s) {
  switch (s) {
    case MLA_OK: return "ok";
    case MLA_ERROR_INVALID_ARGUMENT: return "invalid argument";
    case MLA_ERROR_OUT_OF_MEMORY: return "out of memory";
    case MLA_ERROR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

int mla_version(void) { return MLA_VERSION; }

mla_status mla_cache_create(const mla_cache_config* cfg, mla_cache** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    MLA_CHECK(cfg && out, (cfg ? "out" : "cfg") << " is NULL");
    auto c = std::make_unique<mla_cache>();
    c->owned = std::make_unique<mla::PagedLatentCache>(
        mla::CacheConfig{.num_blocks = cfg->num_blocks, .block_size = cfg->block_size,
                         .dtype = kv_dtype(cfg->dtype), .scale = kv_scale(cfg->scale)});
    c->view = c->owned->view();
    *out = c.release();
  });
}

void mla_cache_destroy(mla_cache* cache) { delete cache; }

mla_status mla_cache_set_tensor_scale(mla_cache* cache, float scale) {
  return guarded([&] {
    mla::PagedLatentCache& c = owned_cache(cache);
    c.set_tensor_scale(scale);
    cache->view = c.view();
  });
}

mla_status mla_cache_set_channel_scales(mla_cache* cache, const float* scales) {
  return guarded([&] {
    mla::PagedLatentCache& c = owned_cache(cache);
    MLA_CHECK(scales, "scales is NULL");
    c.set_channel_scales(scales);
    cache->view = c.view();
  });
}

mla_status mla_cache_write(mla_cache* cache, int64_t n, const int64_t* slots, const float* tokens,
                           int64_t token_stride, int64_t* unrepresentable) {
  return guarded([&] {
    mla::PagedLatentCache& c = owned_cache(cache);
    MLA_CHECK(n >= 0, "n = " << n << " is negative");
    MLA_CHECK(n == 0 || (slots && tokens), (slots ? "tokens" : "slots") << " is NULL");
    MLA_CHECK(n <= 1 || token_stride >= mla::kQkDim,
              "token_stride = " << token_stride << " is below " << mla::kQkDim);
    int64_t count = 0;
    for (int64_t k = 0; k < n; ++k) {
      MLA_CHECK(slots[k] >= 0 && slots[k] < c.num_slots(),
                "slots[" << k << "] = " << slots[k] << " is outside 0.." << c.num_slots() - 1);
      count += c.write(slots[k], tokens + k * token_stride);
    }
    cache->view = c.view();  // the largest magnitude it carries may have grown
    if (unrepresentable) *unrepresentable = count;
  });
}

mla_status mla_cache_read(const mla_cache* cache, int64_t slot, float* token) {
  return guarded([&] {
    MLA_CHECK(cache && token, (cache ? "token" : "cache") << " is NULL");
    MLA_CHECK(slot >= 0 && slot < cache->view.num_slots(),
              "slot " << slot << " is outside 0.." << cache->view.num_slots() - 1);
    cache->view.read(slot, token);
  });
}

mla_status mla_cache_wrap(const mla_cache_memory* mem, mla_cache** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    MLA_CHECK(mem && out, (mem ? "out" : "mem") << " is NULL");
    const mla::KvDType t = kv_dtype(mem->dtype);
    MLA_CHECK(t != mla::KvDType::int8,
              "an int8 cache cannot be wrapped (its scales live apart): use mla_cache_create");
    const bool fp8 = t == mla::KvDType::fp8;
    const int64_t token = mem->token_stride ? mem->token_stride
                                            : (fp8 ? mla::kFp8TokenBytes : mla::kQkDim);
    const int64_t block = mem->block_stride ? mem->block_stride : token * mem->block_size;
    auto c = std::make_unique<mla_cache>();
    c->view = mla::CacheView{.format = t, .blocks = mem->num_blocks,
                             .tokens_per_block = mem->block_size, .kv = mem->kv,
                             .kv_block_stride = block, .kv_token_stride = token, .fp8 = mem->fp8};
    mla::check_view(c->view);
    *out = c.release();
  });
}

mla_status mla_plan_create(const mla_plan_input* in, mla_plan** out) {
  if (out) *out = nullptr;
  return guarded([&] {
    MLA_CHECK(in && out, (in ? "out" : "in") << " is NULL");
    MLA_CHECK(in->batch <= 0 || in->seq_lens, "seq_lens is NULL");
    *out = new mla_plan{mla::make_decode_plan({.batch = in->batch, .q_len = in->q_len,
                                               .num_heads = in->num_heads,
                                               .seq_lens = in->seq_lens, .q_lens = in->q_lens,
                                               .workers = in->workers})};
  });
}

void mla_plan_destroy(mla_plan* plan) { delete plan; }

size_t mla_plan_workspace_bytes(const mla_plan* plan) {
  return plan ? plan->plan.workspace_bytes() : 0;
}

mla_status mla_decode(const mla_decode_params* p, mla_q_dtype q_dtype, const void* q,
                      const mla_cache* cache, const mla_plan* plan, void* workspace, float* o,
                      float* lse) {
  return guarded([&] {
    MLA_CHECK(p, "p is NULL");
    MLA_CHECK(cache, "cache is NULL");
    MLA_CHECK(q && o && lse, (!q ? "q" : !o ? "o" : "lse") << " is NULL");
    MLA_CHECK(p->batch <= 0 || (p->seq_lens && p->block_table),
              (p->seq_lens ? "block_table" : "seq_lens") << " is NULL");
    const mla::DecodeParams dp{
        .batch = p->batch, .q_len = p->q_len, .num_heads = p->num_heads,
        .softmax_scale = p->softmax_scale, .causal = p->causal != 0, .seq_lens = p->seq_lens,
        .q_lens = p->q_lens, .block_table = p->block_table,
        .max_blocks_per_seq = p->max_blocks_per_seq,
        .o_strides = {.b = p->o_stride_b, .i = p->o_stride_i, .h = p->o_stride_h},
        .lse_strides = {.b = p->lse_stride_b, .i = p->lse_stride_i, .h = p->lse_stride_h}};
    const mla::DecodeOptions opt{.impl = p->reference ? mla::Impl::ref : mla::Impl::fast,
                                 .threads = p->threads};
    MLA_CHECK(plan || !workspace, "a workspace is given without a plan");
    if (plan)
      mla::decode(dp, q_type(q_dtype), q, cache->view, opt, plan->plan, o, lse, workspace);
    else
      mla::decode(dp, q_type(q_dtype), q, cache->view, opt, o, lse);
  });
}

}  // extern "C"
