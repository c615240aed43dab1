// `mla sim`: the pipeline simulator (src/sim, DESIGN §8) on the command line. For one shape it
// prints, per variant (chunk x UP form x reduction), the predicted time, the busy fraction of the
// matrix and vector units, the bubble time and the MTE3 transfer count; with --grid seed, the
// seed's table (old/new per row b{B}_k{K}_c{C} and the average); --svg draws one core's timeline.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/atomic_file.h"
#include "core/int_list.h"
#include "mla/commands.h"
#include "mla/status.h"
#include "sim/model.h"

namespace mla::tool {

namespace {

using nlohmann::json;

struct SimArgs {
  int b = 0, k = 0, c = 0;  // 0: not given
  int heads = 128;
  int q_len = 2;
  std::string kv_dtype = "int8";
  std::string chunk;      // "1,2,4"; empty: those three (grid: the profile's default_chunk)
  std::string up;         // empty: both
  std::string reduction;  // empty: last and separate (--grid: the profile's new reduction)
  std::string old_reduction;  // --grid: empty: the profile's
  std::string split;      // empty: the profile's scheduler
  int block = 0;          // 0: the profile's kv_tile
  std::string reading;    // empty: the profile's
  double sm_scale = 1.0;
  std::string profile = "ascend-910b";
  std::string grid;
  std::string svg_path, json_path;
  int svg_core = -1;  // -1: the busiest core
};

void check_out_path(const std::string& path, const char* option) {
  if (path.empty()) return;
  const auto dir = std::filesystem::path(path).parent_path();
  MLA_CHECK(dir.empty() || std::filesystem::is_directory(dir),
            option << " " << path << ": directory " << dir.string() << " does not exist");
}

std::string sm_note(double scale) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "; SM stages x%g", scale);
  return buf;
}

const char* up_name(UpForm u) { return u == UpForm::resident ? "resident" : "spill"; }


