// The layer: preprocess -> mla::decode -> einsum + o_proj, with the checks that make a step all or
// nothing (lengths, block table and slots checked before the cache or the output is touched).
#include "mla/layer.h"

#include <chrono>
#include <ctime>
#include <cmath>
#include <vector>

#include "cpu/attention/isa.h"
#include "cpu/linear/linear.h"
#include "layer/ops.h"
#include "mla/dtype.h"
#include "mla/status.h"

namespace mla {

namespace {

double now(LayerClock c) {
  if (c == LayerClock::thread_cpu) {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

struct MlaLayer::Impl {
  ModelConfig cfg;
  ModelConfig local;  // cfg with num_heads = this rank's heads: what preprocess, decode, einsum run
  Communicator* tp = nullptr;  // nullptr: one process
  TensorStore store;  // keeps the mapped files alive
  layer::AttnWeights w;
  layer::RopeTable rope;
};

const char* layer_weights_name(LayerWeights f) { return f == LayerWeights::int8 ? "int8" : "stored"; }

LayerWeights parse_layer_weights(const std::string& s) {
  if (s == "stored") return LayerWeights::stored;
  if (s == "int8") return LayerWeights::int8;
  MLA_FAIL("unknown layer weights '" << s << "' (expected stored or int8)");
}

MlaLayer::MlaLayer(const ModelConfig& cfg, const TensorStore& store, int layer,
                   KvRotation rotation, LayerWeights weights, Communicator* tp)
    : impl_(std::make_unique<Impl>()) {
  impl_->cfg = cfg;
  impl_->store = store;
  impl_->tp = tp && tp->size() > 1 ? tp : nullptr;
  layer::load_attn_weights(cfg, store, layer, impl_->w, rotation, weights, cpu::cpu_has_amx_set(),
                           tp ? tp->rank() : 0, tp ? tp->size() : 1);
  impl_->local = cfg;
  impl_->local.num_heads = int(impl_->w.heads);
  impl_->rope.inv_freq = rope_inv_freq(cfg);
  impl_->rope.factor = rope_attention_factor(cfg);
  impl_->rope.interleave = cfg.rope_interleave;
}

MlaLayer::~MlaLayer() = default;

const ModelConfig& MlaLayer::config() const { return impl_->cfg; }
int64_t MlaLayer::weight_bytes() const { return impl_->w.bytes_per_step; }
int MlaLayer::local_heads() const { return impl_->local.num_heads; }
int MlaLayer::tp_rank() const { return impl_->tp ? impl_->tp->rank() : 0; }
int MlaLayer::tp_size() const { return impl_->tp ? impl_->tp->size() : 1; }

void MlaLayer::prefill(int64_t n, const float* hidden, const int32_t* positions, const int64_t* slots,
                       PagedLatentCache& cache, int threads) const {
  for (int64_t i = 0; i < n; ++i) {
    MLA_CHECK(positions[i] >= 0, "prefill: positions[" << i << "] = " << positions[i] << " is negative");
    MLA_CHECK(slots[i] >= 0 && slots[i] < cache.num_slots(),
              "prefill: slots[" << i << "] = " << slots[i] << " is outside the cache's "
                                << cache.num_slots() << " slots");
  }
  // Chunks bound the scratch and keep a chunk's activations in cache between the product and the
  // norm/rope/write pass.
  constexpr int64_t kChunk = 256;
  layer::DownProj d;
  for (int64_t t = 0; t < n; t += kChunk) {
    const int64_t m = std::min(kChunk, n - t);
    layer::down_project(impl_->w, m, hidden + t * impl_->cfg.hidden_size, false, threads, d);
    if (impl_->tp) layer::gather_down(impl_->w, *impl_->tp, m, false, d);
    layer::write_kv(impl_->w, impl_->rope, m, d.kv.data(), positions + t, slots + t, cache);
  }
}

void MlaLayer::decode(const LayerStep& st, PagedLatentCache& cache, const DecodeOptions& opt,
                      float* out, LayerTimes* times) const {
  step(st, cache, opt, nullptr, nullptr, out, times);
}

void MlaLayer::decode(const LayerStep& st, PagedLatentCache& cache, const DecodeOptions& opt,
                      const DecodePlan& plan, float* out, LayerTimes* times, void* workspace) const {
  step(st, cache, opt, &plan, workspace, out, times);
}

void MlaLayer::step(const LayerStep& st, PagedLatentCache& cache, const DecodeOptions& opt,
                    const DecodePlan* plan, void* workspace, float* out, LayerTimes* times) const {
  const ModelConfig& c = impl_->local;  // this rank's heads (all of them in one process)
  MLA_CHECK(st.batch >= 1, "batch " << st.batch << " must be at least 1");
  MLA_CHECK(st.q_len >= 1, "q_len " << st.q_len << " must be at least 1");
  for (int b = 0; b < st.batch; ++b)
    MLA_CHECK(st.seq_lens[b] >= st.q_len, "seq_lens[" << b << "] = " << st.seq_lens[b]
                                                      << " is shorter than q_len " << st.q_len);
  const DecodeParams p{.batch = st.batch, .q_len = st.q_len, .num_heads = c.num_heads,
                       .softmax_scale = float(softmax_scale(c)), .causal = true,
                       .seq_lens = st.seq_lens, .q_lens = nullptr, .block_table = st.block_table,
                       .max_blocks_per_seq = st.max_blocks_per_seq};
  validate(p, cache);
  const KvRotation folded = impl_->w.rotation;
  MLA_CHECK(folded == KvRotation::none || cache.config().rotation == folded,
            "the layer folds the " << kv_rotation_name(folded) << " rotation into its projections"
                                   << " but the cache's rotation is "
                                   << kv_rotation_name(cache.config().rotation));
  DecodeOptions dopt = opt;
  dopt.qo_rotated = folded != KvRotation::none;  // q comes out as q R, einsum takes o R
  // mla::decode checks these too, but only after preprocess has written the cache.
  if (plan) {
    plan->check_matches(p);
    MLA_CHECK(opt.threads == 0 || opt.threads == plan->workers(),
              "threads = " << opt.threads << " differs from the decode plan's " << plan->workers()
                           << " workers");
  }

  const int64_t n = int64_t(st.batch) * st.q_len, H = c.num_heads;
  // The step's buffers: the calling thread's, grown once, so a step allocates nothing after the
  // first of its size (tests/test_layer_alloc.cc counts).
  thread_local std::vector<int32_t> pos;
  thread_local std::vector<int64_t> slots;
  thread_local std::vector<float> q, o, lse;
  thread_local std::vector<uint16_t> qbits;
  pos.resize(n);
  slots.resize(n);
  const int bs = cache.block_size();
  for (int b = 0; b < st.batch; ++b)
    for (int i = 0; i < st.q_len; ++i) {
      const int32_t ps = st.seq_lens[b] - st.q_len + i;
      pos[b * st.q_len + i] = ps;
      slots[b * st.q_len + i] =
          int64_t(st.block_table[int64_t(b) * st.max_blocks_per_seq + ps / bs]) * bs + ps % bs;
    }

  const LayerClock clk = times ? times->clock : LayerClock::wall;
  const double t0 = now(clk);
  q.resize(size_t(n) * H * kQkDim);
  const bool with_q = c.q_lora_rank > 0;
  thread_local layer::DownProj d;  // grown once, as the buffers above
  layer::down_project(impl_->w, n, st.hidden, with_q, opt.threads, d);
  // Under tensor parallelism each rank computed its rows of q_a / kv_a; one all-gather makes every
  // token's c_q and kv whole (its time includes the wait for the slowest rank).
  const double tg0 = now(clk);
  if (impl_->tp) layer::gather_down(impl_->w, *impl_->tp, n, with_q, d);
  const double tg1 = now(clk);
  layer::preprocess(c, impl_->w, impl_->rope, n, st.hidden, d, pos.data(), slots.data(), cache,
                    opt.threads, q.data());
  // The query in the type the kernels compute with for this cache (bf16, or fp16 for fp16).
  const DType qt = kernel_q_dtype(cache.dtype(), cache.dtype() == KvDType::fp16 ? DType::f16 : DType::bf16);
  qbits.resize(q.size());
  if (qt == DType::bf16) {
    cpu::round_bf16(q.data(), qbits.data(), int64_t(q.size()));
  } else {
    for (size_t i = 0; i < q.size(); ++i) qbits[i] = f32_to_f16(q[i]);
  }
  const double t1 = now(clk);
  o.resize(size_t(n) * H * kLatentDim);
  lse.resize(size_t(n) * H);
  if (plan)
    mla::decode(p, qt, qbits.data(), cache, dopt, *plan, o.data(), lse.data(), workspace);
  else
    mla::decode(p, qt, qbits.data(), cache, dopt, o.data(), lse.data());
  const double t2 = now(clk);
  layer::einsum_o_proj(c, impl_->w, n, o.data(), opt.threads, out);
  const double t3 = now(clk);
  // The rank's o_proj output is its heads' part of the sum over heads; one all-reduce per step
  // gives every rank the whole. Its time includes the wait for the slowest rank.
  if (impl_->tp) impl_->tp->allreduce_sum(out, n * c.hidden_size);
  const double t4 = now(clk);
  if (times) {
    times->preprocess = (t1 - t0) - (tg1 - tg0);
    times->allgather = tg1 - tg0;
    times->attention = t2 - t1;
    times->einsum = t3 - t2;
    times->allreduce = t4 - t3;
  }
}

}  // namespace mla
