// `mla demo`: S decode steps of one attention layer (a checkpoint's, or random weights with a
// preset's real shapes), with a progress line, each operator's time beside its floor (DESIGN §9:
// the projections read their weights once a step, so at batch 1 the floor is those bytes at the
// measured DRAM read rate; at large batch their flops at the fp32-FMA rate), and the layer
// output's error against the float64 un-absorbed reference on the same weights.
//
// The history of each sequence (its first `context` tokens) is written straight into the cache as
// random latents (filling a 4096-token history of 48 sequences through the kv projection would
// dominate the demo); every token the demo decodes goes through preprocess and its cache write.
// Each step makes one DecodePlan (make_decode_plan) before the layer runs, as an engine running
// every layer of a model would, and the layer's decode reuses it; its time is printed on its own
// line (paid once per step, not per layer), outside the per-layer operator times.
//
// --tp N under mpirun -np N (issue 24): every rank makes the same random weights, history and
// inputs (same seed), runs its N-th of the heads and of the q_a / kv_a rows; the all-gather of
// those rows and the all-reduce of the o_proj partial sums have a row each (separate collectives at
// separate points of the step, so each shows its own wait); rank 0 prints and checks. Floors are
// per rank (its weight bytes and heads).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "cpu/thread_pool.h"
#include "core/atomic_file.h"
#include "mla/commands.h"
#include "mla/decode_plan.h"
#include "mla/dtype.h"
#include "mla/layer.h"
#include "mla/status.h"
#include "ref/layer_ref.h"
#include "roofline/ceilings.h"