void run_sim_command(const SimArgs& a) {
  // ---- everything checked before any work ----
  const sim::Profile prof = sim::load_profile(a.profile);
  const KvDType kv = parse_kv_dtype(a.kv_dtype);
  MLA_CHECK(kv == KvDType::int8 || kv == KvDType::bf16,
            "--kv-dtype " << a.kv_dtype << ": the simulator models int8 and bf16");
  MLA_CHECK(a.grid.empty() || a.grid == "seed", "--grid '" << a.grid << "' is not seed");
  MLA_CHECK(std::isfinite(a.sm_scale) && a.sm_scale > 0,
            "--sm-scale = " << a.sm_scale << " must be a positive number");
  MLA_CHECK(a.up.empty() || a.up == "resident" || a.up == "spill",
            "--up '" << a.up << "' is not resident or spill");
  if (!a.reduction.empty()) (void)sim::parse_sim_reduction(a.reduction);
  if (!a.old_reduction.empty()) (void)sim::parse_sim_reduction(a.old_reduction);
  check_out_path(a.svg_path, "--svg");
  check_out_path(a.json_path, "--json");
  const sim::SimReduction red_new =
      sim::parse_sim_reduction(a.reduction.empty() ? prof.grid_new_reduction : a.reduction);
  const sim::SimReduction red_old =
      sim::parse_sim_reduction(a.old_reduction.empty() ? prof.grid_old_reduction : a.old_reduction);
  MLA_CHECK(a.reading.empty() || a.reading == "block" || a.reading == "merged",
            "--reading '" << a.reading << "' is not block or merged");
  if (!a.split.empty()) (void)sim::parse_split(a.split);
  MLA_CHECK(a.block >= 0 && a.block <= (1 << 16), "--block = " << a.block << " must be in 1..65536");
  sim::SimConfig base{.heads = a.heads, .q_len = a.q_len, .kv = kv, .sm_scale = a.sm_scale,
                      .split = a.split, .block = a.block,
                      .reading = a.reading.empty() ? -1 : a.reading == "block" ? 1 : 0};

  if (!a.grid.empty()) {
    MLA_CHECK(a.svg_path.empty(), "--svg draws one shape; leave out --grid");
    MLA_CHECK(a.b == 0 && a.k == 0, "--grid seed sets b and k; leave out --b / --k");
    const std::vector<int> chunks =
        a.chunk.empty() ? std::vector<int>{prof.default_chunk}
                        : parse_int_list(a.chunk, "--chunk", 1, 1024);
    MLA_CHECK(chunks.size() == 1,
              "--chunk '" << a.chunk << "': --grid seed takes the new pipeline's one chunk");
    const int c = a.c ? a.c : prof.default_cores;
    MLA_CHECK(c >= 1, "--c = " << a.c << " must be at least 1");
    base.cores = c;
    const sim::BuiltSchedule probe = sim::build_schedule(base, prof);
    std::printf("mla sim --grid seed: profile %s, %s cache, %d heads, q_len %d, c %d; split %s, "
                "block %d, %s reading\n",
                prof.name.c_str(), kv_dtype_name(kv), a.heads, a.q_len, c,
                sim::split_name(probe.split).c_str(), probe.block,
                probe.block_reading ? "block" : "merged");
    std::printf(
        "  old: chunk 1, UP spill, reduction %s;  new: chunk %d, UP resident, reduction %s%s\n\n",
        sim::sim_reduction_name(red_old), chunks[0], sim::sim_reduction_name(red_new),
        a.sm_scale != 1 ? sm_note(a.sm_scale).c_str() : "");
    std::printf("%-18s %10s %10s %8s %8s %6s   %s\n", "row", "old us", "new us", "old/new",
                "seed", "steps", "old/new with the new reduction separate / last / inkernel");
    json rows = json::array();
    const sim::SimReduction reds[3] = {sim::SimReduction::separate, sim::SimReduction::last,
                                       sim::SimReduction::inkernel};
    std::vector<double> ratio;
    std::vector<double> by_red[3];
    int i = 0;
    for (int b : {1, 2, 4, 8, 16, 24, 48})
      for (int k : {512, 2048, 4096}) {
        sim::SimConfig old_cfg = base, new_cfg = base;
        old_cfg.batch = new_cfg.batch = b;
        old_cfg.k = new_cfg.k = k;
        old_cfg.chunk = 1;
        old_cfg.up = UpForm::spill;
        old_cfg.reduction = red_old;
        new_cfg.chunk = chunks[0];
        new_cfg.up = UpForm::resident;
        const double o = sim::run_sim(old_cfg, prof).predicted_us;
        double each[3];
        int steps = 0;
        for (int r = 0; r < 3; ++r) {
          new_cfg.reduction = reds[r];
          const sim::SimResult res = sim::run_sim(new_cfg, prof);
          each[r] = res.predicted_us;
          steps = res.sched.steps_max;
          by_red[r].push_back(o / each[r]);
        }
        const double n = each[int(red_new)];
        ratio.push_back(o / n);
        const std::string name =
            "b" + std::to_string(b) + "_k" + std::to_string(k) + "_c" + std::to_string(c);
        std::printf("%-18s %10.1f %10.1f %8.3f %8.3f %6d   %.3f / %.3f / %.3f\n", name.c_str(), o,
                    n, o / n, sim::kSeedRatio[i], steps, o / each[0], o / each[1], o / each[2]);
        rows.push_back({{"b", b}, {"k", k}, {"c", c}, {"old_us", o}, {"new_us", n},
                        {"speedup", o / n}, {"seed", sim::kSeedRatio[i]}, {"steps_per_core", steps},
                        {"new_us_separate", each[0]}, {"new_us_last", each[1]},
                        {"new_us_inkernel", each[2]}});
        ++i;
      }
    const sim::SeedMatch m = sim::match_seed(ratio);
    std::printf("%-18s %10s %10s %8.3f %8.3f\n\n", "AVG", "", "", m.avg, 1.19246);
    std::printf("against the seed's table (int8, c 24; it gains on every row, average 1.192, "
                "k 512 / 2048 / 4096: 1.103 / 1.260 / 1.215):\n");
    json summary = json::object();
    for (int r = 0; r < 3; ++r) {
      const sim::SeedMatch e = sim::match_seed(by_red[r]);
      std::printf("  new reduction %-9s rows gaining %2d/21, correlation %+.2f, average %.3f, "
                  "k 512 / 2048 / 4096: %.3f / %.3f / %.3f%s\n",
                  sim::sim_reduction_name(reds[r]), e.gaining, e.corr, e.avg, e.by_k[0],
                  e.by_k[1], e.by_k[2], reds[r] == red_new ? "   <- new" : "");
      summary[sim::sim_reduction_name(reds[r])] = {
          {"rows_gaining", e.gaining}, {"correlation", e.corr}, {"average", e.avg},
          {"by_k", {e.by_k[0], e.by_k[1], e.by_k[2]}}};
    }
    if (!a.json_path.empty())
      write_file_atomic(a.json_path, json{{"rows", rows}, {"seed_match", summary}}.dump(2) + "\n");
    return;
  }

  MLA_CHECK(a.b >= 1, "--b = " << a.b << " must be given, at least 1 (or use --grid seed)");
  MLA_CHECK(a.k >= 1, "--k = " << a.k << " must be given, at least 1 (or use --grid seed)");
  MLA_CHECK(a.c >= 1, "--c = " << a.c << " must be given, at least 1 (or use --grid seed)");
  MLA_CHECK(a.svg_core >= -1 && a.svg_core < a.c,
            "--svg-core = " << a.svg_core << " outside the cores 0.." << a.c - 1);
  const std::vector<int> chunks =
      parse_int_list(a.chunk.empty() ? "1,2,4" : a.chunk, "--chunk", 1, 1024);
  std::vector<UpForm> ups;
  if (a.up != "spill") ups.push_back(UpForm::resident);
  if (a.up != "resident") ups.push_back(UpForm::spill);
  std::vector<sim::SimReduction> reds;
  if (a.reduction.empty())
    reds = {sim::SimReduction::last, sim::SimReduction::separate};
  else
    reds.push_back(sim::parse_sim_reduction(a.reduction));
  base.batch = a.b;
  base.k = a.k;
  base.cores = a.c;

  const sim::BuiltSchedule probe = sim::build_schedule(base, prof);
  std::printf("mla sim: profile %s, b %d, k %d, c %d, %d heads, q_len %d, %s cache%s\n",
              prof.name.c_str(), a.b, a.k, a.c, a.heads, a.q_len, kv_dtype_name(kv),
              a.sm_scale != 1 ? sm_note(a.sm_scale).c_str() : "");
  std::printf("  split %s, block %d tokens, %s reading; %d of %d cores busy",
              sim::split_name(probe.split).c_str(), probe.block,
              probe.block_reading ? "block" : "merged", probe.busy_cores, a.c);
  if (probe.kv_bytes_per_s > 0) std::printf(", KV read %.1f GB/s per core", probe.kv_bytes_per_s / 1e9);
  std::printf("\n\n");
  std::printf("%6s %-9s %-9s %6s %13s %10s %12s %11s %10s %8s %15s\n", "chunk", "up", "reduction",
              "steps", "predicted us", "cube busy", "vector busy", "bubble us", "end bubble",
              "tail us", "MTE3 transfers");
  json variants = json::array();
  std::string svg;
  int svg_core = 0;
  for (int chunk : chunks)
    for (UpForm up : ups)
      for (sim::SimReduction red : reds) {
        sim::SimConfig cfg = base;
        cfg.chunk = chunk;
        cfg.up = up;
        cfg.reduction = red;
        const sim::SimResult r = sim::run_sim(cfg, prof);
        char steps[32];
        std::snprintf(steps, sizeof steps, r.sched.steps_min == r.sched.steps_max ? "%d" : "%d-%d",
                      r.sched.steps_min, r.sched.steps_max);
        std::printf("%6d %-9s %-9s %6s %13.1f %9.1f%% %11.1f%% %11.1f %10.1f %8.1f %15lld\n", chunk,
                    up_name(up), sim::sim_reduction_name(red), steps, r.predicted_us,
                    100 * r.cube_busy, 100 * r.vector_busy, r.bubble_us, r.end_bubble_us,
                    r.tail_us, static_cast<long long>(r.mte3_transfers));
        variants.push_back({{"chunk", chunk},
                            {"up", up_name(up)},
                            {"reduction", sim::sim_reduction_name(red)},
                            {"steps_per_core_min", r.sched.steps_min},
                            {"steps_per_core_max", r.sched.steps_max},
                            {"end_bubble_us", r.end_bubble_us},
                            {"tail_us", r.tail_us},
                            {"merge_us", r.merge_us},
                            {"predicted_us", r.predicted_us},
                            {"cube_busy", r.cube_busy},
                            {"vector_busy", r.vector_busy},
                            {"bubble_us", r.bubble_us},
                            {"mte3_transfers", r.mte3_transfers}});
        if (!a.svg_path.empty() && svg.empty()) {
          svg_core = a.svg_core >= 0 ? a.svg_core : sim::busiest_core(r);
          svg = sim::timeline_svg(r, cfg, prof, svg_core);
        }
      }
  if (!a.svg_path.empty())
    std::printf("\n--svg %s: core %d of the first variant\n", a.svg_path.c_str(), svg_core);
  if (!a.json_path.empty())
    write_file_atomic(a.json_path, json{{"variants", variants}}.dump(2) + "\n");
  if (!a.svg_path.empty()) write_file_atomic(a.svg_path, svg);
}

}  // namespace

