// Float64 references: the absorbed paged-attention decode (what every kernel is checked against),
// the split-KV combine, and plain un-absorbed multi-head attention that decompresses K and V per
// head (to prove the absorption algebra of DESIGN §1). Slow and simple on purpose.
#pragma once

#include <vector>

#include "mla/attention.h"
#include "mla/cache.h"

namespace mla::ref {

// o [batch, q_len, H, 512], lse [batch, q_len, H]. q [batch, q_len, H, 576] holds the values the
// kernel computes with (already rounded to its working type); the cache is read through
// PagedLatentCache::read (de-quantized). Padding rows: o = 0, lse = -inf. Validates p first.
void decode(const DecodeParams& p, const float* q, const CacheView& cache, double* o,
            double* lse);

// The same on unquantized float values kv [num_blocks * block_size, 576] (the cache before it
// was written in any format): what a format costs end to end.
void decode_original(const DecodeParams& p, const float* q, const float* kv, int64_t num_blocks,
                     int block_size, double* o, double* lse);

// The rows (i, h) of sequence `seq`, heads [head_begin, head_end), over cache positions
// [kv_begin, kv_end) only: what one work item of a split plan computes. o [q_len_b, nh, 512],
// lse [q_len_b, nh]; a row that sees no key of the range: o = 0, lse = -inf. No validation.
void decode_range(const DecodeParams& p, const float* q, const CacheView& cache, int seq,
                  int head_begin, int head_end, int kv_begin, int kv_end, std::vector<double>* o,
                  std::vector<double>* lse);

// Merges n partial results (o_i [dv], lse_i) of one query row (DESIGN §5). All -inf: o = 0,
// lse = -inf.
void combine(int n, int dv, const double* o_parts, const double* lse_parts, double* o, double* lse);

// The weights that absorption folds away, per head: W_UK [H, nope, 512] maps the latent to the
// no-position key, W_UV [H, v, 512] maps it to the value.
struct UpProjections {
  int heads = 0;
  int nope_dim = 128;  // qk_nope_head_dim
  int v_dim = 128;     // v_head_dim
  std::vector<double> w_uk;  // [heads, nope_dim, 512]
  std::vector<double> w_uv;  // [heads, v_dim, 512]
};

// q_abs[h] = W_UK[h]^T q_nope[h]: q_nope [rows, H, nope] -> q_abs [rows, H, 512].
std::vector<double> absorb_query(const UpProjections& w, const std::vector<double>& q_nope, int rows);
// o[h] = W_UV[h] o_latent[h]: o_latent [rows, H, 512] -> o [rows, H, v].
std::vector<double> project_output(const UpProjections& w, const std::vector<double>& o_latent,
                                   int rows);

// Plain attention per head with decompressed keys [W_UK c_kv ; k_pe] (nope + 64) and values
// W_UV c_kv, scores scaled by p.softmax_scale, same masking as decode().
// q_nope [batch, q_len, H, nope], q_pe [batch, q_len, H, 64] -> out [batch, q_len, H, v], lse.
void mha_unabsorbed(const DecodeParams& p, const std::vector<double>& q_nope,
                    const std::vector<double>& q_pe, const CacheView& cache,
                    const UpProjections& w, double* out, double* lse);

}  // namespace mla::ref
