// `mla decode`: the attention on .npy files (or on a random case made in memory), so any user or
// script can run a case and compare. Everything is read and checked before anything is written.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <thread>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "mla/attention.h"
#include "mla/commands.h"
#include "mla/npy.h"
#include "mla/status.h"
#include "ref/compare.h"
#include "ref/reference.h"

namespace mla::tool {
namespace {

namespace fs = std::filesystem;

struct DecodeArgs {
  std::string in, out, kv_original;
  std::optional<uint64_t> random_seed;
  int batch = 4, heads = 128, q_len = 2, context = 1024, block_size = 64;
  std::string kv_dtype = "bf16", kv_scale = "token", kv_rotate = "none", fp8_scale = "exact", q_dtype, impl = "fast", reduction = "last",
              up = "resident", isa = "best";
  std::optional<float> scale;
  bool causal = true;
  int threads = 0, chunk = 4;
};

DType q_dtype_of(const DecodeArgs& a, KvDType kv) {
  if (a.q_dtype.empty()) return kv == KvDType::fp16 ? DType::f16 : DType::bf16;
  const DType t = parse_dtype(a.q_dtype);
  MLA_CHECK(t == DType::f32 || t == DType::bf16 || t == DType::f16,
            "--q-dtype " << a.q_dtype << " is not one of fp32, bf16, fp16");
  return t;
}

DecodeOptions options_of(const DecodeArgs& a) {
  DecodeOptions o;
  MLA_CHECK(a.impl == "ref" || a.impl == "fast", "--impl " << a.impl << " is not ref or fast");
  o.impl = a.impl == "ref" ? Impl::ref : Impl::fast;
  MLA_CHECK(a.threads >= 0 && a.threads <= kMaxThreads,
            "--threads " << a.threads << " is outside 0.." << kMaxThreads << " (0: all cores)");
  o.threads = a.threads;
  MLA_CHECK(a.chunk >= 1 && a.chunk <= kMaxChunk,
            "--chunk " << a.chunk << " is outside 1.." << kMaxChunk << " (tiles of 64 tokens)");
  o.chunk = a.chunk;
  MLA_CHECK(a.reduction == "separate" || a.reduction == "last",
            "--reduction " << a.reduction << " is not separate or last");
  o.reduction = a.reduction == "separate" ? Reduction::separate : Reduction::last;
  MLA_CHECK(a.up == "resident" || a.up == "spill", "--up " << a.up << " is not resident or spill");
  o.up = a.up == "spill" ? UpForm::spill : UpForm::resident;
  MLA_CHECK(isa_from_name(a.isa, &o.isa),
            "--isa " << a.isa << " is not best, amx, avx512, avx2, portable or amx-emu");
  return o;
}

// The query converted to the type the chosen implementation computes with, as raw elements, and
// the same values as float32 (q_used.npy).
struct WorkingQuery {
  DType dtype;
  std::vector<uint16_t> bits;  // bf16 / f16
  std::vector<float> f32;      // the values the computation sees
};

WorkingQuery convert_query(const std::vector<float>& q, DType t) {
  WorkingQuery w{.dtype = t, .bits = {}, .f32 = q};
  if (t == DType::f32) return w;
  w.bits.resize(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    w.bits[i] = t == DType::bf16 ? f32_to_bf16(q[i]) : f32_to_f16(q[i]);
    w.f32[i] = t == DType::bf16 ? bf16_to_f32(w.bits[i]) : f16_to_f32(w.bits[i]);
  }
  return w;
}

// A loaded (or generated) problem: params plus the arrays they point into.
struct Problem {
  int batch = 0, q_len = 0, heads = 0;
  std::vector<float> q;         // [B, q_len, H, 576]
  std::vector<float> kv;        // [num_blocks, block_size, 576]
  int64_t num_blocks = 0;
  int block_size = 0;
  std::vector<int32_t> block_table, seq_lens, q_lens;
  int max_blocks = 0;
  std::optional<float> tensor_scale;
  std::optional<std::vector<float>> channel_scale;
};

Problem load_problem(const std::string& dir) {
  MLA_CHECK(fs::is_directory(dir), "--in " << dir << " is not a directory");
  auto path = [&](const char* f) { return (fs::path(dir) / f).string(); };
  Problem pr;
  NpyArray q = read_npy(path("q.npy"), DType::f32, {-1, -1, -1, kQkDim});
  NpyArray kv = read_npy(path("kv.npy"), DType::f32, {-1, -1, kQkDim});
  for (const NpyArray* x : {&q, &kv})
    for (int64_t d : x->shape)
      MLA_CHECK(d <= (int64_t(1) << 30), (x == &q ? path("q.npy") : path("kv.npy"))
                                             << ": shape " << x->shape_str() << " has a dimension above 2^30");
  pr.batch = int(q.shape[0]);
  pr.q_len = int(q.shape[1]);
  pr.heads = int(q.shape[2]);
  MLA_CHECK(pr.q_len >= 1 && pr.heads >= 1, path("q.npy") << ": shape " << q.shape_str()
                                                           << " has no query rows or heads");
  pr.num_blocks = kv.shape[0];
  pr.block_size = int(kv.shape[1]);
  MLA_CHECK(pr.num_blocks >= 1 && pr.block_size >= 1,
            path("kv.npy") << ": shape " << kv.shape_str() << " has no blocks or tokens");
  NpyArray bt = read_npy(path("block_table.npy"), DType::i32, {pr.batch, -1});
  NpyArray sl = read_npy(path("seq_lens.npy"), DType::i32, {pr.batch});
  pr.max_blocks = int(bt.shape[1]);
  pr.q.assign(q.as<float>(), q.as<float>() + q.numel());
  pr.kv.assign(kv.as<float>(), kv.as<float>() + kv.numel());
  pr.block_table.assign(bt.as<int32_t>(), bt.as<int32_t>() + bt.numel());
  pr.seq_lens.assign(sl.as<int32_t>(), sl.as<int32_t>() + sl.numel());
  if (fs::exists(path("q_lens.npy"))) {
    NpyArray ql = read_npy(path("q_lens.npy"), DType::i32, {pr.batch});
    pr.q_lens.assign(ql.as<int32_t>(), ql.as<int32_t>() + ql.numel());
  }
  if (fs::exists(path("kv_tensor_scale.npy"))) {
    NpyArray s = read_npy(path("kv_tensor_scale.npy"), DType::f32, {1});
    pr.tensor_scale = s.as<float>()[0];
  }
  if (fs::exists(path("kv_channel_scale.npy"))) {
    NpyArray s = read_npy(path("kv_channel_scale.npy"), DType::f32, {kLatentDim});
    pr.channel_scale = std::vector<float>(s.as<float>(), s.as<float>() + kLatentDim);
  }
  return pr;
}

// A random case: scattered blocks, NaN in every slot no sequence uses, uneven q_lens when q_len > 1.
// Bytes available to this process: MemAvailable of /proc/meminfo (0 if unknown).
double available_memory() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  while (std::fgets(line, sizeof line, f))
    if (std::sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
  std::fclose(f);
  return kb * 1024;
}

// The random case's shape, bounded, and its memory estimated before anything is allocated.
void check_random_shape(const DecodeArgs& a) {
  auto in = [](const char* opt, int v, int lo, int hi) {
    MLA_CHECK(v >= lo && v <= hi, opt << " " << v << " is outside " << lo << ".." << hi);
  };
  in("--batch", a.batch, 1, 1 << 16);
  in("--heads", a.heads, 1, kMaxHeads);
  in("--q-len", a.q_len, 1, kMaxQLen);
  in("--context", a.context, 1, 1 << 24);
  in("--block-size", a.block_size, 1, 1 << 16);
  MLA_CHECK(a.context >= a.q_len, "--context " << a.context << " is shorter than --q-len " << a.q_len);
  // What the run holds at once: the fp32 cache content and the cache (<= 4 + 2 bytes a value), the
  // query (fp32, working copy, q_used), o and lse (fp32 and the float64 reference), and the
  // reference's float64 copy of the longest sequence's keys and values.
  const double slots = (double((a.context + a.block_size - 1) / a.block_size) * a.batch + 3) * a.block_size;
  const double rows = double(a.batch) * a.q_len * a.heads;
  const double bytes = slots * kQkDim * 6 + rows * kQkDim * 10 + rows * (kLatentDim + 1) * 12 +
                       double(a.context) * (kQkDim + kLatentDim) * 8;
  const double avail = available_memory();
  MLA_CHECK(avail == 0 || bytes <= 0.8 * avail,
            "the random case needs about " << bytes / 1e9 << " GB, more than the " << avail / 1e9
                                           << " GB of memory available (reduce --batch, --heads, "
                                              "--q-len or --context)");
}

Problem random_problem(const DecodeArgs& a, uint64_t seed) {
  check_random_shape(a);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  Problem pr;
  pr.batch = a.batch;
  pr.q_len = a.q_len;
  pr.heads = a.heads;
  pr.block_size = a.block_size;
  pr.max_blocks = (a.context + a.block_size - 1) / a.block_size;
  pr.num_blocks = int64_t(pr.max_blocks) * a.batch + 3;  // a few blocks nobody uses
  std::vector<int32_t> ids(pr.num_blocks);
  for (int64_t i = 0; i < pr.num_blocks; ++i) ids[i] = int32_t(i);
  std::shuffle(ids.begin(), ids.end(), rng);
  pr.block_table.assign(size_t(a.batch) * pr.max_blocks, -1);
  for (int b = 0; b < a.batch; ++b) {
    // Lengths vary per sequence (the last is the full context), so tails and splits fall anywhere.
    const int len = b == a.batch - 1 ? a.context
                                     : std::max(a.q_len, int(a.context - rng() % (a.context / 2 + 1)));
    pr.seq_lens.push_back(len);
    pr.q_lens.push_back(a.q_len - int(rng() % a.q_len) * (b % 2));
    for (int j = 0; j < (len + a.block_size - 1) / a.block_size; ++j)
      pr.block_table[size_t(b) * pr.max_blocks + j] = ids[size_t(b) * pr.max_blocks + j];
  }
  pr.kv.assign(size_t(pr.num_blocks) * a.block_size * kQkDim, std::nanf(""));
  for (int b = 0; b < a.batch; ++b)
    for (int t = 0; t < pr.seq_lens[b]; ++t) {
      const int64_t slot = int64_t(pr.block_table[size_t(b) * pr.max_blocks + t / a.block_size]) *
                               a.block_size + t % a.block_size;
      for (int d = 0; d < kQkDim; ++d) pr.kv[slot * kQkDim + d] = nd(rng);
    }
  // Query scaled so the scores' spread is about 2 (realistic attention, neither flat nor one-hot).
  const float qs = 2.f * std::sqrt(192.f) / std::sqrt(float(kQkDim));
  pr.q.resize(size_t(a.batch) * a.q_len * a.heads * kQkDim);
  for (auto& v : pr.q) v = nd(rng) * qs;
  return pr;
}

void check_problem_files(const Problem& pr, KvDType kv, KvScale mode) {
  if (kv != KvDType::int8) {
    MLA_CHECK(!pr.tensor_scale && !pr.channel_scale,
              (pr.tensor_scale ? "kv_tensor_scale.npy" : "kv_channel_scale.npy")
                  << " is given but the cache is " << kv_dtype_name(kv)
                  << " (scales are for --kv-dtype int8)");
    return;
  }
  if (pr.tensor_scale)
    MLA_CHECK(mode == KvScale::tensor, "kv_tensor_scale.npy is given but --kv-scale is "
                                           << kv_scale_name(mode) << " (use --kv-scale tensor)");
  if (pr.channel_scale)
    MLA_CHECK(mode == KvScale::channel, "kv_channel_scale.npy is given but --kv-scale is "
                                            << kv_scale_name(mode) << " (use --kv-scale channel)");
}

// NaN and Inf go to the kernels as they are (DESIGN §6: the rows that see them come out NaN), but
// a finite value the cache format cannot hold (fp16 past 65504) or a non-finite latent value of an
// int8 or fp8 cache (no scale represents it: PagedLatentCache::write counts both) is refused, at
// the first position that has one. Slots no sequence uses may hold anything.
void check_storable(const Problem& pr, const DecodeParams& p, KvDType kv) {
  auto lost = [&](float x, int d) {
    if ((kv == KvDType::int8 || kv == KvDType::fp8) && d < kLatentDim) return !std::isfinite(x);
    if (!std::isfinite(x)) return false;
    return !std::isfinite(kv == KvDType::fp16 ? f16_to_f32(f32_to_f16(x)) : bf16_to_f32(f32_to_bf16(x)));
  };
  for (int b = 0; b < p.batch; ++b)
    for (int t = 0; t < p.seq_lens[b]; ++t) {
      const int64_t slot =
          int64_t(p.block_table[int64_t(b) * p.max_blocks_per_seq + t / pr.block_size]) * pr.block_size +
          t % pr.block_size;
      const float* tok = pr.kv.data() + slot * kQkDim;
      for (int d = 0; d < kQkDim; ++d)
        MLA_CHECK(!lost(tok[d], d),
                  "kv.npy: block " << slot / pr.block_size << " token " << slot % pr.block_size
                                   << " (sequence " << b << " position " << t << ") value [" << d
                                   << "] = " << tok[d]
                                   << (kv == KvDType::int8 || kv == KvDType::fp8
                                           ? std::string(" is not finite and cannot be stored in an ") +
                                                 kv_dtype_name(kv) + " cache (no scale represents it)"
                                           : std::string(" is beyond the largest finite ") +
                                                 kv_dtype_name(kv) + " value and cannot be stored"));
    }
}

void run_decode(const DecodeArgs& a) {
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  const KvScale mode = parse_kv_scale(a.kv_scale);
  const KvRotation rot = parse_kv_rotation(a.kv_rotate);
  const Fp8Scale fp8s = parse_fp8_scale(a.fp8_scale);
  const DecodeOptions opt = options_of(a);
  MLA_CHECK(a.random_seed || (!a.in.empty() && !a.out.empty()),
            "give --in DIR and --out DIR, or --random SEED");
  MLA_CHECK(a.kv_original.empty() || !a.random_seed,
            "--kv-original is for --in files; a random case compares with its own original values");
  const Problem pr = a.random_seed ? random_problem(a, *a.random_seed) : load_problem(a.in);
  check_problem_files(pr, kv, mode);
  if (!a.random_seed) check_out_dir(fs::absolute(fs::path(a.out)).lexically_normal());

  DecodeParams p{.batch = pr.batch, .q_len = pr.q_len, .num_heads = pr.heads,
                 .softmax_scale = a.scale.value_or(default_softmax_scale()), .causal = a.causal,
                 .seq_lens = pr.seq_lens.data(),
                 .q_lens = pr.q_lens.empty() ? nullptr : pr.q_lens.data(),
                 .block_table = pr.block_table.data(), .max_blocks_per_seq = pr.max_blocks};

  PagedLatentCache cache(CacheConfig{.num_blocks = pr.num_blocks, .block_size = pr.block_size,
                                     .dtype = kv, .scale = mode, .rotation = rot,
                                     .fp8_scale = fp8s});
  validate(p, cache);  // before the cache is filled: block ids and lengths are sane
  check_storable(pr, p, kv);
  if (kv == KvDType::int8 && mode != KvScale::token) {
    if (pr.tensor_scale && mode == KvScale::tensor) {
      cache.set_tensor_scale(*pr.tensor_scale);
    } else if (pr.channel_scale && mode == KvScale::channel) {
      cache.set_channel_scales(pr.channel_scale->data());
    } else {
      std::vector<int64_t> used;
      for (int b = 0; b < p.batch; ++b)
        for (int t = 0; t < p.seq_lens[b]; ++t) used.push_back(
            int64_t(p.block_table[int64_t(b) * p.max_blocks_per_seq + t / pr.block_size]) *
                pr.block_size + t % pr.block_size);
      cache.calibrate(pr.kv.data(), used);
    }
  }

  // Only slots no sequence uses can hold what the format cannot (check_storable checked the
  // others), and nothing reads them.
  cache.import_f32(pr.kv.data());

  const DType qt = opt.impl == Impl::fast ? kernel_q_dtype(kv, q_dtype_of(a, kv)) : q_dtype_of(a, kv);
  WorkingQuery wq = convert_query(pr.q, qt);
  if (opt.impl == Impl::fast) {  // int8: the query as the kernels quantize it
    std::vector<float> seen(wq.f32.size());
    kernel_query_values(cache, int64_t(seen.size() / kQkDim), wq.f32.data(), seen.data());
    wq.f32 = std::move(seen);
  }
  const void* qdata = qt == DType::f32 ? static_cast<const void*>(wq.f32.data())
                                       : static_cast<const void*>(wq.bits.data());
  const int64_t rows = int64_t(p.batch) * p.q_len * p.num_heads;
  std::vector<float> o(rows * kLatentDim, std::nanf("")), lse(rows, std::nanf(""));

  // Errors against the float64 reference on the de-quantized cache (the kernel's own error) and
  // on the original float values with the original query (what the format costs end to end).
  auto errors = [&](const std::vector<float>& kv_orig) {
    std::vector<double> ro(rows * kLatentDim), rl(rows), uo(rows * kLatentDim), ul(rows);
    ref::decode(p, wq.f32.data(), cache, ro.data(), rl.data());
    ref::decode_original(p, pr.q.data(), kv_orig.data(), pr.num_blocks, pr.block_size, uo.data(),
                         ul.data());
    const ref::Tolerance tol = ref::tolerance_for(kv, opt.impl == Impl::ref);
    const ref::Comparison c = ref::compare(o.data(), lse.data(), ro.data(), rl.data(), rows, kLatentDim, tol);
    const ref::Comparison e = ref::compare(o.data(), lse.data(), uo.data(), ul.data(), rows, kLatentDim, tol);
    std::printf("  vs float64 on the de-quantized cache: %s  %s\n"
                "  end to end, vs float64 on the unquantized cache: rel %.2e lse %.1e (format %s%s%s%s%s)\n",
                c.summary().c_str(), c.pass ? "PASS" : "FAIL", e.rel_err, e.lse_abs,
                kv_dtype_name(kv), kv == KvDType::int8 ? " " : "",
                kv == KvDType::int8 ? kv_scale_name(mode) : "",
                kv == KvDType::fp8 ? (fp8s == Fp8Scale::pow2 ? " pow2 scales" : " exact scales") : "",
                rot == KvRotation::none ? "" : " + hadamard");
    return c.pass;
  };

  if (!a.random_seed) {
    decode(p, qt, qdata, cache, opt, o.data(), lse.data());
    std::vector<float> kv_used(pr.kv.size());
    cache.export_f32(kv_used.data());
    write_outputs(a.out, {
        {"o.npy", {p.batch, p.q_len, p.num_heads, kLatentDim}, o.data()},
        {"lse.npy", {p.batch, p.q_len, p.num_heads}, lse.data()},
        {"q_used.npy", {p.batch, p.q_len, p.num_heads, kQkDim}, wq.f32.data()},
        {"kv_used.npy", {pr.num_blocks, pr.block_size, kQkDim}, kv_used.data()}});
    std::printf("wrote o.npy, lse.npy, q_used.npy, kv_used.npy to %s\n", a.out.c_str());
    if (!a.kv_original.empty()) {
      NpyArray ko = read_npy(a.kv_original, DType::f32, {pr.num_blocks, pr.block_size, kQkDim});
      if (!errors(std::vector<float>(ko.as<float>(), ko.as<float>() + ko.numel())))
        throw CheckFailed("output differs from the float64 reference beyond DESIGN §6 tolerance");
    }
    return;
  }

  // Random case: time the run (median of a few), then check against the float64 reference.
  std::vector<double> times;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    decode(p, qt, qdata, cache, opt, o.data(), lse.data());
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    if (opt.impl == Impl::ref) break;
  }
  std::sort(times.begin(), times.end());
  const double t = times[times.size() / 2];
  std::fill(o.begin(), o.end(), std::nanf(""));
  std::fill(lse.begin(), lse.end(), std::nanf(""));
  decode(p, qt, qdata, cache, opt, o.data(), lse.data());
  double flops = 0;
  for (int b = 0; b < p.batch; ++b) flops += 2.0 * p.num_heads * q_len_of(p, b) * p.seq_lens[b] * 1088;
  std::printf("mla decode --random %llu: batch %d heads %d q_len %d context %d block %d kv %s "
              "impl %s\n  time %.3f ms  %.1f GFLOP/s\n",
              (unsigned long long)*a.random_seed, p.batch, p.num_heads, p.q_len, a.context,
              pr.block_size, kv_dtype_name(kv), a.impl.c_str(), t * 1e3, flops / t * 1e-9);
  if (!errors(pr.kv)) throw CheckFailed("output differs from the float64 reference beyond DESIGN §6 tolerance");
}

}  // namespace