void add_sim_command(CLI::App& app) {
  auto args = std::make_shared<SimArgs>();
  CLI::App* cmd = app.add_subcommand(
      "sim", "Simulate the kernel's pipeline on a cube/vector accelerator (or the CPU profile)");
  cmd->add_option("--b", args->b, "batch (sequences)");
  cmd->add_option("--k", args->k, "tokens per sequence (its q_len new ones included)");
  cmd->add_option("--c", args->c, "cores (workers of the plan); --grid: default from the profile");
  cmd->add_option("--heads", args->heads, "query heads")->capture_default_str();
  cmd->add_option("--q-len", args->q_len, "query tokens per sequence (MTP)")->capture_default_str();
  cmd->add_option("--kv-dtype", args->kv_dtype, "cache format: int8 or bf16")
      ->capture_default_str();
  cmd->add_option("--chunk", args->chunk,
                  "KV tiles per step, comma-separated (default 1,2,4; --grid: the new pipeline's, "
                  "default from the profile)");
  cmd->add_option("--up", args->up, "resident or spill (default: both)");
  cmd->add_option("--reduction", args->reduction,
                  "separate, last or inkernel (default: last and separate; --grid: the new "
                  "pipeline's, default from the profile)");
  cmd->add_option("--old-reduction", args->old_reduction,
                  "--grid: the old pipeline's reduction (default from the profile)");
  cmd->add_option("--split", args->split,
                  "work split: planner, tp1, none, pieces=N or round=T (default: the profile's)");
  cmd->add_option("--block", args->block, "tokens per KV block (default: the profile's kv_tile)");
  cmd->add_option("--reading", args->reading,
                  "block (per-block QK/SM/PV in a chunk, one UP) or merged (default: the profile's)");
  cmd->add_option("--sm-scale", args->sm_scale, "stretch every softmax stage by this factor")
      ->capture_default_str();
  cmd->add_option("--profile", args->profile,
                  "cost model: a name in profiles/ (ascend-910b, cpu) or a JSON file")
      ->capture_default_str();
  cmd->add_option("--grid", args->grid, "seed: b {1,2,4,8,16,24,48} x k {512,2048,4096}, old/new");
  cmd->add_option("--svg", args->svg_path, "draw one core's timeline of the first variant");
  cmd->add_option("--svg-core", args->svg_core, "the core --svg draws (default: the busiest)");
  cmd->add_option("--json", args->json_path, "also write the results to this file (JSON)");
  cmd->callback([args] { run_sim_command(*args); });
}

}  // namespace mla::tool
