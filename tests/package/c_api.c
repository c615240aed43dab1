/* The C API from C (tests/package/check_package.sh compiles this with gcc -std=c11 -pedantic
 * against the installed headers and links it with the shared, then the static library): the
 * case of case.h through an owned cache and a wrapped one, with a plan and without, the fast
 * kernels against the library's float64 reference (bf16, and int8 with a tensor scale), a strided
 * lse, and refused calls' status and message. Exit 0 when everything holds. */
#include <stdlib.h>

#include "case.h"
#include "mla/mla.h"

#define CHECK(cond)                                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "c_api.c:%d: %s failed (last error: %s)\n", __LINE__, #cond, \
              mla_last_error());                                     \
      return 1;                                                      \
    }                                                                \
  } while (0)

enum { ROWS = CASE_BATCH * CASE_Q_LEN * CASE_HEADS, SLOTS = CASE_BLOCKS * CASE_BLOCK };

static float kv[SLOTS * CASE_DIM], o[ROWS * CASE_DV], ref_o[ROWS * CASE_DV], o2[ROWS * CASE_DV];
static float lse[ROWS], ref_lse[ROWS], lse_t[ROWS];
static uint16_t q[ROWS * CASE_DIM], kv16[SLOTS * CASE_DIM];
static int64_t slots[SLOTS];