namespace mla::tool {
namespace {

namespace fs = std::filesystem;

struct DemoArgs {
  std::string model, preset, kv_dtype = "bf16", kv_rotate = "none", ceilings, clock = "wall";
  std::string weights = "stored", json;  // --weights (bf16: the same as stored), --json FILE
  int batch = 1, context = 512, q_len = 1, steps = 8, threads = 0, layer = 0, tp = 1;
  uint64_t seed = 1;
};

// core/rng.h's splitmix64: fast enough to fill 187 M weights in well under a second.
using mla::Rng;

void add_random(TensorStore& s, const std::string& name, int64_t rows, int64_t cols, float gain,
                Rng& rng, bool norm = false) {
  std::vector<unsigned char> b(size_t(rows) * cols * 2);
  auto* p = reinterpret_cast<uint16_t*>(b.data());
  const float sd = gain / std::sqrt(float(cols));
  for (int64_t i = 0; i < rows * cols; ++i)
    p[i] = f32_to_bf16(norm ? 1.f + 0.2f * rng.unit() : rng.unit() * sd);
  s.add(name, StDType::bf16, norm ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols}, std::move(b));
}

// Random bf16 weights with the model's shapes, named as in a checkpoint.
TensorStore random_weights(const ModelConfig& c, int layer, uint64_t seed) {
  TensorStore s;
  Rng rng{seed};
  const std::string p = "model.layers." + std::to_string(layer) + ".self_attn.";
  const int64_t H = c.num_heads, D = c.hidden_size, qk = c.qk_head_dim();
  if (c.q_lora_rank > 0) {
    add_random(s, p + "q_a_proj.weight", c.q_lora_rank, D, 1, rng);
    add_random(s, p + "q_a_layernorm.weight", 1, c.q_lora_rank, 1, rng, true);
    add_random(s, p + "q_b_proj.weight", H * qk, c.q_lora_rank, 1, rng);
  } else {
    add_random(s, p + "q_proj.weight", H * qk, D, 1, rng);
  }
  add_random(s, p + "kv_a_proj_with_mqa.weight", kQkDim, D, 1, rng);
  add_random(s, p + "kv_a_layernorm.weight", 1, kLatentDim, 1, rng, true);
  // Gain 3 spreads the attention scores (std ~1.5 at qk_nope 128) so the softmax is not flat.
  add_random(s, p + "kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), kLatentDim, 3, rng);
  add_random(s, p + "o_proj.weight", D, H * c.v_head_dim, 1, rng);
  return s;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Ceilings get_ceilings(const std::string& given, int threads) {
  const std::string path = given.empty() ? default_ceilings_path() : given;
  if (!given.empty() || fs::exists(path)) {
    const std::vector<Ceilings> all = ceilings_from_json_file(path);
    if (const Ceilings* c = find(all, threads)) return *c;
    std::fprintf(stderr, "mla demo: %s has no ceilings for %d thread(s); measuring them briefly\n",
                 path.c_str(), threads);
  } else {
    std::fprintf(stderr, "mla demo: no %s; measuring the ceilings briefly (bench/roofline measures "
                         "them properly)\n", path.c_str());
  }
  return measure_ceilings(threads, 0.1);
}

void run_demo(const DemoArgs& a) {
  Communicator* group = open_tp_group(a.tp);
  const bool root = group->rank() == 0;
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  const KvRotation rot = parse_kv_rotation(a.kv_rotate);
  MLA_CHECK(a.batch >= 1, "--batch " << a.batch << " must be at least 1");
  MLA_CHECK(a.context >= 0, "--context " << a.context << " is negative");
  MLA_CHECK(a.q_len >= 1, "--q-len " << a.q_len << " must be at least 1");
  MLA_CHECK(a.steps >= 1, "--steps " << a.steps << " must be at least 1");
  MLA_CHECK(a.threads >= 0, "--threads " << a.threads << " is negative");
  MLA_CHECK(a.model.empty() || a.preset.empty(), "give --model or --preset, not both");
  MLA_CHECK(a.clock == "wall" || a.clock == "cpu", "--clock " << a.clock << " is not wall or cpu");
  MLA_CHECK(a.clock == "wall" || a.threads == 1,
            "--clock cpu needs --threads 1 (it times the calling thread), got --threads " << a.threads);
  const bool cpu_clock = a.clock == "cpu";
  const std::string preset = a.model.empty() && a.preset.empty() ? "deepseek-v3" : a.preset;
  ModelConfig cfg;
  TensorStore store;
  if (!a.model.empty()) {
    cfg = read_model_config((fs::path(a.model) / "config.json").string());
    store = TensorStore::open_dir(a.model);
  } else {
    cfg = preset_config(preset);
  }
  const int layer_index = a.model.empty() ? 0 : a.layer;
  const auto tw = std::chrono::steady_clock::now();
  if (a.model.empty()) store = random_weights(cfg, 0, a.seed);
  MLA_CHECK(a.weights != "bf16" || a.model.empty(),
            "--weights bf16 is for the presets' random bf16 weights; a checkpoint runs stored or int8");
  const LayerWeights wfmt = parse_layer_weights(a.weights == "bf16" ? "stored" : a.weights);
  const MlaLayer layer(cfg, store, layer_index, rot, wfmt, group);
  const double t_weights = std::chrono::duration<double>(std::chrono::steady_clock::now() - tw).count();
  const int threads = a.threads > 0 ? a.threads : cpu::ThreadPool::available_cpus();
  const Ceilings ceil = get_ceilings(a.ceilings, threads);

  // H: the heads this rank runs (all of them in one process); the floors are this rank's.
  const int B = a.batch, Q = a.q_len, D = cfg.hidden_size, H = layer.local_heads();
  const int bs = 64;
  const int final_len = a.context + a.steps * Q;
  const int64_t blocks = int64_t(B) * ((final_len + bs - 1) / bs);
  PagedLatentCache cache(CacheConfig{.num_blocks = blocks, .block_size = bs, .dtype = kv, .rotation = rot});
  BlockAllocator alloc(blocks, bs);
  std::vector<int> seqs;
  std::mt19937_64 rng(a.seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> tok(kQkDim);
  for (int b = 0; b < B; ++b) {
    seqs.push_back(alloc.add_sequence());
    for (int64_t slot : alloc.append(seqs[b], a.context)) {
      for (float& x : tok) x = nd(rng);
      cache.write(slot, tok.data());
    }
  }
  if (root)
    std::printf("mla demo: %s (%s), layer %d, %d heads, hidden %d, q_lora %d, weights %.0f MB%s (%s, "
                "ready in %.1f s)\n  batch %d, context %d, q_len %d, kv %s, %d thread(s), %d steps\n",
                a.model.empty() ? ("preset " + preset).c_str() : a.model.c_str(),
                a.model.empty() ? "random weights" : "checkpoint", layer_index, cfg.num_heads, D,
                cfg.q_lora_rank, layer.weight_bytes() / 1e6, a.tp > 1 ? " per rank" : "",
                wfmt == LayerWeights::int8 ? "int8 per row" : a.model.empty() ? "bf16" : "as stored",
                t_weights, B, a.context, Q, kv_dtype_name(kv), threads, a.steps);
  if (root && a.tp > 1)
    std::printf("  tensor parallel: %d ranks x %d heads (rank 0 on CPUs %s), fp32 all-gather of %d x %d "
                "and all-reduce of %d x %d floats per step\n",
                a.tp, H, affinity_string().c_str(), B * Q,
                cfg.q_lora_rank + kQkDim, B * Q, D);

  std::vector<float> hidden(size_t(B) * Q * D), out(size_t(B) * Q * D);
  std::vector<double> tp, ta, te, tag, tar, tt, tplan;
  DecodeOptions opt;
  opt.threads = a.threads;
  std::vector<int32_t> lens(B);
  std::vector<int32_t> bt;
  int mb = 0;
  // Between steps a buffer of twice the L3 is read, so each step finds the layer's weights and
  // cache in DRAM, as in a whole model where the other layers run in between (V2-Lite's 28 MB of
  // attention weights would otherwise stay in a 32 MB L3 and beat the DRAM floor).
  // Its read rate, by the demo's clock, is printed: what one plain reader gets from DRAM at the
  // moment (on a shared machine, less than the ceilings' figure).
  const long l3 = ::sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t flush_bytes = (size_t(2 * (l3 > 0 ? l3 : 64l << 20)) + 511) / 512 * 512;
  AlignedVec<uint64_t> flush(flush_bytes / 8, 1);
  const bool avx512 = __builtin_cpu_supports("avx512f");
  volatile uint64_t flush_sink = 0;  // keeps the reads
  std::vector<double> read_rates;
  auto clock_now = [&] {
    timespec ts{};
    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
  };
  for (int s = 0; s < a.steps; ++s) {
    const double r0 = clock_now();
    uint64_t sum = 0;
    if (avx512) {
      sum = ceilings_detail::read_sum_avx512f(flush.data(), flush_bytes);
    } else {
      for (uint64_t f : flush) sum += f;
    }
    flush_sink = flush_sink + sum;
    read_rates.push_back(double(flush_bytes) / (clock_now() - r0));
    for (float& x : hidden) x = nd(rng);
    for (int b = 0; b < B; ++b) {
      alloc.append(seqs[b], Q);
      lens[b] = alloc.seq_len(seqs[b]);
    }
    bt = alloc.block_table_array(seqs, &mb);
    std::fill(out.begin(), out.end(), std::nanf(""));
    // One plan per step, shared by every layer of a model (here the one layer reuses it).
    const double p0 = clock_now();
    const DecodePlan plan = make_decode_plan(
        {.batch = B, .q_len = Q, .num_heads = H, .seq_lens = lens.data(), .workers = a.threads});
    tplan.push_back(clock_now() - p0);
    LayerTimes t;
    t.clock = cpu_clock ? LayerClock::thread_cpu : LayerClock::wall;
    layer.decode(LayerStep{.batch = B, .q_len = Q, .hidden = hidden.data(), .seq_lens = lens.data(),
                           .block_table = bt.data(), .max_blocks_per_seq = mb},
                 cache, opt, plan, out.data(), &t);
    tp.push_back(t.preprocess), ta.push_back(t.attention), te.push_back(t.einsum);
    tag.push_back(t.allgather), tar.push_back(t.allreduce);
    tt.push_back(t.preprocess + t.allgather + t.attention + t.einsum + t.allreduce);
    if (root)
      std::fprintf(stderr, "\r  step %d/%d  %.2f ms (tokens at position %d)   ", s + 1, a.steps,
                 tt.back() * 1e3, lens[0] - 1);
  }
  if (!root) return;  // rank 0 prints and checks; the others' steps were the same
  std::fprintf(stderr, "\n");

  // Floors. Projections: their weight bytes at the DRAM read rate, or 2 flops per weight and token
  // at the fastest matrix rate the projections can use (the AMX bf16 tiles where the CPU has them,
  // else the fp32 FMAs the AVX-512 kernel widens to), whichever is larger. Attention: the cache
  // bytes of every sequence at the DRAM rate, or its flops (2*H*q_len*len*1088) at the rate of the
  // kernel's dot product.
  const int64_t n = int64_t(B) * Q;
  const double bw = ceil.read_bw_mem_gbs * 1e9;
  const double fma = std::max(ceil.fp32_fma_gflops, ceil.amx_bf16_gflops) * 1e9;
  const int64_t H64 = H, nope = cfg.qk_nope_head_dim, v = cfg.v_head_dim;
  // q_a and kv_a: the rank's share of their rows (1/tp: even for bf16; for an fp8 checkpoint's
  // block-wise split an approximation, which only shifts the flop floor and the bytes' division).
  const double pre_params = (double(cfg.q_lora_rank) * D + double(kQkDim) * D) / a.tp +
                            double(cfg.q_lora_rank > 0 ? H64 * cfg.qk_head_dim() * cfg.q_lora_rank
                                                       : H64 * cfg.qk_head_dim() * D) +
                            double(H64) * nope * kLatentDim;
  const double ein_params = double(H64) * v * kLatentDim + double(D) * H64 * v;
  const double wbytes = double(layer.weight_bytes());
  const double pre_bytes = wbytes * pre_params / (pre_params + ein_params);
  const double ein_bytes = wbytes - pre_bytes;
  auto proj_floor = [&](double bytes, double params) { return std::max(bytes / bw, 2.0 * params * n / fma); };
  double kv_bytes = 0, att_flops = 0;
  const double per_token = kv == KvDType::int8 ? kLatentDim + 2.0 * kRopeDim + 4 : 2.0 * kQkDim;
  for (int b = 0; b < B; ++b) {
    kv_bytes += lens[b] * per_token;
    att_flops += 2.0 * H * Q * lens[b] * 1088;
  }
  const double att_rate = (kv == KvDType::int8 ? ceil.int8_dot_gops
                           : kv == KvDType::bf16 ? ceil.bf16_dot_gflops : ceil.fp32_fma_gflops) * 1e9;
  const double f_pre = proj_floor(pre_bytes, pre_params), f_ein = proj_floor(ein_bytes, ein_params);
  const double f_att = std::max(kv_bytes / bw, att_flops / att_rate);
  auto bound = [&](double bytes, double other_time) { return bytes / bw >= other_time ? "weights (DRAM)" : "compute"; };
  // Median and best step: on a shared machine the best is the closer to what the code can do.
  struct Row {
    const char* name;
    std::vector<double> t;
    double floor;
    const char* by;
  };
  const double f_step = f_pre + f_att + f_ein;
  const Row rows[] = {
      {"preprocess", tp, f_pre, bound(pre_bytes, 2.0 * pre_params * n / fma)},
      // No floor (the link's), as the all-reduce below: the c_q / kv rows' all-gather, which
      // preprocess above leaves out.
      {"all-gather", tag, 0, "(link; waits for the slowest rank)"},
      {"attention", ta, f_att, kv_bytes / bw >= att_flops / att_rate ? "cache (DRAM)" : "compute"},
      {"einsum + o_proj", te, f_ein, bound(ein_bytes, 2.0 * ein_params * n / fma)},
      // No floor: it is the link's (docs/PERF.md's tensor-parallel table), and its time includes
      // the wait for the slowest rank.
      {"all-reduce", tar, 0, "(link; waits for the slowest rank)"},
      {"step", tt, f_step, ""}};
  std::printf("\n  %-17s %10s %9s %10s %9s %9s  %s\n", "operator", "median ms", "best ms", "floor ms",
              "fraction", "(best)", "floor set by");
  for (const Row& r : rows) {
    const bool no_floor = r.floor == 0;
    if (no_floor && a.tp == 1) continue;  // the collectives' rows, in one process
    const double med = median(r.t), best = *std::min_element(r.t.begin(), r.t.end());
    if (no_floor)
      std::printf("  %-17s %10.3f %9.3f %10s %9s %9s  %s\n", r.name, med * 1e3, best * 1e3, "-", "-",
                  "-", r.by);
    else
      std::printf("  %-17s %10.3f %9.3f %10.3f %9.2f %9.2f  %s\n", r.name, med * 1e3, best * 1e3,
                  r.floor * 1e3, r.floor / med, r.floor / best, r.by);
  }
  std::printf("  %.1f tokens/s (median step), %.1f (best step)\n", n / median(tt),
              n / *std::min_element(tt.begin(), tt.end()));
  nlohmann::json js = {{"model", a.model.empty() ? "preset " + preset : a.model},
                       {"batch", B}, {"context", a.context}, {"q_len", Q}, {"steps", a.steps},
                       {"threads", threads}, {"kv", kv_dtype_name(kv)},
                       {"weights", wfmt == LayerWeights::int8 ? "int8" : a.model.empty() ? "bf16" : "stored"},
                       {"weight_bytes", layer.weight_bytes()},
                       {"tokens_per_s", n / median(tt)}, {"operators", nlohmann::json::array()}};
  for (const Row& r : rows) {
    const double med = median(r.t), best = *std::min_element(r.t.begin(), r.t.end());
    js["operators"].push_back({{"name", r.name}, {"median_ms", med * 1e3}, {"best_ms", best * 1e3},
                               {"floor_ms", r.floor * 1e3}, {"fraction", r.floor / med},
                               {"fraction_best", r.floor / best}, {"bound", r.by}});
  }
  std::printf("  decode plan: made once per step and reused by the layer (an engine reuses it for "
              "every layer): median %.3f ms, not in the step above\n",
              median(tplan) * 1e3);
  std::printf("  ceilings (%d thread(s)): DRAM read %.1f GB/s, fp32 FMA %.0f GFLOP/s, bf16 dot %.0f, int8 dot %.0f GOP/s, AMX bf16 %.0f GFLOP/s\n"
              "  read rate between steps (%s clock): median %.1f GB/s%s\n",
              threads, ceil.read_bw_mem_gbs, ceil.fp32_fma_gflops, ceil.bf16_dot_gflops, ceil.int8_dot_gops,
              ceil.amx_bf16_gflops,
              cpu_clock ? "thread CPU" : "wall", median(read_rates) / 1e9,
              " (one stream; for comparison with the ceilings' DRAM rate, which the floors use)");

  // The last step's output of sequence 0 against the float64 un-absorbed reference, its history
  // taken from the cache as stored (what the fast path attended over).
  const auto tr = std::chrono::steady_clock::now();
  const ref::LayerWeights64 w64 = ref::load_layer_weights64(cfg, store, layer_index);
  const int P = lens[0] - Q;
  std::vector<float> hist(size_t(P) * kQkDim);
  for (int t = 0; t < P; ++t) cache.read(alloc.slot(seqs[0], t), hist.data() + size_t(t) * kQkDim);
  std::vector<double> ref(size_t(Q) * D);
  ref::layer_forward(w64, P, nullptr, hist.data(), Q, hidden.data(), ref.data());
  double num = 0, den = 0, dot = 0, no = 0;
  bool finite = true;
  for (int i = 0; i < Q * D; ++i) {
    finite &= std::isfinite(out[i]);
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
    dot += out[i] * ref[i];
    no += double(out[i]) * out[i];
  }
  const double rel = std::sqrt(num / den), cosine = dot / std::sqrt(no * den);
  // int8 anywhere (cache or weights) is held to the int8 bound: 3e-2 and cosine > 0.999.
  const bool int8 = kv == KvDType::int8 || wfmt == LayerWeights::int8;
  const double tol = int8 ? 3e-2 : 1e-2;
  const bool pass = finite && rel < tol && (!int8 || cosine > 0.999);
  std::printf("  output vs float64 un-absorbed reference (sequence 0, last step): rel %.2e, cosine %.6f "
              "(tolerance %.0e%s): %s  [reference %.1f s]\n",
              rel, cosine, tol, int8 ? ", cosine > 0.999" : "", pass ? "PASS" : "FAIL",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - tr).count());
  if (!a.json.empty()) {
    js["error"] = {{"rel", rel}, {"cosine", cosine}, {"tolerance", tol}, {"pass", pass}};
    write_file_atomic(a.json, js.dump(2) + "\n");  // whole or not at all
  }
  if (!pass) throw CheckFailed("the layer output differs from the float64 reference beyond tolerance");
}

}  // namespace

void add_demo_command(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  CLI::App* c = app.add_subcommand("demo", "Decode steps of one attention layer with per-operator times, floors and the error vs the float64 reference");
  c->add_option("--model", a->model, "Model directory (config.json + safetensors); default: --preset's shapes with random weights");
  c->add_option("--preset", a->preset, "deepseek-v3 (default) or deepseek-v2-lite: random bf16 weights with the real shapes");
  c->add_option("--layer", a->layer, "Layer index (with --model)")->capture_default_str();
  c->add_option("--batch", a->batch, "Sequences")->capture_default_str();
  c->add_option("--context", a->context, "History tokens per sequence before the first step")->capture_default_str();
  c->add_option("--q-len", a->q_len, "Tokens per sequence per step (MTP)")->capture_default_str();
  c->add_option("--kv-dtype", a->kv_dtype, "Cache format: bf16, fp16, int8 or fp8")->capture_default_str();
  c->add_option("--kv-rotate", a->kv_rotate, "Latent rotation of the cache: none or hadamard (R folded into the layer's absorbed projections at load)")->capture_default_str();
  c->add_option("--steps", a->steps, "Decode steps")->capture_default_str();
  c->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  c->add_option("--tp", a->tp, "Tensor-parallel ranks: run under mpirun -np N; each rank runs num_heads/N heads, rank 0 prints")->capture_default_str();
  c->add_option("--seed", a->seed, "Seed of the random weights and inputs")->capture_default_str();
  c->add_option("--clock", a->clock, "wall, or cpu: the thread's CPU time (with --threads 1; for a shared machine)")->capture_default_str();
  c->add_option("--weights", a->weights, "Projection weights: stored (as the checkpoint holds them; bf16 for the presets), bf16 (presets), or int8 (per-row, quantized at load)")->capture_default_str();
  c->add_option("--json", a->json, "Also write the operator table, tokens/s and the error to this JSON file");
  c->add_option("--ceilings", a->ceilings, "ceilings.json from bench/roofline (default: $MLA_CEILINGS or ./ceilings.json, else measured briefly)");
  c->callback([a] { run_demo(*a); });
}

}  // namespace mla::tool
