// `mla layer`: one attention layer (self_attn) of a Hugging Face DeepSeek-V2/V3 checkpoint on the
// hidden states of a file. Each sequence's first lens[b] - q_len tokens are prefilled into a paged
// cache, its last q_len tokens decoded in one step; o.npy holds their self_attn output. Everything
// is read and checked (config, every tensor of the layer, the inputs) before any work, and the
// output is written all or nothing. With --tp N under mpirun -np N each rank runs H/N heads of
// the same step and rank 0 writes o.npy (the all-reduced output, equal on every rank).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "mla/commands.h"
#include "mla/layer.h"
#include "mla/npy.h"
#include "mla/status.h"

namespace mla::tool {
namespace {

namespace fs = std::filesystem;

struct LayerArgs {
  std::string model, hidden, lens, out, kv_dtype = "bf16", kv_rotate = "none", weights = "stored";
  int layer = 0, q_len = 1, block_size = 64, threads = 0, tp = 1;
};

void run_layer(const LayerArgs& a) {
  Communicator* group = open_tp_group(a.tp);
  const bool root = group->rank() == 0;
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  const KvRotation rot = parse_kv_rotation(a.kv_rotate);
  MLA_CHECK(a.q_len >= 1, "--q-len " << a.q_len << " must be at least 1");
  MLA_CHECK(a.block_size >= 1, "--block-size " << a.block_size << " must be at least 1");
  MLA_CHECK(a.threads >= 0, "--threads " << a.threads << " is negative");
  MLA_CHECK(a.layer >= 0, "--layer " << a.layer << " is negative");
  MLA_CHECK(fs::is_directory(a.model), "--model " << a.model << " is not a directory");
  const ModelConfig cfg = read_model_config((fs::path(a.model) / "config.json").string());
  MLA_CHECK(a.layer < cfg.num_hidden_layers, "--layer " << a.layer << " is outside the model's "
                                                        << cfg.num_hidden_layers << " layers");
  const NpyArray hidden = read_npy(a.hidden, DType::f32, {-1, -1, cfg.hidden_size});
  const int B = int(hidden.shape[0]), T = int(hidden.shape[1]), Q = a.q_len, D = cfg.hidden_size;
  MLA_CHECK(B >= 1 && T >= 1, a.hidden << ": shape " << hidden.shape_str() << " has no sequences or tokens");
  std::vector<int32_t> lens(B, T);
  if (!a.lens.empty()) {
    const NpyArray l = read_npy(a.lens, DType::i32, {B});
    lens.assign(l.as<int32_t>(), l.as<int32_t>() + B);
  }
  for (int b = 0; b < B; ++b)
    MLA_CHECK(lens[b] >= Q && lens[b] <= T,
              (a.lens.empty() ? a.hidden : a.lens)
                  << ": lens[" << b << "] = " << lens[b] << " is outside [--q-len " << Q
                  << ", " << T << " tokens of hidden.npy]");
  const TensorStore store = TensorStore::open_dir(a.model);
  const MlaLayer layer(cfg, store, a.layer, rot, parse_layer_weights(a.weights), group);

  int64_t blocks = 0;
  for (int l : lens) blocks += (l + a.block_size - 1) / a.block_size;
  PagedLatentCache cache(CacheConfig{.num_blocks = blocks, .block_size = a.block_size, .dtype = kv, .rotation = rot});
  BlockAllocator alloc(blocks, a.block_size);
  std::vector<int> seqs;
  std::vector<float> step_hidden(size_t(B) * Q * D);
  const auto t0 = std::chrono::steady_clock::now();
  for (int b = 0; b < B; ++b) {
    seqs.push_back(alloc.add_sequence());
    const int P = lens[b] - Q;
    const float* hb = hidden.as<float>() + size_t(b) * T * D;
    if (P > 0) {
      const std::vector<int64_t> slots = alloc.append(seqs[b], P);
      std::vector<int32_t> pos(P);
      for (int t = 0; t < P; ++t) pos[t] = t;
      layer.prefill(P, hb, pos.data(), slots.data(), cache, a.threads);
    }
    alloc.append(seqs[b], Q);
    std::copy_n(hb + size_t(P) * D, size_t(Q) * D, step_hidden.data() + size_t(b) * Q * D);
  }
  const auto t1 = std::chrono::steady_clock::now();
  int mb = 0;
  const std::vector<int32_t> bt = alloc.block_table_array(seqs, &mb);
  std::vector<float> o(size_t(B) * Q * D);
  DecodeOptions opt;
  opt.threads = a.threads;
  LayerTimes times;
  layer.decode(LayerStep{.batch = B, .q_len = Q, .hidden = step_hidden.data(), .seq_lens = lens.data(),
                         .block_table = bt.data(), .max_blocks_per_seq = mb},
               cache, opt, o.data(), &times);
  if (!root) return;  // every rank holds the same all-reduced o; one writes it
  write_outputs(a.out, {{"o.npy", {B, Q, D}, o.data()}});
  char tp_group[64] = "", tp_op[64] = "";  // only under tensor parallelism
  if (a.tp > 1) {
    std::snprintf(tp_group, sizeof tp_group, ", tp %d (%d heads per rank)", a.tp, layer.local_heads());
    std::snprintf(tp_op, sizeof tp_op, ", all-gather %.2f, all-reduce %.2f", times.allgather * 1e3,
                  times.allreduce * 1e3);
  }
  std::printf("mla layer: %s layer %d, batch %d, q_len %d, kv %s%s: prefill %.1f ms, decode step "
              "%.2f ms (preprocess %.2f, attention %.2f, einsum + o_proj %.2f%s); wrote o.npy to %s\n",
              cfg.model_type.empty() ? "model" : cfg.model_type.c_str(), a.layer, B, Q,
              kv_dtype_name(kv), tp_group,
              std::chrono::duration<double>(t1 - t0).count() * 1e3,
              (times.preprocess + times.allgather + times.attention + times.einsum +
               times.allreduce) * 1e3,
              times.preprocess * 1e3, times.attention * 1e3, times.einsum * 1e3, tp_op,
              a.out.c_str());
}

}  // namespace

void add_layer_command(CLI::App& app) {
  auto a = std::make_shared<LayerArgs>();
  CLI::App* c = app.add_subcommand("layer", "Run one attention layer of a Hugging Face DeepSeek-V2/V3 checkpoint on hidden states");
  c->add_option("--model", a->model, "Model directory: config.json + model.safetensors or shards with model.safetensors.index.json")->required();
  c->add_option("--layer", a->layer, "Layer index")->capture_default_str();
  c->add_option("--hidden", a->hidden, "hidden.npy float32 [B, T, hidden_size]: the self_attn input at positions 0..T-1")->required();
  c->add_option("--lens", a->lens, "lens.npy int32 [B]: sequence b uses its first lens[b] tokens (default T)");
  c->add_option("--q-len", a->q_len, "Tokens decoded per sequence in the step (the last q_len of each)")->capture_default_str();
  c->add_option("--kv-dtype", a->kv_dtype, "Cache format: bf16, fp16, int8 or fp8")->capture_default_str();
  c->add_option("--kv-rotate", a->kv_rotate, "Latent rotation of the cache: none or hadamard (R folded into the layer's absorbed projections at load)")->capture_default_str();
  c->add_option("--weights", a->weights, "Projection weights: stored (as the checkpoint holds them) or int8 (per-row, quantized at load)")->capture_default_str();
  c->add_option("--block-size", a->block_size, "Tokens per cache block")->capture_default_str();
  c->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  c->add_option("--tp", a->tp, "Tensor-parallel ranks: run under mpirun -np N; each rank runs num_heads/N heads, rank 0 writes o.npy")->capture_default_str();
  c->add_option("--out", a->out, "Directory for o.npy float32 [B, q_len, hidden_size] (made if missing)")->required();
  c->callback([a] { run_layer(*a); });
}

}  // namespace mla::tool