void add_decode_command(CLI::App& app) {
  auto a = std::make_shared<DecodeArgs>();
  CLI::App* c = app.add_subcommand("decode", "Run the paged-attention decode on .npy files or a random case");
  c->add_option("--in", a->in, "Directory with q.npy, kv.npy, block_table.npy, seq_lens.npy [, q_lens.npy, kv_tensor_scale.npy | kv_channel_scale.npy]");
  c->add_option("--out", a->out, "Directory for o.npy, lse.npy, q_used.npy, kv_used.npy (made if missing)");
  c->add_option("--random", a->random_seed, "Run a random case made from this seed instead of files; prints time and error vs the float64 reference");
  c->add_option("--batch", a->batch, "Random case: sequences")->capture_default_str();
  c->add_option("--heads", a->heads, "Random case: query heads")->capture_default_str();
  c->add_option("--q-len", a->q_len, "Random case: query tokens per sequence (MTP)")->capture_default_str();
  c->add_option("--context", a->context, "Random case: tokens of the longest sequence")->capture_default_str();
  c->add_option("--block-size", a->block_size, "Random case: tokens per cache block")->capture_default_str();
  c->add_option("--kv-dtype", a->kv_dtype, "Cache format: bf16, fp16, int8 or fp8 (e4m3, FlashMLA's 656-byte token)")->capture_default_str();
  c->add_option("--kv-scale", a->kv_scale, "int8 scale: token, group32, group64, group128, tensor or channel")->capture_default_str();
  c->add_option("--kv-rotate", a->kv_rotate, "Latent rotation before quantizing: none or hadamard (R = D H / sqrt(512); q and o rotated around the kernels; q_used.npy, kv_used.npy in the original space)")->capture_default_str();
  c->add_option("--fp8-scale", a->fp8_scale, "fp8 tile scales written: exact (max/448) or pow2 (FlashMLA's power of two)")->capture_default_str();
  c->add_option("--kv-original", a->kv_original, "With --in: the unquantized cache [num_blocks, block_size, 576] f32; prints the end-to-end error against it beside the kernel's error (a random case always prints both)");
  c->add_option("--q-dtype", a->q_dtype, "Query type: fp32, bf16 or fp16 (default: the cache's, bf16 for int8)");
  c->add_option("--scale", a->scale, "Softmax scale (default 1/sqrt(192))");
  c->add_flag("--causal,!--no-causal", a->causal, "Causal mask for MTP query tokens (default on)");
  c->add_option("--threads", a->threads, "Worker threads (0: all cores)")->capture_default_str();
  c->add_option("--impl", a->impl, "ref (float64 reference) or fast (CPU kernels)")->capture_default_str();
  c->add_option("--chunk", a->chunk, "KV tiles of 64 tokens per pipeline step")->capture_default_str();
  c->add_option("--reduction", a->reduction, "Split-KV reduction: separate or last")->capture_default_str();
  c->add_option("--up", a->up, "Update stage: resident or spill")->capture_default_str();
  c->add_option("--isa", a->isa, "best (run-time choice), amx, avx512 or avx2 (force those kernels; an error when the CPU lacks them), portable (plain C++) or amx-emu (the AMX kernels over an emulated tile unit: testing)")->capture_default_str();
  c->callback([a] { run_decode(*a); });
}

}  // namespace mla::tool
