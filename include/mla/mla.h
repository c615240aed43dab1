/* The C API (C11, also valid C++): the decode of include/mla/attention.h behind opaque handles,
 * plain pointers and integer codes, for callers that cannot use C++ (C programs, FFI from other
 * languages). No C++ type crosses it; every function catches what the C++ layer throws.
 *
 *   mla_cache*  a paged latent cache: one the library owns (mla_cache_create: write tokens into
 *               it) or a view of cache memory the caller owns (mla_cache_wrap: FlashMLA's
 *               k_cache [num_blocks, block_size, 576] bf16/fp16, or its fp8 [.., 656] bytes)
 *   mla_plan*   a decode plan for one step's shape and lengths, reused by every layer of the step
 *
 * Errors: a function returns MLA_OK or an error code; mla_last_error() then gives the message
 * (naming the value, as the C++ API does) of the last failed call on the calling thread.
 *
 *   mla_cache_config cfg = {.num_blocks = 64, .block_size = 64, .dtype = MLA_KV_BF16};
 *   mla_cache* cache;
 *   if (mla_cache_create(&cfg, &cache) != MLA_OK) fprintf(stderr, "%s\n", mla_last_error());
 *   mla_cache_write(cache, n, slots, tokens, MLA_QK_DIM, NULL);   (n tokens [n, 576] to slots[n])
 *   mla_decode_params p = {.batch = B, .q_len = 1, .num_heads = 16, .softmax_scale = s,
 *                          .causal = 1, .seq_lens = lens, .block_table = table,
 *                          .max_blocks_per_seq = max_blocks};
 *   mla_decode(&p, MLA_Q_F32, q, cache, NULL, NULL, o, lse);   (README "C API")
 */
#ifndef MLA_MLA_H
#define MLA_MLA_H

#include <stddef.h>
#include <stdint.h>

#include "mla/export.h"
#include "mla/version.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mla_status {
  MLA_OK = 0,
  MLA_ERROR_INVALID_ARGUMENT = 1, /* refused input: shape, length, pointer, format, plan */
  MLA_ERROR_OUT_OF_MEMORY = 2,
  MLA_ERROR_INTERNAL = 3 /* anything else the library threw */
} mla_status;

/* The message of the last failed call on this thread ("" if none failed yet). Valid until the
 * thread's next failed call. */
MLA_API const char* mla_last_error(void);
/* "ok", "invalid argument", "out of memory", "internal error" ("unknown status" otherwise). */
MLA_API const char* mla_status_name(mla_status s);
/* The library's version as built (compare with MLA_VERSION of the header compiled against). */
MLA_API int mla_version(void);

enum { MLA_LATENT_DIM = 512, MLA_ROPE_DIM = 64, MLA_QK_DIM = 576, MLA_FP8_TOKEN_BYTES = 656 };

typedef enum mla_kv_dtype {
  MLA_KV_BF16 = 0,
  MLA_KV_FP16 = 1,
  MLA_KV_INT8 = 2,
  MLA_KV_FP8 = 3
} mla_kv_dtype;
/* int8 scales: per token, per tensor, per channel, per group of 32/64/128 channels of a token. */
typedef enum mla_kv_scale {
  MLA_SCALE_TOKEN = 0,
  MLA_SCALE_TENSOR = 1,
  MLA_SCALE_CHANNEL = 2,
  MLA_SCALE_GROUP32 = 3,
  MLA_SCALE_GROUP64 = 4,
  MLA_SCALE_GROUP128 = 5
} mla_kv_scale;
/* The query's element type: float32, fp16 or bf16 (16-bit values as uint16_t bits). */
typedef enum mla_q_dtype { MLA_Q_F32 = 0, MLA_Q_F16 = 1, MLA_Q_BF16 = 2 } mla_q_dtype;

/* ---- caches -------------------------------------------------------------------------------- */
typedef struct mla_cache mla_cache;

typedef struct mla_cache_config {
  int64_t num_blocks;
  int32_t block_size;   /* tokens per block */
  mla_kv_dtype dtype;
  mla_kv_scale scale;   /* int8 only; tensor and channel need mla_cache_set_*_scale first */
} mla_cache_config;

/* A cache the library owns, all slots zero. *out is NULL on failure. */
MLA_API mla_status mla_cache_create(const mla_cache_config* cfg, mla_cache** out);
/* Frees a cache from mla_cache_create or mla_cache_wrap (not the memory a wrap views); NULL:
 * nothing. */
