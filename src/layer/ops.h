// The layer's two operators around the attention (DESIGN §1): preprocess (MLAPO) and the einsum
// (W_UV absorption) + o_proj, and the per-token pieces they share with the prefill path.
#pragma once

#include <cstdint>
#include <vector>

#include "layer/weights.h"
#include "mla/cache.h"
#include "mla/comm.h"
#include "mla/model.h"

namespace mla::layer {

// cos and sin (times the YaRN attention factor) of one position: [rope_dim / 2] each.
struct RopeTable {
  std::vector<double> inv_freq;
  double factor = 1;
  bool interleave = true;
  void angles(int64_t pos, float* cos, float* sin) const;
  // Rotates x [64] in place: pairs (2i, 2i+1) when interleaved, else (i, i + 32).
  void apply(float* x, const float* cos, const float* sin) const;
};

// x[n] <- x / sqrt(mean(x^2) + eps) * weight.
void rms_norm(float* x, int64_t n, const float* weight, double eps);

// The down-projections of n tokens, before their norms: c_q [n, q_lora_rank] (q LoRA only) and
// kv [n, 576] = [c_kv ; k_pe]. Under tensor parallelism each rank computes its rows of both
// (AttnWeights::q_a_split, kv_a_split) side by side in `part`, and one all-gather per step
// assembles every token's whole vectors (the norms need them whole):
//
//   part on rank r   [n, qr + kr]       qr, kr: rank r's rows of q_a and kv_a
//   all              [rank 0's part][rank 1's part]...
//   cq [t, q_a_split[r] ..)  <-  all[rank r's part][t, 0 .. qr)
//   kv [t, kv_a_split[r] ..) <-  all[rank r's part][t, qr .. qr + kr)
struct DownProj {
  std::vector<float> cq, kv;     // [n, q_lora_rank], [n, 576]
  std::vector<float> part, all;  // tensor parallel only: this rank's rows, the gathered parts
};

// The rank's rows of kv_a (and of q_a when with_q), into d.cq / d.kv in one process (no copy),
// into d.part under tensor parallelism.
void down_project(const AttnWeights& w, int64_t n, const float* hidden, bool with_q, int threads,
                  DownProj& d);

// Tensor parallel only: all-gathers every rank's d.part and unpacks it into d.cq / d.kv.
void gather_down(const AttnWeights& w, Communicator& tp, int64_t n, bool with_q, DownProj& d);

// Whether the layer's down-projections are split over ranks (then gather_down must run).
inline bool down_split(const AttnWeights& w) { return w.kv_a_split.size() > 2; }

// The rest of the kv path for n tokens: RMSNorm of c_kv, RoPE of k_pe (in kv [n, 576], in place),
// cache write at slots[i] (quantized for an int8 cache).
void write_kv(const AttnWeights& w, const RopeTable& rope, int64_t n, float* kv,
              const int32_t* positions, const int64_t* slots, PagedLatentCache& cache);

// Preprocess of n new tokens from their down-projections d (down_project, gather_down): the kv
// path (write_kv) and the query [n, H, 576] = [W_UK[h]^T q_nope[h] ; RoPE(q_pe[h])]. With q_proj
// (no q LoRA) it reads `hidden`.
void preprocess(const ModelConfig& c, const AttnWeights& w, const RopeTable& rope, int64_t n,
                const float* hidden, DownProj& d, const int32_t* positions, const int64_t* slots,
                PagedLatentCache& cache, int threads, float* q_out);

// out [n, hidden] = o_proj(concat_h W_UV[h] o_latent[n, h]); o_latent [n, H, 512].
void einsum_o_proj(const ModelConfig& c, const AttnWeights& w, int64_t n, const float* o_latent,
                   int threads, float* out);

}  // namespace mla::layer
