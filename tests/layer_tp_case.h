// One decode step of an attention layer on a tiny checkpoint, for the tensor-parallel tests
// (issue 24): test_layer_tp.cc runs every shard in one process, tests/mpi/layer_tp_mpi.cc one shard
// per MPI rank; both compare with the single-process layer on the same inputs. Deterministic in
// the seed, so every rank builds the same history, inputs and cache.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "harness/tiny_model.h"
#include "mla/layer.h"

namespace mla::test_tp {

struct TpCase {
  const char* name;
  test::TinyModelSpec model;  // its seed is set from the run's
  KvDType kv = KvDType::bf16;
  KvRotation rotation = KvRotation::none;  // of the cache, and folded into the layer's weights
  int q_len = 1, block_size = 16, layer = 1;
  std::vector<int> lens;  // tokens per sequence, the q_len new ones included (uneven)
};

// The cases both tests run: V3-style (q LoRA) and V2-Lite-style (q_proj) shapes, bf16 and int8
// caches, Q 1 and 2, uneven batches whose histories cross blocks.
inline std::vector<TpCase> tp_cases() {
  std::vector<TpCase> c;
  c.push_back({.name = "V3 shape (q LoRA), bf16 cache, Q 1",
               .kv = KvDType::bf16,
               .q_len = 1,
               .lens = {37, 80, 5}});
  c.push_back({.name = "V3 shape (q LoRA), int8 cache, Q 2",
               .kv = KvDType::int8,
               .q_len = 2,
               .lens = {50, 19, 66, 2}});
  TpCase v2{.name = "V2 shape (q_proj), bf16 cache, Q 2",
            .kv = KvDType::bf16,
            .q_len = 2,
            .lens = {41, 3}};
  v2.model.q_lora_rank = 0;
  c.push_back(v2);
  v2.name = "V2 shape (q_proj), int8 cache, Q 1";
  v2.kv = KvDType::int8;
  v2.q_len = 1;
  v2.lens = {70, 9, 33};
  c.push_back(v2);
  return c;
}

struct StepResult {
  std::vector<float> out;    // [batch, q_len, hidden_size]
  std::vector<float> cache;  // every slot read back [num_slots, 576]: the latents it holds
};

// The case's history prefilled through `layer` (positions 0..lens[b]-q_len-1), then one decode
// step of the last q_len tokens of each sequence.
inline StepResult run_step(const MlaLayer& layer, const TpCase& tc, uint64_t seed, int threads) {
  const ModelConfig& cfg = layer.config();
  const int B = int(tc.lens.size()), Q = tc.q_len, D = cfg.hidden_size;
  int T = 0;
  for (int l : tc.lens) T = std::max(T, l);
  std::mt19937_64 rng(seed ^ 0x9e3779b97f4a7c15ull);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> hidden(size_t(B) * T * D);
  for (auto& x : hidden) x = nd(rng);
  int64_t blocks = 0;
  for (int l : tc.lens) blocks += (l + tc.block_size - 1) / tc.block_size;
  PagedLatentCache cache(CacheConfig{
      .num_blocks = blocks + 1, .block_size = tc.block_size, .dtype = tc.kv, .rotation = tc.rotation});
  BlockAllocator alloc(blocks + 1, tc.block_size, seed | 1);  // scattered block tables
  std::vector<int> seqs;
  std::vector<float> step_hidden(size_t(B) * Q * D);
  for (int b = 0; b < B; ++b) {
    seqs.push_back(alloc.add_sequence());
    const int P = tc.lens[b] - Q;
    if (P > 0) {
      const std::vector<int64_t> slots = alloc.append(seqs[b], P);
      std::vector<int32_t> pos(P);
      for (int t = 0; t < P; ++t) pos[t] = t;
      layer.prefill(P, hidden.data() + size_t(b) * T * D, pos.data(), slots.data(), cache, threads);
    }
    alloc.append(seqs[b], Q);
    std::copy_n(hidden.data() + (size_t(b) * T + P) * D, size_t(Q) * D,
                step_hidden.data() + size_t(b) * Q * D);
  }
  int mb = 0;
  const std::vector<int32_t> bt = alloc.block_table_array(seqs, &mb);
  const std::vector<int32_t> lens(tc.lens.begin(), tc.lens.end());
  StepResult r;
  r.out.assign(size_t(B) * Q * D, std::nanf(""));
  DecodeOptions opt;
  opt.threads = threads;
  layer.decode(LayerStep{.batch = B,
                         .q_len = Q,
                         .hidden = step_hidden.data(),
                         .seq_lens = lens.data(),
                         .block_table = bt.data(),
                         .max_blocks_per_seq = mb},
               cache, opt, r.out.data());
  r.cache.resize(size_t(cache.num_slots()) * kQkDim);
  for (int64_t s = 0; s < cache.num_slots(); ++s) cache.read(s, r.cache.data() + s * kQkDim);
  return r;
}

// sqrt(sum (a - b)^2 / sum b^2), and the largest |a - b| / (|b| + 1e-3 max|b|) per element.
struct Diff {
  double rel = 0, max_elem = 0;
};
inline Diff diff(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0, amax = 0;
  for (float x : b) amax = std::max(amax, double(std::fabs(x)));
  Diff d;
  for (size_t i = 0; i < a.size(); ++i) {
    const double e = double(a[i]) - b[i];
    num += e * e;
    den += double(b[i]) * b[i];
    const double r = std::fabs(e) / (std::fabs(b[i]) + 1e-3 * amax);
    d.max_elem = std::isnan(r) ? INFINITY : std::max(d.max_elem, r);
  }
  d.rel = std::sqrt(num / den);
  if (std::isnan(d.rel)) d.rel = INFINITY;
  return d;
}

}  // namespace mla::test_tp