MLA_API void mla_cache_destroy(mla_cache* cache);
/* Static int8 scales (tensor / channel mode): positive and finite; channel: 512 floats. */
MLA_API mla_status mla_cache_set_tensor_scale(mla_cache* cache, float scale);
MLA_API mla_status mla_cache_set_channel_scales(mla_cache* cache, const float* scales);
/* Stores n tokens: token k (576 floats: latent then rope) at tokens + k * token_stride floats goes
 * to slot slots[k] (block_table[b][t / block_size] * block_size + t % block_size for token t of
 * sequence b). *unrepresentable (may be NULL) gets the count of values the format could not
 * hold (C++ PagedLatentCache::write). Refused for a wrapped cache. */
MLA_API mla_status mla_cache_write(mla_cache* cache, int64_t n, const int64_t* slots,
                                   const float* tokens, int64_t token_stride,
                                   int64_t* unrepresentable);
/* The token of a slot as the kernels see it (576 floats). Any cache. */
MLA_API mla_status mla_cache_read(const mla_cache* cache, int64_t slot, float* token);

/* Cache memory the caller owns, read in place (it must outlive the handle). Strides in elements
 * for bf16 / fp16 (kv: uint16_t bits), in bytes for fp8 (fp8: 656-byte FlashMLA tokens). Zero
 * strides: dense, [num_blocks, block_size, 576] or [.., 656]. */
typedef struct mla_cache_memory {
  mla_kv_dtype dtype;   /* bf16, fp16 or fp8 */
  int64_t num_blocks;
  int32_t block_size;
  const uint16_t* kv;   /* bf16 / fp16 */
  const uint8_t* fp8;   /* fp8 */
  int64_t block_stride, token_stride;
} mla_cache_memory;
MLA_API mla_status mla_cache_wrap(const mla_cache_memory* mem, mla_cache** out);

/* ---- decode -------------------------------------------------------------------------------- */
/* Zero-initialised fields take their defaults, except batch, q_len, num_heads, softmax_scale,
 * seq_lens, block_table and max_blocks_per_seq, which a decode needs. */
typedef struct mla_decode_params {
  int32_t batch;
  int32_t q_len;               /* rows per sequence in q, o and lse (>= 1) */
  int32_t num_heads;
  float softmax_scale;         /* multiplies q.k; DeepSeek's is 1/sqrt(192) */
  int32_t causal;              /* 1: row i sees positions up to seq_len - q_len_b + i */
  const int32_t* seq_lens;     /* [batch] tokens in the cache, the new ones included */
  const int32_t* q_lens;       /* [batch] or NULL: q_len each */
  const int32_t* block_table;  /* [batch, max_blocks_per_seq]; unused entries may be -1 */
  int32_t max_blocks_per_seq;
  /* Output strides in elements per sequence b, row i, head h; all zero: dense,
   * o [batch, q_len, num_heads, 512] and lse [batch, q_len, num_heads]. */
  int64_t o_stride_b, o_stride_i, o_stride_h;
  int64_t lse_stride_b, lse_stride_i, lse_stride_h;
  int32_t threads;             /* 0: all cores (or the plan's workers) */
  int32_t reference;           /* 1: the float64 reference instead of the fast kernels */
} mla_decode_params;

typedef struct mla_plan mla_plan;
typedef struct mla_plan_input {
  int32_t batch, q_len, num_heads;
  const int32_t* seq_lens;  /* [batch]; copied */
  const int32_t* q_lens;    /* [batch] or NULL; copied */
  int32_t workers;          /* threads of the decodes; 0: all cores */
} mla_plan_input;
MLA_API mla_status mla_plan_create(const mla_plan_input* in, mla_plan** out);
MLA_API void mla_plan_destroy(mla_plan* plan);
/* Bytes of 64-byte aligned workspace a decode with this plan needs when given its own. */
MLA_API size_t mla_plan_workspace_bytes(const mla_plan* plan);

/* Decodes one step: q [batch, q_len, num_heads, 576] of type q_dtype, dense; o and lse as the
 * strides say. plan: NULL plans this call; otherwise made for these shapes and lengths.
 * workspace: NULL uses the plan's own (one decode at a time per plan), or
 * mla_plan_workspace_bytes 64-byte aligned bytes. On failure o and lse are untouched. */
MLA_API mla_status mla_decode(const mla_decode_params* p, mla_q_dtype q_dtype, const void* q,
                              const mla_cache* cache, const mla_plan* plan, void* workspace,
                              float* o, float* lse);

#ifdef __cplusplus
}
#endif

#endif /* MLA_MLA_H */
