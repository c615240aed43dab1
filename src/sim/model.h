// The simulated accelerator running the CPU kernel's own schedule (DESIGN §8): the work comes from
// the planner (mla::make_plan: items per core, merge groups) and the stage vocabulary
// (mla::stage_list: the stages of every step of every item); this file turns them into engine
// tasks on the units of each core, with costs from the profile (profile.h), and reads the results
// back (predicted time, busy fractions, bubbles, MTE3 transfers).
//
// One core = one worker of the plan. Its lanes (resources of the engine):
//
//   cube       QK (or QK_nope, QK_rope) and PV of every step, QK of step s + preload before PV of s
//   mte2_cube  cache tiles (K = V in MLA) and P from global memory into L1
//   per vector unit v (each SM, UP and merge is split by rows across the vector units):
//     vec v    SM and UP of its rows; merges
//     mte2 v   S, lo and the spilled accumulator from the workspace into UB
//     mte3 v   P, the spilled accumulator and the outputs from UB to global memory
//
// The units hand data over through global memory and cross-core flags, so every matrix <-> vector
// dependency carries the sync latency; each buffer between them has `buffers` slots, so step s
// waits until step s - buffers has released the slot (the ping-pong bound on running ahead). With
// shared_unit (the CPU) a core has a single lane that runs the step's work serially in the
// kernel's order: load, QK, SM, PV, UP.
//
// Split-KV reduction: `separate` merges every group after all cores have finished (a global sync,
// then the rows spread over all cores as the CPU's combine_all does); `last` merges a group on the
// core that finishes its last partial, right after that partial (the CPU's finish_partial).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/stages.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/plan.h"
#include "sim/engine.h"
#include "sim/profile.h"

