// `mla bench`: the seed's table for the paged-attention decode on this machine. One row per shape
// b{B}_k{K}_c{C}: the time of two kernel configurations ("old" = the straightforward kernel, "new"
// = the best one, or any two given with --variants), their ratio and its average, the achieved
// GFLOP/s and fraction of the floor set by the measured ceilings (harness/perf_model.h), the
// time of a baseline composed from OpenBLAS, and a check of every timed output against the float64
// reference. The shapes, the baseline, the model and the check live in harness/; this file
// is the command line, the timing loop and the report.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "roofline/ceilings.h"
#include "core/atomic_file.h"
#include "core/int_list.h"
#include "mla/commands.h"
#include "mla/status.h"
#include "harness/blas_baseline.h"
#include "harness/case.h"
#include "harness/parallel.h"
#include "harness/perf_model.h"
#include "harness/stats.h"
#include "harness/variants.h"

namespace mla::tool {

namespace {

using bench::Stats;
using nlohmann::json;

struct BenchArgs {
  std::string grid = "seed";
  std::string b_list, k_list, c_list;
  int heads = 128;
  int q_len = 2;
  std::string kv_dtype = "int8";
  std::string kv_scale = "token";
  int chunk = 4;
  int block_size = 64;
  std::string variants = "old:new";
  int reps = 0;  // 0: chosen per row from the run time
  int warmup = 1;
  double target_s = 0.25;
  uint64_t seed = 1;
  std::string json_path;
  std::string ceilings_path;
  std::string isa = "best";  // of every variant that does not name one
  bool no_baseline = false;
  bool no_check = false;
  bool stage_times = false;
};

// Repetition bounds when --reps is not given. The kernels: at least 5 runs for a median and a
// spread, at most 100 (a b1_k512 run takes ~0.3 ms; more adds nothing). The baseline is slower
// (up to ~1 s for b48_k4096) and only a reference point: 3 to 20 runs.
constexpr int kMinReps = 5, kMaxReps = 100;
constexpr int kMinBaselineReps = 3, kMaxBaselineReps = 20;
// A spread above this flags the row in the footer: on a quiet machine the kernels' runs vary by
// a few percent.
constexpr double kNoisySpread = 0.2;

// One line on stderr, rewritten in place on a terminal; elsewhere only the row starts are
// printed, one per line, so a log stays readable.
class Progress {
 public:
  Progress() : tty_(isatty(2) != 0) {}
  void row(const std::string& msg) { show(msg, true); }
  void step(const std::string& msg) { show(msg, false); }
  void clear() {
    if (tty_ && shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

 private:
  void show(const std::string& msg, bool important) {
    if (tty_) {
      std::fprintf(stderr, "\r\033[K%s", msg.c_str());
      shown_ = true;
    } else if (important) {
      std::fprintf(stderr, "%s\n", msg.c_str());
    }
    std::fflush(stderr);
  }
  bool tty_;
  bool shown_ = false;
};

// The ceilings per thread count: from --ceilings (must load), else from the default path if the
// file is there, and any thread count missing from them measured now, briefly.
struct CeilingSet {
  std::vector<Ceilings> all;
  std::vector<std::string> notes;  // where each figure came from, for the report
  json sources = json::object();   // threads -> file path or "measured"
};

// limit: "native", or "avx2" for the AVX2 kernels (ceilings_detail::IsaLimit).
CeilingSet get_ceilings(const std::string& given, const std::vector<int>& threads,
                        const std::string& limit) {
  CeilingSet cs;
  std::string path = given;
  if (!given.empty()) {
    cs.all = ceilings_from_json_file(given);
  } else {
    path = default_ceilings_path();
    if (std::filesystem::exists(path)) {
      cs.all = ceilings_from_json_file(path);
    } else {
      path.clear();
    }
  }
  std::vector<Ceilings> measured;
  for (int c : threads) {
    if (find(cs.all, c, limit)) {
      cs.sources[std::to_string(c)] = path;
      continue;
    }
    std::fprintf(stderr,
                 "mla bench: no %s ceilings for %d thread(s)%s%s; measuring them now (0.1 s per "
                 "test; bench/roofline measures them properly)\n",
                 limit.c_str(), c, path.empty() ? "" : " in ", path.c_str());
    try {
      measured.push_back(ceilings_detail::measure_ceilings_limited(
          c, 0.1,
          limit == "avx2" ? ceilings_detail::IsaLimit::avx2 : ceilings_detail::IsaLimit::native));
      cs.sources[std::to_string(c)] = "measured";
      cs.notes.push_back("ceilings for c" + std::to_string(c) + " measured briefly by mla bench");
    } catch (const Error& e) {
      std::fprintf(stderr, "mla bench: could not measure ceilings: %s\n", e.what());
      cs.notes.push_back("no ceilings for c" + std::to_string(c) + ": " + e.what());
    }
  }
  for (auto& m : measured) cs.all.push_back(std::move(m));
  return cs;
}

struct Timed {
  bench::Variant variant;  // for the baseline: text "blas"
  Stats stats;
  std::optional<bench::CheckResult> check;
};

struct RowResult {
  std::string name;
  int b = 0, k = 0, c = 0;
  std::vector<Timed> variants;  // old, new
  std::optional<Timed> baseline;
  double flops = 0;
  std::optional<bench::Floor> floor;
  int reps = 0, baseline_reps = 0;
  // --stage-times: the "new" variant's per-stage times per call (summed over its workers), from
  // separate runs after the timed ones, so the timers cannot touch the timed numbers.
  std::optional<StageTimes> stages;
  int stage_runs = 0;
  double ratio() const { return variants[0].stats.median / variants[1].stats.median; }
  double gflops() const { return flops / variants[1].stats.median / 1e9; }
  std::optional<double> fraction() const {
    if (!floor) return std::nullopt;
    return floor->floor_s / variants[1].stats.median;
  }
  bool checked() const { return variants[0].check.has_value(); }
  std::vector<std::string> failures() const {
    std::vector<std::string> f;
    for (size_t i = 0; i < variants.size(); ++i)
      if (variants[i].check && !variants[i].check->pass) f.push_back(i == 0 ? "old" : "new");
    if (baseline && baseline->check && !baseline->check->pass) f.push_back("blas");
    return f;
  }
  bool sampled() const { return checked() && variants[0].check->sampled; }
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string fmt_us(double s) { return fmt(s * 1e6 >= 1e5 ? "%.0f" : "%.1f", s * 1e6); }
std::string fmt_pct(double x) { return fmt("%.1f%%", x * 100); }

// Column layout of the table.
const char* const kHeaderFmt = "%-18s %11s %6s %11s %6s %8s %8s %7s %-7s %11s %6s %8s  %s\n";

void print_header() {
  std::printf(kHeaderFmt, "row", "old us", "spread", "new us", "spread", "old/new", "GFLOP/s",
              "floor", "bound", "BLAS us", "spread", "new/BLAS", "check");
}

void print_row(const RowResult& r) {
  const Stats& o = r.variants[0].stats;
  const Stats& n = r.variants[1].stats;
  const auto frac = r.fraction();
  std::string bound = "-";
  if (r.floor)
    bound = r.floor->compute_bound ? (r.floor->unit == "vector units" ? "compute" : r.floor->unit)
                                   : (r.floor->bw_level == "l3" ? "L3" : "mem");
  std::string check = "-";
  if (r.checked()) {
    const auto f = r.failures();
    if (f.empty()) {
      check = r.sampled() ? "ok*" : "ok";
    } else {
      check = "FAIL:";
      for (size_t i = 0; i < f.size(); ++i) check += (i ? "," : "") + f[i];
    }
  }
  std::printf(kHeaderFmt, r.name.c_str(), fmt_us(o.median).c_str(), fmt_pct(o.spread()).c_str(),
              fmt_us(n.median).c_str(), fmt_pct(n.spread()).c_str(), fmt("%.3f", r.ratio()).c_str(),
              fmt("%.1f", r.gflops()).c_str(), frac ? fmt("%.2f", *frac).c_str() : "-",
              bound.c_str(), r.baseline ? fmt_us(r.baseline->stats.median).c_str() : "-",
              r.baseline ? fmt_pct(r.baseline->stats.spread()).c_str() : "-",
              r.baseline ? fmt("%.3f", n.median / r.baseline->stats.median).c_str() : "-",
              check.c_str());
  if (r.stages) {
    std::string line = "    stages of new, per call (all workers):";
    for (int k = 0; k < StageTimes::kStages; ++k)
      if (r.stages->steps[k])
        line += std::string(" ") + stage_index_name(k) + " " + fmt_us(r.stages->seconds[k]);
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);
}

json stats_json(const Stats& s) {
  return json{{"median_us", s.median * 1e6},
              {"p10_us", s.p10 * 1e6},
              {"p90_us", s.p90 * 1e6},
              {"min_us", s.min * 1e6},
              {"max_us", s.max * 1e6},
              {"spread", s.spread()},
              {"reps", s.n}};
}

json check_json(const std::optional<bench::CheckResult>& c) {
  if (!c) return nullptr;
  return json{{"pass", c->pass},
              {"rel_err", c->cmp.rel_err},
              {"cosine", c->cmp.cosine},
              {"max_lse_err", c->cmp.lse_abs},
              {"mismatched_nonfinite", c->cmp.mismatched_nonfinite},
              {"nonfinite", c->nonfinite},
              {"rows_checked", c->rows_checked},
              {"sampled", c->sampled}};
}

json row_json(const RowResult& r, const BenchArgs& a) {
  const Stats& o = r.variants[0].stats;
  const Stats& n = r.variants[1].stats;
  json j = {{"name", r.name},
            {"b", r.b},
            {"k", r.k},
            {"c", r.c},
            {"heads", a.heads},
            {"q_len", a.q_len},
            {"kv_dtype", kv_dtype_name(parse_kv_dtype(a.kv_dtype))},
            {"kv_scale", kv_scale_name(parse_kv_scale(a.kv_scale))},
            {"block_size", a.block_size},
            {"old_us", o.median * 1e6},
            {"new_us", n.median * 1e6},
            {"old_spread", o.spread()},
            {"new_spread", n.spread()},
            {"speedup", r.ratio()},
            {"flops", r.flops},
            {"gflops", r.gflops()},
            {"old_variant", r.variants[0].variant.describe()},
            {"new_variant", r.variants[1].variant.describe()},
            {"old", stats_json(o)},
            {"new", stats_json(n)}};
  j["baseline_us"] = r.baseline ? json(r.baseline->stats.median * 1e6) : json(nullptr);
  j["baseline_spread"] = r.baseline ? json(r.baseline->stats.spread()) : json(nullptr);
  j["new_over_baseline"] = r.baseline ? json(n.median / r.baseline->stats.median) : json(nullptr);
  j["baseline"] = r.baseline ? stats_json(r.baseline->stats) : json(nullptr);
  const auto frac = r.fraction();
  j["ceiling_fraction"] = frac ? json(*frac) : json(nullptr);
  j["old_gflops"] = r.flops / o.median / 1e9;
  j["old_ceiling_fraction"] = r.floor ? json(r.floor->floor_s / o.median) : json(nullptr);
  if (r.floor)
    j["floor"] = {{"floor_us", r.floor->floor_s * 1e6},
                  {"compute_us", r.floor->compute_s * 1e6},
                  {"bandwidth_us", r.floor->bandwidth_s * 1e6},
                  {"bound", r.floor->compute_bound ? "compute" : "bandwidth"},
                  {"compute_unit", r.floor->unit},
                  {"bw_level", r.floor->bw_level},
                  {"bw_gbs", r.floor->bw_gbs}};
  else
    j["floor"] = nullptr;
  if (!r.checked()) {
    j["check"] = "skipped";
  } else {
    j["check"] = r.failures().empty() ? "pass" : "fail";
  }
  if (r.stages) {
    json us = json::object(), steps = json::object();
    for (int k = 0; k < StageTimes::kStages; ++k) {
      us[stage_index_name(k)] = r.stages->seconds[k] * 1e6;
      steps[stage_index_name(k)] = r.stages->steps[k] / std::max(r.stage_runs, 1);
    }
    j["stage_times"] = {{"variant", "new"}, {"runs", r.stage_runs}, {"us_per_call", us},
                        {"steps_per_call", steps}};
  }
  j["checks"] = {{"old", check_json(r.variants[0].check)},
                 {"new", check_json(r.variants[1].check)},
                 {"baseline", r.baseline ? check_json(r.baseline->check) : json(nullptr)}};
  return j;
}

RowResult run_row(const BenchArgs& a, const bench::CaseSpec& spec, int c,
                  const std::vector<bench::Variant>& variants, const Ceilings* ceil,
                  int64_t l3_bytes, Progress& progress, const std::string& tag) {
  RowResult r;
  r.name = spec.name() + "_c" + std::to_string(c);
  r.b = spec.batch;
  r.k = spec.k;
  r.c = c;
  const bench::Shape shape{.batch = spec.batch,
                           .k = spec.k,
                           .heads = spec.heads,
                           .q_len = spec.q_len,
                           .kv = spec.kv_dtype,
                           .scale = spec.kv_scale};
  r.flops = bench::flops(shape);
  if (ceil) r.floor = bench::floor_time(shape, *ceil, l3_bytes);

  // One case per cache rotation the variants use (rot=...: the same values, written rotated),
  // each with its reference; the baseline runs on the first variant's.
  progress.row(tag + r.name + ": building the case");
  std::unique_ptr<bench::Case> cases[2];
  std::optional<bench::Reference> refs[2];
  for (const auto& v : variants) {
    const int k = v.rotation == KvRotation::none ? 0 : 1;
    if (cases[k]) continue;
    bench::CaseSpec sp = spec;
    sp.kv_rotation = v.rotation;
    cases[k] = std::make_unique<bench::Case>(sp);
    if (!a.no_check) {
      progress.step(tag + r.name + ": float64 reference");
      refs[k] = bench::compute_reference(*cases[k]);
    }
  }
  auto rot_index = [](const bench::Variant& v) { return v.rotation == KvRotation::none ? 0 : 1; };
  const bench::Case& cs = *cases[rot_index(variants[0])];
  std::vector<float> o(cs.o_size()), lse(cs.rows());

  // The runs to time: the variants, then the baseline.
  std::vector<std::function<void()>> runs;
  for (const auto& v : variants) {
    DecodeOptions opt = v.opt;
    opt.threads = c;
    const bench::Case& vc = *cases[rot_index(v)];
    runs.push_back([&vc, opt, &o, &lse] { bench::run_decode(vc, opt, o.data(), lse.data()); });
  }
  std::unique_ptr<bench::BlasBaseline> blas;
  if (!a.no_baseline) {
    blas = std::make_unique<bench::BlasBaseline>(c);
    runs.push_back([&cs, &blas, &o, &lse] {
      blas->run(cs.params(), cs.q_f32(), cs.cache(), o.data(), lse.data());
    });
  }
  const size_t nv = variants.size();

  // Warm-up: the first run of each is checked and gives the time estimate for the rep count.
  std::vector<double> first(runs.size());
  std::vector<std::optional<bench::CheckResult>> checks(runs.size());
  auto warm_up = [&](size_t i) {
    progress.step(tag + r.name + ": warm-up and check of " +
                  (i < nv ? variants[i].text : std::string("the BLAS baseline")));
    bench::poison(o, lse);
    const double t0 = bench::now_s();
    runs[i]();
    first[i] = bench::now_s() - t0;
    const int k = i < nv ? rot_index(variants[i]) : rot_index(variants[0]);
    if (refs[k])
      checks[i] = bench::check_output(
          *cases[k], *refs[k], o.data(), lse.data(),
          i < nv ? ref::tolerance_for(spec.kv_dtype, variants[i].opt.impl == Impl::ref)
                 : bench::kFp32Tolerance);
    for (int w = 1; w < a.warmup; ++w) runs[i]();
  };
  for (size_t i = 0; i < nv; ++i) warm_up(i);
  const double slowest = *std::max_element(first.begin(), first.begin() + nv);
  r.reps = a.reps ? a.reps : bench::choose_reps(slowest, a.target_s, kMinReps, kMaxReps);
  // Runs over a second (a slow kernel, a debugging variant) get 3: the grid must stay short.
  if (!a.reps && slowest > 1.0) r.reps = 3;

  // Timed runs of the variants, interleaved so that a slow patch of the machine hits every column
  // alike; then the baseline's, warm-up included. The baseline is kept apart because OpenBLAS's
  // threads busy-wait for a while after each call (about 2^28 cycles): interleaved, they took a
  // core from the variants and spread their times over 100%. A pause after it lets them go to
  // sleep before the next row.
  std::vector<std::vector<double>> samples(runs.size());
  auto time_runs = [&](size_t i_begin, size_t i_end, int rounds) {
    for (int rep = 0; rep < rounds; ++rep) {
      progress.step(tag + r.name + ": timing " + (i_begin < nv ? "variants" : "baseline") +
                    ", round " + std::to_string(rep + 1) + "/" + std::to_string(rounds));
      for (size_t i = i_begin; i < i_end; ++i) {
        const double t0 = bench::now_s();
        runs[i]();
        samples[i].push_back(bench::now_s() - t0);
      }
    }
  };
  time_runs(0, nv, r.reps);
  if (blas) {
    warm_up(nv);
    r.baseline_reps = a.reps ? a.reps
                             : bench::choose_reps(first[nv], a.target_s, kMinBaselineReps,
                                                  kMaxBaselineReps);
    time_runs(nv, nv + 1, r.baseline_reps);
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
  }
  for (size_t i = 0; i < nv; ++i)
    r.variants.push_back(Timed{variants[i], bench::summarize(samples[i]), checks[i]});
  if (a.stage_times) {
    progress.step(tag + r.name + ": stage times of the new variant");
    StageTimes st;
    DecodeOptions opt = variants[nv - 1].opt;
    opt.threads = c;
    opt.stage_times = &st;
    for (int rep = 0; rep < r.reps; ++rep)
      bench::run_decode(*cases[rot_index(variants[nv - 1])], opt, o.data(), lse.data());
    for (int k = 0; k < StageTimes::kStages; ++k) st.seconds[k] /= r.reps;
    r.stages = st;
    r.stage_runs = r.reps;
  }
  if (blas)
    r.baseline =
        Timed{bench::Variant{.text = "blas", .opt = {}}, bench::summarize(samples[nv]), checks[nv]};
  return r;
}

struct Summary {
  double avg = 0, geo = 0;          // of the old/new ratios
  std::vector<std::string> failed;  // rows with a failed check
  bool any_sampled = false;
};

Summary summarize_rows(const std::vector<RowResult>& rows) {
  Summary s;
  double sum = 0, log_sum = 0;
  for (const auto& r : rows) {
    sum += r.ratio();
    log_sum += std::log(r.ratio());
    if (!r.failures().empty()) s.failed.push_back(r.name);
    s.any_sampled = s.any_sampled || r.sampled();
  }
  s.avg = sum / double(rows.size());
  s.geo = std::exp(log_sum / double(rows.size()));
  return s;
}

void print_footer(const BenchArgs& a, const std::vector<RowResult>& rows, const Summary& s) {
  std::printf("%-18s %11s %6s %11s %6s %8s\n", "AVG", "", "", "", "", fmt("%.3f", s.avg).c_str());
  std::printf(
      "\nold/new: mean %.3f, geometric mean %.3f over %zu rows. Times are medians; "
      "spread = (p90 - p10) / median.\n",
      s.avg, s.geo, rows.size());
  std::printf(
      "floor: time the measured ceilings allow (DESIGN §7); the column is floor / new "
      "time. bound: what sets the floor (compute: the vector units' dot products; on a CPU with\n"
      "AMX tiles, tile: the tile unit's products, or vector: one exp2 per score; L3 / mem: the\n"
      "cache's bytes).\n");
  int noisy = 0, above_one = 0;
  for (const auto& r : rows) {
    noisy +=
        r.variants[0].stats.spread() > kNoisySpread || r.variants[1].stats.spread() > kNoisySpread;
    above_one += r.fraction().value_or(0) > 1.0;
  }
  if (noisy)
    std::printf(
        "note: %d row(s) with a spread above %.0f%%: the machine was busy or throttling; "
        "the medians of those rows are not to be trusted\n",
        noisy, kNoisySpread * 100);
  if (above_one)
    std::printf(
        "note: %d row(s) above 1.0 of the floor: the ceilings were measured low (a busy "
        "machine?); run bench/roofline again on a quiet one\n",
        above_one);
  if (a.no_check) {
    std::printf("check: skipped (--no-check)\n");
  } else if (s.failed.empty()) {
    std::printf(
        "check: every timed output within DESIGN §6 of the float64 reference (BLAS: "
        "1e-4)%s\n",
        s.any_sampled ? "; * = on a sample of sequences and heads" : "");
  } else {
    std::printf("check: FAILED in %zu row(s):\n", s.failed.size());
    for (const auto& r : rows) {
      for (const auto& v : r.variants)
        if (v.check && !v.check->pass)
          std::printf("  %s %s: %s\n", r.name.c_str(), v.variant.describe().c_str(),
                      v.check->summary().c_str());
      if (r.baseline && r.baseline->check && !r.baseline->check->pass)
        std::printf("  %s blas: %s\n", r.name.c_str(), r.baseline->check->summary().c_str());
    }
  }
  std::fflush(stdout);
}

json report_json(const BenchArgs& a, const std::vector<int>& bs, const std::vector<int>& ks,
                 const std::vector<int>& cs, const std::vector<bench::Variant>& variants,
                 const CeilingSet& ceilings, int64_t l3, const std::vector<RowResult>& rows,
                 const Summary& s) {
  json doc;
  doc["tool"] = "mla bench";
  doc["config"] = {{"grid", a.grid},
                   {"b", bs},
                   {"k", ks},
                   {"c", cs},
                   {"heads", a.heads},
                   {"q_len", a.q_len},
                   {"kv_dtype", a.kv_dtype},
                   {"kv_scale", a.kv_scale},
                   {"block_size", a.block_size},
                   {"chunk", a.chunk},
                   {"variants", a.variants},
                   {"reps", a.reps},
                   {"warmup", a.warmup},
                   {"seed", a.seed},
                   {"isa", a.isa},
                   {"baseline", !a.no_baseline},
                   {"check", !a.no_check}};
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  auto variant_json = [&](const bench::Variant& v) {
    const cpu::KernelInfo& k = cpu::select_kernel(kv, v.opt.isa);
    return json{{"text", v.text}, {"options", v.describe()}, {"kernel", k.name},
                {"kernel_isa", isa_name(k.isa)}};
  };
  doc["variants"] = {{"old", variant_json(variants[0])}, {"new", variant_json(variants[1])}};
  // The ceilings the floor fractions are taken against: "avx2" for an AVX2 kernel.
  doc["ceilings_limit"] =
      cpu::select_kernel(kv, variants[1].opt.isa).isa == Isa::avx2 ? "avx2" : "native";
  doc["baseline"] =
      a.no_baseline ? json(nullptr) : json("OpenBLAS fp32: de-quantize, sgemm, softmax, sgemm");
  // ceilings_to_json: {"cpu": ..., "ceilings": [...]}.
  const json cj =
      ceilings.all.empty() ? json::object() : json::parse(ceilings_to_json(ceilings.all));
  doc["cpu"] = cj.value("cpu", std::string());
  doc["ceilings"] = cj.value("ceilings", json::array());
  doc["ceilings_source"] = ceilings.sources;
  doc["l3_bytes"] = l3;
  doc["rows"] = json::array();
  for (const auto& r : rows) doc["rows"].push_back(row_json(r, a));
  doc["avg_speedup"] = s.avg;
  doc["geomean_speedup"] = s.geo;
  doc["all_pass"] = s.failed.empty();
  return doc;
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

void print_preamble(const BenchArgs& a, KvDType kv, KvScale scale, const std::vector<int>& cs,
                    const std::vector<bench::Variant>& variants, const CeilingSet& ceilings,
                    const std::string& limit) {
  const std::string scales =
      kv == KvDType::int8 ? std::string(" (") + kv_scale_name(scale) + " scales)" : "";
  std::printf("mla bench: %s cache%s, %d heads, q_len %d, block %d; threads %s\n",
              kv_dtype_name(kv), scales.c_str(), a.heads, a.q_len, a.block_size, join(cs).c_str());
  std::printf("  old: %s   [%s]\n  new: %s   [%s]\n", variants[0].describe().c_str(),
              variants[0].text.c_str(), variants[1].describe().c_str(), variants[1].text.c_str());
  if (!a.no_baseline)
    std::printf("  BLAS: OpenBLAS fp32: de-quantize, sgemm Q.K^T, softmax, sgemm P.V\n");
  for (int c : cs) {
    const Ceilings* e = find(ceilings.all, c, limit);
    if (!e) continue;
    const std::string from = ceilings.sources.value(std::to_string(c), std::string("?"));
    std::printf(
        "  ceilings c%d %s (%s): int8 dot %.0f GOP/s, bf16 dot %.0f GFLOP/s, fp32 FMA %.0f "
        "GFLOP/s, read mem %.1f GB/s, L3 %.1f GB/s\n",
        c, e->limit.c_str(), from.c_str(), e->int8_dot_gops, e->bf16_dot_gflops, e->fp32_fma_gflops,
        e->read_bw_mem_gbs, e->read_bw_l3_gbs);
  }
  for (const auto& n : ceilings.notes) std::printf("  note: %s\n", n.c_str());
}

void run_bench(const BenchArgs& a) {
  // ---- the grid and the configuration, all checked before any work ----
  std::vector<int> bs, ks;
  if (a.grid == "seed") {
    bs = {1, 2, 4, 8, 16, 24, 48};
    ks = {512, 2048, 4096};
  } else if (a.grid == "small") {
    bs = {1, 4};
    ks = {512, 2048};
  } else {
    MLA_FAIL("--grid '" << a.grid << "' is not seed or small");
  }
  if (!a.b_list.empty()) bs = parse_int_list(a.b_list, "--b", 1, 1 << 24);
  if (!a.k_list.empty()) ks = parse_int_list(a.k_list, "--k", 1, 1 << 24);
  const std::vector<int> cs = a.c_list.empty() ? std::vector<int>{bench::hardware_threads()}
                                               : parse_int_list(a.c_list, "--threads", 1, 1 << 24);
  MLA_CHECK(a.heads >= 1, "--heads = " << a.heads << " must be at least 1");
  MLA_CHECK(a.q_len >= 1, "--q-len = " << a.q_len << " must be at least 1");
  for (int k : ks)
    MLA_CHECK(k >= a.q_len, "--k " << k << " is shorter than --q-len " << a.q_len
                                   << " (k counts the new tokens too)");
  MLA_CHECK(a.block_size >= 1, "--block-size = " << a.block_size << " must be at least 1");
  MLA_CHECK(a.reps >= 0, "--reps = " << a.reps << " must not be negative");
  MLA_CHECK(a.target_s > 0 && a.target_s <= 3600,
            "--time = " << a.target_s << " must be in (0, 3600] seconds");
  for (int c : cs) MLA_CHECK(c <= 1024, "--threads " << c << " is more than 1024");
  MLA_CHECK(a.warmup >= 1,
            "--warmup = " << a.warmup << " must be at least 1 (the first run is the check)");
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  const KvScale scale = parse_kv_scale(a.kv_scale);
  std::vector<bench::Variant> variants = bench::parse_variants(a.variants, a.chunk);
  Isa isa = Isa::best;
  MLA_CHECK(isa_from_name(a.isa, &isa),
            "--isa " << a.isa << " is not best, amx, avx512, avx2, portable or amx-emu");
  for (bench::Variant& v : variants)
    if (!v.isa_given) v.opt.isa = isa;
  // The floor of the kernel the "new" variant runs: an AVX2 kernel is held to the AVX2 ceilings.
  // (Throws here, before any work, when the CPU lacks a forced ISA.)
  for (const bench::Variant& v : variants) cpu::select_kernel(kv, v.opt.isa);
  const std::string limit =
      cpu::select_kernel(kv, variants[1].opt.isa).isa == Isa::avx2 ? "avx2" : "native";
  if (!a.json_path.empty()) {
    const auto dir = std::filesystem::path(a.json_path).parent_path();
    MLA_CHECK(dir.empty() || std::filesystem::is_directory(dir),
              "--json " << a.json_path << ": directory " << dir.string() << " does not exist");
  }

  const CeilingSet ceilings = get_ceilings(a.ceilings_path, cs, limit);
  const int64_t l3 = bench::l3_cache_bytes();

  print_preamble(a, kv, scale, cs, variants, ceilings, limit);
  std::printf("\n");
  print_header();
  std::fflush(stdout);

  // ---- rows ----
  Progress progress;
  std::vector<RowResult> rows;
  const size_t total = cs.size() * bs.size() * ks.size();
  for (int c : cs)
    for (int b : bs)
      for (int k : ks) {
        const bench::CaseSpec spec{.batch = b,
                                   .k = k,
                                   .heads = a.heads,
                                   .q_len = a.q_len,
                                   .block_size = a.block_size,
                                   .kv_dtype = kv,
                                   .kv_scale = scale,
                                   .seed = a.seed};
        const std::string tag =
            "[" + std::to_string(rows.size() + 1) + "/" + std::to_string(total) + "] ";
        rows.push_back(run_row(a, spec, c, variants, find(ceilings.all, c, limit), l3, progress, tag));
        progress.clear();
        print_row(rows.back());
      }

  const Summary sum = summarize_rows(rows);
  print_footer(a, rows, sum);
  if (!a.json_path.empty())
    write_file_atomic(a.json_path,
                      report_json(a, bs, ks, cs, variants, ceilings, l3, rows, sum).dump(2) + "\n");
  if (!sum.failed.empty())
    throw CheckFailed("mla bench: " + std::to_string(sum.failed.size()) +
                      " row(s) failed the check");
}

const char* const kFooter = R"(
Variants (--variants OLD:NEW; the first is the "old" column, the ratio is old/new):
  CONFIG is a preset, or key=value items separated by commas, optionally after a preset:
    old               chunk=1,up=spill,red=separate   (the straightforward kernel)
    new               chunk=<--chunk>,up=resident,red=last   (the best one)
    chunk=N           KV tiles of 64 tokens per pipeline step (N >= 1)
    up=resident|spill output accumulator kept in registers, or written out every chunk
    red=separate|last split-KV partials merged in a separate pass, or by the last worker
    isa=best|amx|avx512|avx2|portable|amx-emu   force those kernels (default: --isa)
    impl=fast|ref     ref runs the float64 reference (slow; for debugging)
    kernel=NAME       one kernel of the registry by name (decode_i8_avx2 against decode_i8_avx2vnni)
    rot=none|hadamard the cache's latent rotation (the same values, written rotated)
  Keys left out take the "new" values. Examples:
    --variants old:new   --variants chunk=1:chunk=4   --variants red=separate:red=last
    --variants "chunk=1,up=spill,red=separate:chunk=4,up=resident,red=last"

Columns: median times over the repetitions, spread = (p90 - p10) / median, GFLOP/s of the new
variant (flops = 2 * heads * q_len * k * 1088 per sequence), floor = fraction of the time the
measured ceilings allow (see harness/perf_model.h), BLAS = the OpenBLAS-composed baseline,
check = every timed output against the float64 reference (ok* = on sampled sequences and heads).
Exit code 1 when a check fails.)";

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time the paged-attention decode over a grid of shapes: the seed's table");
  cmd->add_option("--grid", args->grid,
                  "seed: b {1,2,4,8,16,24,48} x k {512,2048,4096}; small: b {1,4} x k {512,2048}")
      ->check(CLI::IsMember({"seed", "small"}))
      ->capture_default_str();
  cmd->add_option("--b", args->b_list, "batch sizes, comma-separated (replaces the grid's)");
  cmd->add_option("--k", args->k_list,
                  "context tokens per sequence, comma-separated (replaces the grid's)");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--q-len", args->q_len, "query tokens per sequence (MTP)")->capture_default_str();
  cmd->add_option("--kv-dtype", args->kv_dtype, "cache format: int8, bf16, fp16 or fp8")
      ->capture_default_str();
  cmd->add_option("--kv-scale", args->kv_scale, "int8 scales: token, group32, group64, group128, tensor or channel")
      ->capture_default_str();
  cmd->add_option("--threads,--c", args->c_list,
                  "worker threads, or a comma-separated list (rows per value); default: all cores");
  cmd->add_option("--chunk", args->chunk, "chunk of the \"new\" preset")->capture_default_str();
  cmd->add_option("--block-size", args->block_size, "tokens per cache block")
      ->capture_default_str();
  cmd->add_option("--variants", args->variants, "the two configurations to compare, OLD:NEW")
      ->capture_default_str();
  cmd->add_option("--reps", args->reps,
                  "timed runs per variant and row (default: adaptive, 5..100; baseline 3..20)");
  cmd->add_option("--warmup", args->warmup, "untimed runs first (the first one is checked)")
      ->capture_default_str();
  cmd->add_option("--time", args->target_s,
                  "with adaptive reps: seconds of timed runs per variant and row")
      ->capture_default_str();
  cmd->add_option("--seed", args->seed, "random seed of the cases")->capture_default_str();
  cmd->add_option("--json", args->json_path, "also write the results to this file (JSON)");
  cmd->add_option("--ceilings", args->ceilings_path,
                  "ceilings file from bench/roofline (default: $MLA_CEILINGS or ./ceilings.json; "
                  "measured briefly when missing)");
  cmd->add_option("--isa", args->isa,
                  "kernels of the variants that name no isa: best, amx, avx512, avx2, portable or amx-emu; "
                  "AVX2 kernels are held to the AVX2 ceilings")
      ->capture_default_str();
  cmd->add_flag("--no-baseline", args->no_baseline, "skip the BLAS baseline");
  cmd->add_flag("--no-check", args->no_check, "skip the checks against the float64 reference");
  cmd->add_flag("--stage-times", args->stage_times,
                "also time each pipeline stage (QK, SM, PV, UP; int8 QK_nope/QK_rope) of the new "
                "variant, in separate runs; per call, summed over workers");
  cmd->footer(kFooter);
  cmd->callback([args] { run_bench(*args); });
}

}  // namespace mla::tool
