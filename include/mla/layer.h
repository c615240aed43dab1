// One DeepSeek-V2/V3 attention layer (self_attn) for decoding, from a Hugging Face checkpoint
// (DESIGN §1, §9): preprocess (MLAPO: q and kv projections, RMSNorm, RoPE, W_UK absorption, cache
// write), the paged-attention decode (mla::decode), and the einsum (W_UV) + o_proj. A prefill path
// writes a history of hidden states into the cache (the kv path only).
//
//   hidden   [batch, q_len, hidden_size]  float32, the self_attn input of the new tokens
//   out      [batch, q_len, hidden_size]  float32, the self_attn output (after o_proj)
//
// The new tokens of sequence b sit at positions seq_lens[b] - q_len .. seq_lens[b] - 1; every
// sequence brings q_len tokens (MTP when q_len > 1), each sees the history and the new tokens up
// to itself.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/comm.h"
#include "mla/decode_plan.h"
#include "mla/export.h"
#include "mla/model.h"
#include "mla/safetensors.h"

namespace mla {

// The projections' weight format: as the checkpoint stores them (bf16, fp16, fp32, or fp8 with
// its block scales), or int8 with one scale per output row, quantized from them at load (half of
// bf16's bytes per step).
enum class LayerWeights { stored, int8 };
MLA_API const char* layer_weights_name(LayerWeights f);  // "stored", "int8"
MLA_API LayerWeights parse_layer_weights(const std::string& s);  // the names above; else throws

struct LayerStep {
  int batch = 0;
  int q_len = 1;
  const float* hidden = nullptr;       // [batch, q_len, hidden_size]
  const int32_t* seq_lens = nullptr;   // [batch] cache tokens after this step, new ones included
  const int32_t* block_table = nullptr;  // [batch, max_blocks_per_seq], covering seq_lens
  int max_blocks_per_seq = 0;
};

// Seconds spent in each operator of the last decode call, by the clock the caller chose: wall
// time, or the calling thread's CPU time (meaningful with one thread; on a shared machine it
// leaves out the time the thread waited for a CPU).
enum class LayerClock { wall, thread_cpu };
struct LayerTimes {
  LayerClock clock = LayerClock::wall;  // set by the caller
  double preprocess = 0, attention = 0, einsum = 0;
  double allreduce = 0;  // the o_proj partial sums' all-reduce (0 in a single process)
  double allgather = 0;  // the all-gather of c_q and kv rows (0 in one process; not in preprocess)
};

class MLA_API MlaLayer {
 public:
  // Reads and checks every tensor of model.layers.{layer}.self_attn.* (names, shapes, dtypes,
  // fp8 scales) before returning; weights stay memory-mapped in `store`.
  // rotation: the cache rotation the layer's caches use (CacheConfig::rotation). With hadamard, R
  // is folded into the absorbed projections at load (W_UK side: the query comes out as q R;
  // W_UV side: it takes o R), so a step only pays the rotation of each new token at cache write;
  // its caches must then be rotated the same way (a step on another is refused). A layer loaded
  // without a rotation also runs on a rotated cache: decode() then rotates q and o itself.
  //
  // tp: the tensor-parallel group (issue 24; nullptr or size 1: one process holds every head).
  // Rank r of p holds heads [r H/p, (r+1) H/p): its rows of q_b_proj (q_proj) and kv_b_proj and
  // its columns of o_proj, views of the mapping; and about 1/p of the rows of q_a_proj and
  // kv_a_proj_with_mqa (whole fp8 scale blocks; layer/weights.h), whose outputs one all-gather
  // per step (Communicator::allgather) makes whole on every rank, so the norms, the RoPE and the
  // cache writes are the single process's on every rank. decode() runs the rank's heads and sums
  // the o_proj partial outputs over the group (Communicator::allreduce_sum, fp32), so every rank's
  // `out` is the whole layer's. p must divide num_heads, and an fp8 head-split tensor's split must
  // fall on its scale blocks (refused with the values named). The group must outlive the layer;
  // every rank calls decode() and prefill() (collective too: the kv rows' all-gather) with the
  // same arguments.
  // weights: the projections' format (LayerWeights). Where the CPU has AMX (and MLA_AMX is not
  // 0), the layer also keeps a tile-packed copy of every projection for batches of 2 tokens and
  // more (bf16: another 2 bytes per weight, 374 MB for DeepSeek-V3's attention; int8: 1 byte).
  MlaLayer(const ModelConfig& cfg, const TensorStore& store, int layer,
           KvRotation rotation = KvRotation::none, LayerWeights weights = LayerWeights::stored,
           Communicator* tp = nullptr);
  ~MlaLayer();
  MlaLayer(const MlaLayer&) = delete;
  MlaLayer& operator=(const MlaLayer&) = delete;

  const ModelConfig& config() const;
  int64_t weight_bytes() const;  // bytes of projection weights one decode step reads (this rank's)
  int local_heads() const;       // the heads this rank runs: num_heads / tp size (for the plan)
  int tp_rank() const;
  int tp_size() const;

  // Writes the latent (c_kv, k_pe) of n tokens into the cache: hidden [n, hidden_size],
  // positions [n], slots [n]. threads: 0 = all CPUs.
  void prefill(int64_t n, const float* hidden, const int32_t* positions, const int64_t* slots,
               PagedLatentCache& cache, int threads) const;

  // One decode step: writes the new tokens into the cache, attends, projects. `out` is untouched
  // when the step is refused (bad lengths or block table).
  void decode(const LayerStep& step, PagedLatentCache& cache, const DecodeOptions& opt, float* out,
              LayerTimes* times = nullptr) const;

  // The same step with a plan made once for it (make_decode_plan with the step's batch, q_len,
  // local_heads() and seq_lens) and reused by every layer of the model: no planning per layer. The
  // plan is checked against the step (and opt.threads, when not 0, against its workers) before
  // the cache is written. workspace: nullptr = the plan's own (one decode at a time).
  void decode(const LayerStep& step, PagedLatentCache& cache, const DecodeOptions& opt,
              const DecodePlan& plan, float* out, LayerTimes* times = nullptr,
              void* workspace = nullptr) const;

 private:
  void step(const LayerStep& st, PagedLatentCache& cache, const DecodeOptions& opt,
            const DecodePlan* plan, void* workspace, float* out, LayerTimes* times) const;

  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace mla