namespace mla::sim {

// Who merges the split-KV partials:
//   separate  after every core has finished, a separate pass (a kernel launch:
//             separate_pass_overhead_us) spreads the rows over every core's vector units
//   last      the core that finishes a group's last partial merges the group (CPU: finish_partial)
//   inkernel  inside the kernel, after a barrier (one sync), the rows of every group spread over
//             every core's vector units (no launch)
enum class SimReduction : uint8_t { separate, last, inkernel };
const char* sim_reduction_name(SimReduction r);
SimReduction parse_sim_reduction(const std::string& text);  // throws naming the text

struct SimConfig {
  int batch = 1;
  int k = 4096;  // seq_len of every sequence
  int heads = 128;
  int q_len = 2;
  int cores = 1;
  KvDType kv = KvDType::int8;  // int8 or bf16
  int chunk = 4;
  UpForm up = UpForm::resident;
  SimReduction reduction = SimReduction::last;
  double sm_scale = 1.0;  // stretches every SM stage (the seed's long-softmax bubble)
  std::string split;      // the work split (profile.h's Split); empty: the profile's scheduler
  int block = 0;          // tokens per KV block (tile); 0: the profile's kv_tile
  int reading = -1;       // -1: the profile's chunk_reading; 0: merged; 1: block
};

enum class Op : uint8_t {
  stage,
  load_kv,
  load_s,
  store_p,
  load_p,
  load_lo,
  load_go,
  store_go,
  merge
};
const char* op_name(Op op);

// Lanes of a core: the cube and its load engine, then per vector unit v (an AIV core with its own
// load and store engines) its vector lane, MTE2 and MTE3.
constexpr int kLaneCube = 0, kLaneMte2Cube = 1, kLaneVec0 = 2;
constexpr int vec_lane(int v) { return kLaneVec0 + 3 * v; }
constexpr int mte2_lane(int v) { return kLaneVec0 + 3 * v + 1; }
constexpr int mte3_lane(int v) { return kLaneVec0 + 3 * v + 2; }
std::string lane_name(int lane);

struct SimTask {
  Op op;
  Stage stage = Stage::QK;  // op == stage
  int32_t core;
  int32_t lane;                  // the lane it runs on (on a shared unit: the lane it would have)
  int32_t item = -1;             // plan item, -1 for merges
  int32_t step = -1;             // step within the item
  int32_t part = 0;              // vector unit share of a split task
  int32_t rows = 0, tokens = 0;  // of the whole step (a merge: its share of rows)
};

struct BuiltSchedule {
  Plan plan;
  Split split;
  int block = 0;                // tokens per KV block
  bool block_reading = false;   // per-block QK / SM / PV inside a chunk
  int preload = 0;              // chunks the cube runs QK ahead of PV
  double kv_bytes_per_s = 0;    // each busy core's KV read rate (the HBM pool shared)
  int busy_cores = 0;           // cores with work
  int steps_max = 0, steps_min = 0;  // chunks per busy core
  int lanes_per_core = 0;  // resources per core (1 with shared_unit)
  Schedule engine;
  std::vector<SimTask> tasks;  // [engine.tasks]
  int64_t merge_writes = 0;    // output writes of merges (one per merge group)
};

// The work split (SimConfig::split, else Profile::scheduler; profile.h's Split):
//   planner     mla::make_plan with the defaults `mla decode` uses (kv_tile = the block).
//   tp1         the seed accelerator's own split for 128 heads (catlass examples/19_mla,
//               GetMLATilingSpec / GetKVSplitParamSpec): one task per (sequence, query token) with
//               every head; with T tasks on c cores, floor(T / c) x c tasks run whole, task t on
//               core t % c; the tail of T mod c tasks (unless it reaches 0.8 c: then all run whole)
//               splits its KV range into n = lcm(tail, c) / tail pieces of ceil(blocks / n) tiles,
//               piece s of tail task j on core (j n + s) mod c. A task of one query token x H heads
//               is written as an item of the query tokens x H / q_len heads (the same rows: the
//               stages cost by rows), heads [i H / q_len, (i + 1) H / q_len) for token i.
//   none, pieces=N, round=T   the same tasks, whole or cut into pieces (profile.h), tasks and
//               pieces round-robin over the cores.
Plan sim_plan(const SimConfig& cfg, const Profile& prof);

// Throws mla::Error naming the bad value (batch < 1, k < q_len, chunk < 1, bf16/int8 only, ...).
BuiltSchedule build_schedule(const SimConfig& cfg, const Profile& prof);

struct SimResult {
  BuiltSchedule sched;
  Timeline tl;
  double predicted_us = 0;     // makespan + per-call overhead
  double cube_busy = 0;        // matrix-stage time / (cores x makespan)
  double vector_busy = 0;      // vector-stage time / (cores x vector units x makespan)
  double bubble_us = 0;        // mean over cores of the time the matrix unit idles inside the
                               // core's busy span (first start .. last end)
  int64_t mte3_transfers = 0;  // stores from UB to global memory: P, accumulator, outputs
  double end_bubble_us = 0;    // mean over busy cores: the cube idle after its last QK, waiting
                               // for the SM of its last PVs (the seed's "bubble in the end")
  double tail_us = 0;          // after the last matrix task of any core: UP, stores, merges
  double merge_us = 0;         // of the tail: from the first merge's start to the end (0: none)
};

SimResult run_sim(const SimConfig& cfg, const Profile& prof);

// The seed's int8 table (V11 / V0 per row of b {1,2,4,8,16,24,48} x k {512,2048,4096}, c 24, in
// that order): what `mla sim --grid seed` and the tests compare the model's old/new with.
inline constexpr double kSeedRatio[21] = {
    1.07568, 1.39753, 1.22115, 1.10849, 1.20156, 1.17252, 1.125,   1.24277, 1.19364, 1.13337, 1.25688,
    1.22447, 1.04,    1.23246, 1.2045,  1.10615, 1.23452, 1.22962, 1.13204, 1.2534,  1.25591};

// 21 old/new ratios in kSeedRatio's order against the seed's: rows gaining (> 1), the Pearson
// correlation, the average, and the average of each k (512, 2048, 4096).
struct SeedMatch {
  int gaining = 0;
  double corr = 0, avg = 0, by_k[3] = {};
};
SeedMatch match_seed(const std::vector<double>& ratio);

// The stages each plan item ran (a stage split across vector units counted once): step by step
// and, within a step, in the order they started (step_major), or all in the order they started
// (an accelerator overlaps the steps; a shared unit runs them in stage_list order). Tests compare
// them with stage_list.
std::vector<std::vector<StageOp>> stages_run(const SimResult& r, bool step_major = true);

// The core with the most busy time (the one --svg draws by default).
int busiest_core(const SimResult& r);

// One core's timeline as an SVG document (lanes, labelled and coloured stages, idle time of the
// matrix unit shaded).
std::string timeline_svg(const SimResult& r, const SimConfig& cfg, const Profile& prof, int core);

}  // namespace mla::sim
