// `mla formats`: what each cache format costs in accuracy, measured end to end. For every format
// and int8 scale mode, on three kinds of latents (plain normal; a few outlier channels 10-20x the
// rest, as RMSNorm gammas make them; an attention sink), the fast path's o and lse are compared
// with a float64 reference on the ORIGINAL float values (what the format loses plus what the
// kernel loses), and with one on the de-quantized cache (the kernel alone, DESIGN §6). Prints a
// markdown table (docs/FORMATS.md is this command's output).
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "mla/attention.h"
#include "mla/commands.h"
#include "mla/dtype.h"
#include "mla/status.h"
#include "ref/compare.h"
#include "ref/reference.h"

namespace mla::tool {
namespace {

struct FormatsArgs {
  uint64_t seed = 1;
  int batch = 3, heads = 128, q_len = 2, context = 1024, block_size = 64, threads = 0;
  float outlier_gain = 0;  // > 0: every outlier channel this many times the rest (else 10-20x)
};

enum class Data { normal, outliers, sink };
const char* data_name(Data d) {
  return d == Data::normal ? "normal" : d == Data::outliers ? "outlier channels" : "attention sink";
}

struct Problem {
  std::vector<float> kv;  // [slots, 576] original values
  std::vector<float> q;   // [batch, q_len, heads, 576] original values
  std::vector<int32_t> seq_lens, block_table;
  int64_t num_blocks = 0;
  int max_blocks = 0;
};

// Latents ~ N(0, 1); `outliers`: 8 latent channels (the same in every token, as a norm's gamma
// makes them) scaled by 10-20; `sink`: token 0 of each sequence 4x larger, so most rows put much
// of their weight on it. The query is N(0, s^2) with the scores' spread about 2 on plain data.
Problem make_problem(const FormatsArgs& a, Data data, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Problem pr;
  const int bs = a.block_size;
  pr.max_blocks = (a.context + bs - 1) / bs;
  pr.num_blocks = int64_t(a.batch) * pr.max_blocks;
  for (int b = 0; b < a.batch; ++b) pr.seq_lens.push_back(a.context - b * (a.context / (2 * a.batch)));
  pr.block_table.resize(size_t(a.batch) * pr.max_blocks);
  for (size_t i = 0; i < pr.block_table.size(); ++i) pr.block_table[i] = int32_t(i);
  std::vector<float> gain(kLatentDim, 1.f);
  if (data == Data::outliers)
    for (int k = 0; k < 8; ++k) {
      const float g = 10.f + 10.f * float(rng() % 1001) / 1000.f;
      gain[rng() % kLatentDim] = a.outlier_gain > 0 ? a.outlier_gain : g;
    }
  pr.kv.resize(size_t(pr.num_blocks) * bs * kQkDim);
  for (int64_t s = 0; s < pr.num_blocks * bs; ++s) {
    const bool sink = data == Data::sink && s % (int64_t(pr.max_blocks) * bs) == 0;
    for (int d = 0; d < kQkDim; ++d)
      pr.kv[s * kQkDim + d] = nd(rng) * (d < kLatentDim ? gain[d] : 1.f) * (sink ? 4.f : 1.f);
  }
  const float qs = 2.f * std::sqrt(192.f) / std::sqrt(float(kQkDim));
  pr.q.resize(size_t(a.batch) * a.q_len * a.heads * kQkDim);
  for (auto& v : pr.q) v = nd(rng) * qs;
  return pr;
}

struct Format {
  KvDType kv;
  KvScale scale = KvScale::token;
  KvRotation rot = KvRotation::none;
  Fp8Scale fp8 = Fp8Scale::exact;
};

std::string format_name(const Format& f) {
  std::string n = kv_dtype_name(f.kv);
  if (f.kv == KvDType::int8) n += std::string(" ") + kv_scale_name(f.scale);
  if (f.kv == KvDType::fp8) n += f.fp8 == Fp8Scale::pow2 ? " (pow2 scales)" : " (exact scales)";
  if (f.rot != KvRotation::none) n += std::string(" + ") + kv_rotation_name(f.rot);
  return n;
}

// Relative norm error of o and max |lse - ref| over every row.
struct Err {
  double rel = 0, lse = 0;
};
Err error_of(const std::vector<float>& o, const std::vector<float>& lse,
             const std::vector<double>& ro, const std::vector<double>& rl) {
  double d2 = 0, r2 = 0;
  Err e;
  for (size_t i = 0; i < o.size(); ++i) {
    d2 += (o[i] - ro[i]) * (o[i] - ro[i]);
    r2 += ro[i] * ro[i];
  }
  for (size_t i = 0; i < lse.size(); ++i) e.lse = std::max(e.lse, std::fabs(lse[i] - rl[i]));
  e.rel = std::sqrt(d2 / r2);
  if (!std::isfinite(e.rel) || !std::isfinite(e.lse)) e.rel = e.lse = NAN;
  return e;
}

void run_formats(const FormatsArgs& a) {
  MLA_CHECK(a.batch >= 1 && a.heads >= 1 && a.q_len >= 1 && a.context >= a.q_len && a.block_size >= 1,
            "mla formats: batch " << a.batch << ", heads " << a.heads << ", q_len " << a.q_len
                                  << ", context " << a.context << ", block size " << a.block_size
                                  << " must be positive, context >= q_len");
  constexpr KvRotation had = KvRotation::hadamard;
  const std::vector<Format> formats = {
      {KvDType::bf16},
      {KvDType::fp16},
      {.kv = KvDType::fp8, .fp8 = Fp8Scale::pow2},
      {.kv = KvDType::fp8},
      {.kv = KvDType::fp8, .rot = had},
      {KvDType::int8, KvScale::group32},
      {KvDType::int8, KvScale::group64},
      {KvDType::int8, KvScale::group64, had},
      {KvDType::int8, KvScale::group128},
      {KvDType::int8, KvScale::token},
      {KvDType::int8, KvScale::token, had},
      {KvDType::int8, KvScale::channel},
      {KvDType::int8, KvScale::tensor},
      {KvDType::int8, KvScale::tensor, had}};
  std::printf("`mla formats --seed %llu --batch %d --heads %d --q-len %d --context %d "
              "--block-size %d%s`\n\n",
              (unsigned long long)a.seed, a.batch, a.heads, a.q_len, a.context, a.block_size,
              a.outlier_gain > 0 ? (" --outlier-gain " + std::to_string(int(a.outlier_gain))).c_str() : "");
  std::printf("| data | format | o rel. err vs unquantized | max lse err vs unquantized | "
              "o rel. err vs de-quantized (kernel) | max lse err vs de-quantized |\n");
  std::printf("| --- | --- | --- | --- | --- | --- |\n");
  for (Data data : {Data::normal, Data::outliers, Data::sink}) {
    const Problem pr = make_problem(a, data, a.seed * 3 + uint64_t(data));
    const DecodeParams p{.batch = a.batch, .q_len = a.q_len, .num_heads = a.heads,
                         .softmax_scale = 1.f / std::sqrt(192.f), .causal = true,
                         .seq_lens = pr.seq_lens.data(), .block_table = pr.block_table.data(),
                         .max_blocks_per_seq = pr.max_blocks};
    const int64_t rows = int64_t(a.batch) * a.q_len * a.heads;
    std::vector<double> uo(rows * kLatentDim), ul(rows);
    ref::decode_original(p, pr.q.data(), pr.kv.data(), pr.num_blocks, a.block_size, uo.data(),
                         ul.data());
    std::vector<int64_t> used;
    for (int b = 0; b < a.batch; ++b)
      for (int t = 0; t < pr.seq_lens[b]; ++t)
        used.push_back(int64_t(pr.block_table[size_t(b) * pr.max_blocks + t / a.block_size]) *
                           a.block_size + t % a.block_size);
    for (const Format& f : formats) {
      PagedLatentCache cache({.num_blocks = pr.num_blocks, .block_size = a.block_size,
                              .dtype = f.kv, .scale = f.scale, .rotation = f.rot,
                              .fp8_scale = f.fp8});
      cache.calibrate(pr.kv.data(), used);
      cache.import_f32(pr.kv.data());
      // The query in the kernel's type; the de-quantized reference sees what the kernel sees.
      const DType qt = kernel_q_dtype(f.kv, DType::f32);
      std::vector<uint16_t> q16(pr.q.size());
      std::vector<float> qk(pr.q.size()), qseen(pr.q.size());
      for (size_t i = 0; i < pr.q.size(); ++i) {
        q16[i] = qt == DType::f16 ? f32_to_f16(pr.q[i]) : f32_to_bf16(pr.q[i]);
        qk[i] = qt == DType::f16 ? f16_to_f32(q16[i]) : bf16_to_f32(q16[i]);
      }
      kernel_query_values(cache, rows, qk.data(), qseen.data());
      std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));
      decode(p, qt, q16.data(), cache, DecodeOptions{.threads = a.threads}, o.data(), lse.data());
      std::vector<double> ro(rows * kLatentDim), rl(rows);
      ref::decode(p, qseen.data(), cache, ro.data(), rl.data());
      const Err end = error_of(o, lse, uo, ul), kern = error_of(o, lse, ro, rl);
      std::printf("| %s | %s | %.2e | %.1e | %.2e | %.1e |\n", data_name(data),
                  format_name(f).c_str(), end.rel, end.lse, kern.rel, kern.lse);
      std::fflush(stdout);
    }
  }
}

}  // namespace

void add_formats_command(CLI::App& app) {
  auto a = std::make_shared<FormatsArgs>();
  CLI::App* c = app.add_subcommand(
      "formats", "Accuracy of every cache format and int8 scale mode against the unquantized cache "
                 "(markdown table)");
  c->add_option("--seed", a->seed, "Random seed")->capture_default_str();
  c->add_option("--batch", a->batch, "Sequences")->capture_default_str();
  c->add_option("--heads", a->heads, "Query heads")->capture_default_str();
  c->add_option("--q-len", a->q_len, "Query tokens per sequence (MTP)")->capture_default_str();
  c->add_option("--context", a->context, "Tokens of the longest sequence")->capture_default_str();
  c->add_option("--block-size", a->block_size, "Tokens per cache block")->capture_default_str();
  c->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  c->add_option("--outlier-gain", a->outlier_gain, "Outlier channels this many times the rest (0: 10-20x, drawn per channel)")->capture_default_str();
  c->callback([a] { run_formats(*a); });
}

}  // namespace mla::tool