int main(void) {
  CHECK(mla_version() == MLA_VERSION);
  case_fill(kv, q);

  mla_cache_config cfg = {.num_blocks = CASE_BLOCKS, .block_size = CASE_BLOCK,
                          .dtype = MLA_KV_BF16};
  mla_cache* cache = NULL;
  CHECK(mla_cache_create(&cfg, &cache) == MLA_OK && cache);
  for (int64_t s = 0; s < SLOTS; ++s) slots[s] = s;
  int64_t unrepresentable = -1;
  CHECK(mla_cache_write(cache, SLOTS, slots, kv, CASE_DIM, &unrepresentable) == MLA_OK);
  CHECK(unrepresentable == 0);

  mla_decode_params p = {.batch = CASE_BATCH, .q_len = CASE_Q_LEN, .num_heads = CASE_HEADS,
                         .softmax_scale = 0.0721688f, .causal = 1, .seq_lens = case_seq_lens,
                         .block_table = case_block_table, .max_blocks_per_seq = CASE_MAX_BLOCKS,
                         .threads = 2};
  mla_decode_params pr = p;
  pr.reference = 1;
  CHECK(mla_decode(&pr, MLA_Q_BF16, q, cache, NULL, NULL, ref_o, ref_lse) == MLA_OK);
  CHECK(mla_decode(&p, MLA_Q_BF16, q, cache, NULL, NULL, o, lse) == MLA_OK);
  CHECK(case_compare("C, owned cache, no plan", 0, o, lse, ref_o, ref_lse, ROWS));

  /* A plan reused twice, with the caller's workspace; lse as FlashMLA's [batch, heads, q_len]. */
  mla_plan_input pin = {.batch = CASE_BATCH, .q_len = CASE_Q_LEN, .num_heads = CASE_HEADS,
                        .seq_lens = case_seq_lens, .workers = 2};
  mla_plan* plan = NULL;
  CHECK(mla_plan_create(&pin, &plan) == MLA_OK && plan);
  const size_t ws_bytes = mla_plan_workspace_bytes(plan);
  CHECK(ws_bytes > 0);
  void* ws = aligned_alloc(64, (ws_bytes + 63) / 64 * 64);
  CHECK(ws);
  mla_decode_params pt = p;
  pt.lse_stride_b = CASE_HEADS * CASE_Q_LEN;
  pt.lse_stride_i = 1;
  pt.lse_stride_h = CASE_Q_LEN;
  for (int round = 0; round < 2; ++round) {
    CHECK(mla_decode(&pt, MLA_Q_BF16, q, cache, plan, ws, o2, lse_t) == MLA_OK);
    for (int b = 0; b < CASE_BATCH; ++b)
      for (int i = 0; i < CASE_Q_LEN; ++i)
        for (int h = 0; h < CASE_HEADS; ++h)
          CHECK(lse_t[(b * CASE_HEADS + h) * CASE_Q_LEN + i] ==
                lse[(b * CASE_Q_LEN + i) * CASE_HEADS + h]);
    CHECK(memcmp(o, o2, sizeof o) == 0);
  }
  puts("C, plan + workspace, strided lse: ok (same bits as without the plan)");

  /* The same tokens in memory this program owns (FlashMLA's k_cache), read in place. */
  for (int64_t i = 0; i < (int64_t)SLOTS * CASE_DIM; ++i) {
    uint32_t u;
    memcpy(&u, &kv[i], 4);
    kv16[i] = (uint16_t)(u >> 16);
  }
  mla_cache_memory mem = {.dtype = MLA_KV_BF16, .num_blocks = CASE_BLOCKS,
                          .block_size = CASE_BLOCK, .kv = kv16};
  mla_cache* view = NULL;
  CHECK(mla_cache_wrap(&mem, &view) == MLA_OK && view);
  CHECK(mla_decode(&p, MLA_Q_BF16, q, view, NULL, NULL, o2, lse_t) == MLA_OK);
  CHECK(memcmp(o, o2, sizeof o) == 0 && memcmp(lse, lse_t, sizeof lse) == 0);
  CHECK(mla_cache_write(view, 1, slots, kv, CASE_DIM, NULL) == MLA_ERROR_INVALID_ARGUMENT);
  mla_cache_destroy(view);
  puts("C, wrapped caller memory: ok (same bits as the owned cache)");

  /* An int8 cache with one static scale: refused before the scale is set, then decoded. */
  mla_cache_config cfg8 = {.num_blocks = CASE_BLOCKS, .block_size = CASE_BLOCK,
                           .dtype = MLA_KV_INT8, .scale = MLA_SCALE_TENSOR};
  mla_cache* cache8 = NULL;
  CHECK(mla_cache_create(&cfg8, &cache8) == MLA_OK);
  CHECK(mla_cache_write(cache8, 1, slots + 64, kv + 64 * CASE_DIM, CASE_DIM, NULL) ==
        MLA_ERROR_INVALID_ARGUMENT);
  printf("C, int8 write before its scale: refused (%s)\n", mla_last_error());
  CHECK(mla_cache_set_tensor_scale(cache8, 1.f / 127) == MLA_OK);  /* |values| < 1 */
  for (int b = 0; b < CASE_BATCH; ++b)
    for (int t = 0; t < case_seq_lens[b]; ++t) {
      const int64_t s = case_slot(b, t);
      CHECK(mla_cache_write(cache8, 1, &s, kv + s * CASE_DIM, CASE_DIM, NULL) == MLA_OK);
    }
  CHECK(mla_decode(&pr, MLA_Q_BF16, q, cache8, NULL, NULL, ref_o, ref_lse) == MLA_OK);
  CHECK(mla_decode(&p, MLA_Q_BF16, q, cache8, NULL, NULL, o2, lse_t) == MLA_OK);
  CHECK(case_compare("C, int8 cache, tensor scale", 1, o2, lse_t, ref_o, ref_lse, ROWS));
  mla_cache_destroy(cache8);

  /* Refused: a sequence longer than its block table; outputs untouched, the message names it. */
  const int32_t too_long[CASE_BATCH] = {70, 200};
  mla_decode_params bad = p;
  bad.seq_lens = too_long;
  memset(o2, 0, sizeof o2);
  CHECK(mla_decode(&bad, MLA_Q_BF16, q, cache, NULL, NULL, o2, lse_t) ==
        MLA_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(mla_last_error(), "200") != NULL);
  CHECK(o2[0] == 0.f);
  CHECK(mla_decode(&p, MLA_Q_BF16, q, cache, plan, NULL, o2, NULL) == MLA_ERROR_INVALID_ARGUMENT);
  CHECK(mla_cache_create(NULL, &view) == MLA_ERROR_INVALID_ARGUMENT && view == NULL);
  printf("C, refused calls: ok (\"%s\": %s)\n", mla_status_name(MLA_ERROR_INVALID_ARGUMENT),
         mla_last_error());

  free(ws);
  mla_plan_destroy(plan);
  mla_cache_destroy(cache);
  mla_cache_destroy(NULL);
  return 0;
}
