// Schedule building, costs and results of the simulated accelerator (see model.h).
#include "sim/model.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <cmath>

#include "mla/status.h"

namespace mla::sim {

const char* op_name(Op op) {
  switch (op) {
    case Op::stage:
      return "stage";
    case Op::load_kv:
      return "load KV";
    case Op::load_s:
      return "load S";
    case Op::store_p:
      return "store P";
    case Op::load_p:
      return "load P";
    case Op::load_lo:
      return "load lo";
    case Op::load_go:
      return "load go";
    case Op::store_go:
      return "store go";
    case Op::merge:
      return "merge";
  }
  return "?";
}

std::string lane_name(int lane) {
  if (lane == kLaneCube) return "cube";
  if (lane == kLaneMte2Cube) return "MTE2 (cube)";
  const int v = (lane - kLaneVec0) / 3;
  const char* const kinds[] = {"vector ", "MTE2 (vec ", "MTE3 (vec "};
  return kinds[(lane - kLaneVec0) % 3] + std::to_string(v) + ((lane - kLaneVec0) % 3 ? ")" : "");
}

namespace {

// Bytes per cached token read from global memory: int8 latent + bf16 rope, or 576 bf16.
int64_t kv_token_bytes(KvDType kv) {
  return kv == KvDType::int8 ? kLatentDim + 2 * kRopeDim : 2 * kQkDim;
}

constexpr int64_t kMaxSteps = 2'000'000;

double per(double amount, double rate) { return rate > 0 ? amount / rate * 1e6 : 0.0; }

// Rows of vector unit `part` of `parts` for a task over `rows` rows.
int32_t part_rows(int32_t rows, int part, int parts) {
  return int32_t(int64_t(rows) * (part + 1) / parts - int64_t(rows) * part / parts);
}

struct Builder {
  const SimConfig& cfg;
  const Profile& prof;
  BuiltSchedule out;
  int vparts = 1;

  int32_t res(int core, int lane) const {
    return prof.shared_unit ? core : core * out.lanes_per_core + lane;
  }

  int32_t add(const SimTask& t, double duration_us, int32_t resource) {
    out.engine.tasks.push_back(EngineTask{.resource = resource, .duration_us = duration_us});
    out.tasks.push_back(t);
    return int32_t(out.tasks.size() - 1);
  }
  void dep(int32_t task, int32_t on, double latency) {
    if (task >= 0 && on >= 0) out.engine.tasks[task].deps.push_back({on, latency});
  }
  void queue(int32_t task) {
    if (task >= 0) out.engine.queues[out.engine.tasks[task].resource].push_back(task);
  }

  double matrix_us(const StageOp& s) const {
    const double mac2 = 2.0 * s.rows * s.tokens;
    switch (s.stage) {
      case Stage::QK:
        return prof.overhead_qk_us + per(mac2 * kQkDim, prof.matrix_bf16_flops_per_s);
      case Stage::QK_nope:
        return prof.overhead_qk_us + per(mac2 * kLatentDim, prof.matrix_int8_ops_per_s);
      case Stage::QK_rope:
        return prof.overhead_qk_us + per(mac2 * kRopeDim, prof.matrix_bf16_flops_per_s);
      case Stage::PV:
        return prof.overhead_pv_us + per(mac2 * kLatentDim, cfg.kv == KvDType::int8
                                                                ? prof.matrix_int8_ops_per_s
                                                                : prof.matrix_bf16_flops_per_s);
      default:
        break;
    }
    MLA_FAIL("matrix_us: " << stage_name(s.stage) << " is not a matrix stage");
  }
  double transfer_us(double bytes, double bw) const {
    return prof.overhead_transfer_us + per(bytes, bw);
  }
};

// The tasks of one block of a step (block reading: one KV block; merged: the whole step).
struct BlockTasks {
  int32_t tokens = 0;
  int32_t lk = -1;                       // load KV (cube side)
  std::vector<int32_t> qk;               // QK, or QK_nope + QK_rope
  int32_t lp = -1, pv = -1;              // load P (cube side), PV
  std::vector<std::vector<int32_t>> ls;  // [v][qk]: load S_nope / S_rope, or S
  std::vector<int32_t> sm, wp, lo;       // [v]
};

// The tasks of one step (chunk) of one core; [v]: the share of vector unit v.
struct StepTasks {
  int32_t item = 0, step = 0;
  bool first = false, last = false;
  int32_t rows = 0, tokens = 0;
  std::vector<StageOp> ops;  // from stage_list, in order
  std::vector<BlockTasks> blocks;
  std::vector<int32_t> lg, up, wg;  // [v]
};

// Items of the tasks (sequence, query token) x all heads, whole or cut, placed round-robin.
struct Placed {
  int core;
  WorkItem item;
};

Plan plan_of(int cores, std::vector<Placed> placed,
             std::vector<MergeGroup> merges, int32_t num_partials) {
  // Each core's items in the order it runs them (task / piece order).
  std::stable_sort(placed.begin(), placed.end(),
                   [](const Placed& a, const Placed& b) { return a.core < b.core; });
  Plan plan;
  plan.merges = std::move(merges);
  plan.num_partials = num_partials;
  plan.num_workers = cores;
  plan.worker_offsets.assign(cores + 1, 0);
  for (const Placed& p : placed) {
    plan.items.push_back(p.item);
    ++plan.worker_offsets[p.core + 1];
  }
  for (int w = 0; w < cores; ++w) plan.worker_offsets[w + 1] += plan.worker_offsets[w];
  for (const WorkItem& it : plan.items) {
    int32_t g = -1;
    if (it.partial >= 0)
      for (size_t m = 0; m < plan.merges.size(); ++m)
        if (it.partial >= plan.merges[m].partial_begin &&
            it.partial < plan.merges[m].partial_begin + plan.merges[m].num_partials)
          g = int32_t(m);
    plan.item_merge.push_back(g);
  }
  return plan;
}

// The task splits of profile.h's Split (all but planner). Every sequence has cfg.k tokens.
Plan task_plan(const SimConfig& cfg, const Split& split, int tile) {
  const int c = cfg.cores, groups = std::min(cfg.q_len, cfg.heads);
  const int tasks = cfg.batch * groups;
  const int blocks = (cfg.k + tile - 1) / tile;
  auto heads_of = [&](int t) {
    const int g = t % groups;
    return std::pair{g * cfg.heads / groups, (g + 1) * cfg.heads / groups};
  };
  std::vector<Placed> placed;
  std::vector<MergeGroup> merges;
  int32_t partials = 0;
  // Task t cut into pieces of `piece` tokens, piece s on core core_of(s).
  auto cut = [&](int t, int piece, auto core_of) {
    const auto [hb, he] = heads_of(t);
    const int first = int(placed.size());
    for (int s = 0; s * piece < cfg.k; ++s)
      placed.push_back({core_of(s), {t / groups, hb, he, s * piece, std::min(cfg.k, (s + 1) * piece), -1}});
    const int n = int(placed.size()) - first;
    if (n > 1) {
      merges.push_back({t / groups, hb, he, partials, n});
      for (int i = first; i < first + n; ++i) placed[i].item.partial = partials++;
    }
  };
  if (split.kind == Split::tp1) {
    int former = tasks / c * c, tail = tasks - former;
    // The tiling runs a tail of at least 0.8 c tasks whole (SPLITKV_RATION).
    if (tail * 5 >= c * 4) former = tasks, tail = 0;
    const int n = tail > 0 ? std::lcm(tail, c) / tail : 1;
    const int piece = (blocks + n - 1) / n * tile;
    for (int t = 0; t < former; ++t) cut(t, cfg.k, [&](int) { return t % c; });
    for (int j = 0; j < tail; ++j)
      cut(former + j, piece, [&](int s) { return (j * n + s) % c; });
  } else {
    int next = 0;  // round-robin over the cores, pieces in task order
    const int piece = split.kind == Split::none     ? std::max(cfg.k, 1)
                      : split.kind == Split::pieces ? (blocks + split.n - 1) / split.n * tile
                                                    : (split.n + tile - 1) / tile * tile;
    for (int t = 0; t < tasks; ++t) cut(t, piece, [&](int) { return next++ % c; });
  }
  return plan_of(c, std::move(placed), std::move(merges), partials);
}

}  // namespace

const char* sim_reduction_name(SimReduction r) {
  switch (r) {
    case SimReduction::separate: return "separate";
    case SimReduction::last: return "last";
    case SimReduction::inkernel: return "inkernel";
  }
  return "?";
}

SimReduction parse_sim_reduction(const std::string& text) {
  for (SimReduction r : {SimReduction::separate, SimReduction::last, SimReduction::inkernel})
    if (text == sim_reduction_name(r)) return r;
  MLA_FAIL("reduction '" << text << "' is not separate, last or inkernel");
}

Plan sim_plan(const SimConfig& cfg, const Profile& prof) {
  const Split split = parse_split(cfg.split.empty() ? prof.scheduler : cfg.split);
  const int tile = cfg.block > 0 ? cfg.block : prof.kv_tile;
  if (split.kind != Split::planner) return task_plan(cfg, split, tile);
  const std::vector<int32_t> seq_lens(cfg.batch, cfg.k);
  return make_plan(PlanInput{.batch = cfg.batch,
                             .seq_lens = seq_lens.data(),
                             .q_lens = nullptr,
                             .q_len = cfg.q_len,
                             .num_heads = cfg.heads,
                             .num_workers = cfg.cores,
                             .kv_tile = tile});
}

BuiltSchedule build_schedule(const SimConfig& cfg, const Profile& prof) {
  MLA_CHECK(cfg.batch >= 1, "--b = " << cfg.batch << " must be at least 1");
  MLA_CHECK(cfg.heads >= 1, "--heads = " << cfg.heads << " must be at least 1");
  MLA_CHECK(cfg.q_len >= 1, "--q-len = " << cfg.q_len << " must be at least 1");
  MLA_CHECK(cfg.k >= cfg.q_len,
            "--k = " << cfg.k << " is shorter than --q-len = " << cfg.q_len << " (k counts them)");
  MLA_CHECK(cfg.batch <= (1 << 16), "--b = " << cfg.batch << " is more than 65536");
  MLA_CHECK(cfg.heads <= (1 << 16), "--heads = " << cfg.heads << " is more than 65536");
  MLA_CHECK(cfg.q_len <= 1024, "--q-len = " << cfg.q_len << " is more than 1024");
  MLA_CHECK(cfg.cores >= 1 && cfg.cores <= 4096, "--c = " << cfg.cores << " must be in 1..4096");
  MLA_CHECK(cfg.chunk >= 1, "--chunk " << cfg.chunk << " must be at least 1");
  MLA_CHECK(cfg.block >= 0 && cfg.block <= (1 << 16),
            "--block = " << cfg.block << " must be in 1..65536 tokens");
  MLA_CHECK(cfg.kv == KvDType::int8 || cfg.kv == KvDType::bf16,
            "--kv-dtype " << kv_dtype_name(cfg.kv) << ": the simulator models int8 and bf16");
  MLA_CHECK(std::isfinite(cfg.sm_scale) && cfg.sm_scale > 0,
            "--sm-scale = " << cfg.sm_scale << " must be a positive number");
  const int64_t work = int64_t(cfg.batch) * cfg.k * cfg.heads * cfg.q_len;
  MLA_CHECK(work <= (int64_t(1) << 34), "--b " << cfg.batch << " x --k " << cfg.k << " x --heads "
                                               << cfg.heads << " x --q-len " << cfg.q_len
                                               << " is too large to simulate");

  Builder B{cfg, prof, {}, prof.shared_unit ? 1 : prof.vector_units};
  const int V = B.vparts;
  const double sync = prof.sync_latency_us;
  const bool ws = prof.workspace_transfers;
  const bool spill = cfg.up == UpForm::spill;
  const bool split_qk = cfg.kv == KvDType::int8;
  BuiltSchedule& out = B.out;
  out.split = parse_split(cfg.split.empty() ? prof.scheduler : cfg.split);
  out.block = cfg.block > 0 ? cfg.block : prof.kv_tile;
  out.block_reading = cfg.reading < 0 ? prof.block_reading : cfg.reading == 1;
  const bool blk = out.block_reading;
  const int tile = out.block;
  // Slots of each buffer in blocks: block reading, the profile's slots count chunks (ping-pong of
  // chunks: a chunk of c blocks doubles the workspace of a chunk of c / 2); merged, steps. The cube
  // runs QK ahead of PV as far as the S slots allow.
  // (0: not given, `buffers`; a profile built in code, not read, may leave them so.)
  const auto or_buffers = [&](int slots) { return slots > 0 ? slots : prof.buffers; };
  const int unit = blk ? cfg.chunk : 1;
  const int SS = or_buffers(prof.s_slots) * unit, PS = or_buffers(prof.p_slots) * unit;
  const int LS = or_buffers(prof.lo_slots) * unit;
  const int KS = (blk ? or_buffers(prof.kv_l1_chunks) : prof.buffers) * unit;
  const int P = std::min(prof.cube_preload, std::max(0, or_buffers(prof.s_slots) - 1));
  const double up_extra =
      prof.up_ops_per_extra_block >= 0 ? prof.up_ops_per_extra_block : prof.up_ops_per_element;
  out.preload = P;

  out.plan = sim_plan(cfg, prof);
  const Plan& plan = out.plan;
  // Each step is ~10-20 tasks; beyond a few million steps a run takes minutes and gigabytes.
  int64_t total_steps = 0;
  const int64_t step_tokens = int64_t(cfg.chunk) * tile;
  for (const WorkItem& it : plan.items)
    total_steps += (int64_t(it.kv_end) - it.kv_begin + step_tokens - 1) / step_tokens *
                   (blk ? cfg.chunk : 1);
  MLA_CHECK(total_steps <= kMaxSteps,
            "--b " << cfg.batch << " --k " << cfg.k << " --chunk " << cfg.chunk << " makes "
                   << total_steps << " pipeline steps, more than the " << kMaxSteps
                   << " the simulator runs; use a larger --chunk or fewer sequences");
  out.lanes_per_core = prof.shared_unit ? 1 : kLaneVec0 + 3 * V;
  const int nres = cfg.cores * out.lanes_per_core;
  out.engine.queues.assign(nres, {});
  out.engine.core_of_resource.resize(nres);
  for (int r = 0; r < nres; ++r) out.engine.core_of_resource[r] = r / out.lanes_per_core;
  for (int w = 0; w < cfg.cores; ++w)
    out.busy_cores += plan.worker_offsets[w + 1] > plan.worker_offsets[w] ? 1 : 0;
  // The HBM pool: each busy core reads at its own cap or its share of the chip's total.
  out.kv_bytes_per_s = prof.kv_read_bytes_per_s;
  if (prof.hbm_bytes_per_s > 0 && out.busy_cores > 0 && out.kv_bytes_per_s > 0)
    out.kv_bytes_per_s = std::min(out.kv_bytes_per_s, prof.hbm_bytes_per_s / out.busy_cores);
  out.steps_min = out.busy_cores ? std::numeric_limits<int>::max() : 0;

  std::vector<std::vector<int32_t>> item_final(
      plan.items.size());  // [v]: writes of the item's output

  for (int w = 0; w < cfg.cores; ++w) {
    std::vector<StepTasks> steps;
    for (int32_t it = plan.worker_offsets[w]; it < plan.worker_offsets[w + 1]; ++it) {
      const WorkItem& item = plan.items[it];
      const int32_t rows = cfg.q_len * (item.head_end - item.head_begin);
      const std::vector<StageOp> ops = stage_list(StageListInput{.split_qk = split_qk,
                                                                 .rows = rows,
                                                                 .kv_begin = item.kv_begin,
                                                                 .kv_end = item.kv_end,
                                                                 .chunk = cfg.chunk,
                                                                 .tile = tile});
      for (const StageOp& op : ops) {
        if (steps.empty() || steps.back().item != it || steps.back().step != op.step)
          steps.push_back(StepTasks{.item = it,
                                    .step = op.step,
                                    .first = op.step == 0,
                                    .rows = op.rows,
                                    .tokens = op.tokens});
        steps.back().ops.push_back(op);
      }
      if (!steps.empty() && steps.back().item == it) steps.back().last = true;
    }
    const int S = int(steps.size());
    if (plan.worker_offsets[w + 1] > plan.worker_offsets[w]) {
      out.steps_max = std::max(out.steps_max, S);
      out.steps_min = std::min(out.steps_min, S);
    }

    // ---- tasks ----
    for (StepTasks& st : steps) {
      auto base = [&](Op op, int lane, int part, int32_t tokens) {
        return SimTask{.op = op,
                       .core = w,
                       .lane = lane,
                       .item = st.item,
                       .step = st.step,
                       .part = part,
                       .rows = st.rows,
                       .tokens = tokens};
      };
      std::vector<double> Rv(V);  // rows of vector unit v
      for (int v = 0; v < V; ++v) Rv[v] = part_rows(st.rows, v, V);
      // The step's blocks: whole KV blocks (block reading) or the step as one.
      for (int32_t done = 0; done < st.tokens;) {
        const int32_t n = blk ? std::min(tile, st.tokens - done) : st.tokens;
        st.blocks.push_back(BlockTasks{.tokens = n});
        done += n;
      }
      const int nb = int(st.blocks.size());
      for (int bi = 0; bi < nb; ++bi) {
        BlockTasks& bk = st.blocks[bi];
        const double n = bk.tokens;
        bk.ls.assign(V, {});
        bk.sm.assign(V, -1);
        bk.wp.assign(V, -1);
        bk.lo.assign(V, -1);
        if (out.kv_bytes_per_s > 0)
          bk.lk = B.add(base(Op::load_kv, kLaneMte2Cube, 0, bk.tokens),
                        B.transfer_us(n * kv_token_bytes(cfg.kv), out.kv_bytes_per_s),
                        B.res(w, kLaneMte2Cube));
        for (const StageOp& sop : st.ops) {
          if (sop.stage == Stage::UP) continue;
          StageOp op = sop;
          op.tokens = bk.tokens;
          SimTask t = base(Op::stage, kLaneCube, 0, bk.tokens);
          t.stage = op.stage;
          if (stage_unit(op.stage) == Unit::matrix && op.stage != Stage::PV) {
            double us = B.matrix_us(op);
            if (st.first && bi == 0 && bk.qk.empty()) us += prof.item_overhead_us;
            bk.qk.push_back(B.add(t, us, B.res(w, kLaneCube)));
          } else if (op.stage == Stage::PV) {
            bk.pv = B.add(t, B.matrix_us(op), B.res(w, kLaneCube));
          } else {  // SM
            for (int v = 0; v < V; ++v) {
              t.lane = vec_lane(v);
              t.part = v;
              const double us = (prof.overhead_sm_us +
                                 per(Rv[v] * n * prof.sm_ops_per_element, prof.vector_ops_per_s)) *
                                cfg.sm_scale;
              bk.sm[v] = B.add(t, us, B.res(w, vec_lane(v)));
            }
          }
        }
        const double p_bytes_per_row = n * (split_qk ? 1 : 2);  // P: int8 or bf16
        for (int v = 0; v < V; ++v)
          if (ws) {
            for (size_t q = 0; q < bk.qk.size(); ++q)  // S_nope int32 and S_rope fp32, or S fp32
              bk.ls[v].push_back(B.add(base(Op::load_s, mte2_lane(v), v, bk.tokens),
                                       B.transfer_us(Rv[v] * n * 4, prof.ws_read_bytes_per_s),
                                       B.res(w, mte2_lane(v))));
            bk.wp[v] = B.add(base(Op::store_p, mte3_lane(v), v, bk.tokens),
                             B.transfer_us(Rv[v] * p_bytes_per_row, prof.ws_write_bytes_per_s),
                             B.res(w, mte3_lane(v)));
            bk.lo[v] = B.add(base(Op::load_lo, mte2_lane(v), v, bk.tokens),
                             B.transfer_us(Rv[v] * kLatentDim * 4, prof.ws_read_bytes_per_s),
                             B.res(w, mte2_lane(v)));
          }
        if (ws)
          bk.lp = B.add(base(Op::load_p, kLaneMte2Cube, 0, bk.tokens),
                        B.transfer_us(st.rows * p_bytes_per_row, prof.ws_read_bytes_per_s),
                        B.res(w, kLaneMte2Cube));
      }
      // One UP per step over its nb partial outputs (the seed's "SM, SM, U").
      st.lg.assign(V, -1);
      st.up.assign(V, -1);
      st.wg.assign(V, -1);
      for (int v = 0; v < V; ++v) {
        SimTask t = base(Op::stage, vec_lane(v), v, st.tokens);
        t.stage = Stage::UP;
        const double ops = prof.up_ops_per_element + (nb - 1) * up_extra;
        st.up[v] = B.add(t, prof.overhead_up_us + per(Rv[v] * kLatentDim * ops, prof.vector_ops_per_s),
                         B.res(w, vec_lane(v)));
        if (spill && !st.first)
          st.lg[v] = B.add(base(Op::load_go, mte2_lane(v), v, st.tokens),
                           B.transfer_us(Rv[v] * kLatentDim * 4, prof.ws_read_bytes_per_s),
                           B.res(w, mte2_lane(v)));
        if (spill || st.last)  // the accumulator out every step, or the output (and lse) at the end
          st.wg[v] = B.add(base(Op::store_go, mte3_lane(v), v, st.tokens),
                           B.transfer_us(Rv[v] * (kLatentDim + (st.last ? 1 : 0)) * 4,
                                         prof.ws_write_bytes_per_s),
                           B.res(w, mte3_lane(v)));
      }
      if (st.last) item_final[st.item] = st.wg;
    }

    // ---- dependencies: data hand-overs and buffer slots (counted in blocks) ----
    std::vector<BlockTasks*> flat;  // the core's blocks in order
    for (StepTasks& st : steps)
      for (BlockTasks& bk : st.blocks) flat.push_back(&bk);
    size_t fi = 0;
    for (int g = 0; g < S; ++g) {
      StepTasks& st = steps[g];
      BlockTasks& lastb = st.blocks.back();
      for (BlockTasks& bk : st.blocks) {
        const size_t i = fi++;
        auto back = [&](int slots) { return i >= size_t(slots) ? flat[i - slots] : nullptr; };
        const BlockTasks* bkv = back(KS);
        const BlockTasks* bs = back(SS);
        const BlockTasks* bp = back(PS);
        const BlockTasks* bl = back(LS);
        // With per-chunk flags every hand-over waits for the chunk's last block.
        BlockTasks& flag = prof.flags_per_chunk && blk ? lastb : bk;
        B.dep(bk.lk, bkv ? bkv->pv : -1, 0);  // K/V slot in L1, free after that PV
        for (int32_t q : bk.qk) B.dep(q, bk.lk, 0);
        for (int v = 0; v < V; ++v) {
          if (ws) {
            if (bs) B.dep(bk.qk.front(), bs->ls[v].back(), sync);  // S slot, workspace
            for (size_t q = 0; q < bk.qk.size(); ++q) {
              B.dep(bk.ls[v][q], flag.qk[q], sync);
              if (!prof.two_stage_qk_sync) B.dep(bk.ls[v][q], flag.qk.back(), sync);
            }
            for (int32_t l : bk.ls[v]) B.dep(bk.sm[v], l, 0);
            if (bp) B.dep(bk.sm[v], bp->wp[v], 0);  // P slot in UB
            B.dep(bk.wp[v], bk.sm[v], 0);
            if (bp) B.dep(bk.wp[v], bp->lp, sync);  // P slot in the workspace
            B.dep(bk.lp, flag.wp[v], sync);
            B.dep(bk.lp, bk.wp[v], sync);
            if (bl) B.dep(bk.pv, bl->lo[v], sync);  // lo slot in the workspace
            B.dep(bk.lo[v], flag.pv, sync);
            B.dep(bk.lo[v], bk.pv, sync);
            B.dep(st.up[v], bk.lo[v], 0);
          } else {
            for (int32_t q : flag.qk) B.dep(bk.sm[v], q, sync);
            B.dep(bk.pv, flag.sm[v], sync);
            B.dep(bk.pv, bk.sm[v], sync);
            B.dep(st.up[v], bk.pv, sync);
          }
        }
        B.dep(bk.pv, bk.lp, 0);
        B.dep(bk.pv, bk.lk, 0);
      }
      for (int v = 0; v < V; ++v) {
        if (st.lg[v] >= 0) B.dep(st.lg[v], steps[g - 1].wg[v], 0);
        B.dep(st.up[v], st.lg[v], 0);
        B.dep(st.wg[v], st.up[v], 0);
      }
    }

    // ---- program order of each lane ----
    if (prof.shared_unit) {
      for (StepTasks& st : steps) {
        for (BlockTasks& bk : st.blocks) {
          B.queue(bk.lk);
          for (int32_t q : bk.qk) B.queue(q);
          for (int v = 0; v < V; ++v)
            for (int32_t l : bk.ls[v]) B.queue(l);
          for (int v = 0; v < V; ++v) B.queue(bk.sm[v]);
          for (int v = 0; v < V; ++v) B.queue(bk.wp[v]);
          B.queue(bk.lp);
          B.queue(bk.pv);
          for (int v = 0; v < V; ++v) B.queue(bk.lo[v]);
        }
        for (int v = 0; v < V; ++v) B.queue(st.lg[v]);
        for (int v = 0; v < V; ++v) B.queue(st.up[v]);
        for (int v = 0; v < V; ++v) B.queue(st.wg[v]);
      }
    } else {
      // QK (and SM) of step g before PV (and UP) of step g - P: the seed's "QK, QK, PV, PV".
      for (int g = 0; g < S + P; ++g) {
        StepTasks* now = g < S ? &steps[g] : nullptr;
        StepTasks* lag = g >= P ? &steps[g - P] : nullptr;  // the step whose second half runs
        if (now)
          for (BlockTasks& bk : now->blocks) {
            B.queue(bk.lk);
            for (int32_t q : bk.qk) B.queue(q);
            for (int v = 0; v < V; ++v) {
              for (int32_t l : bk.ls[v]) B.queue(l);
              B.queue(bk.sm[v]);
              B.queue(bk.wp[v]);
            }
          }
        if (lag) {
          for (BlockTasks& bk : lag->blocks) {
            B.queue(bk.lp);
            B.queue(bk.pv);
            for (int v = 0; v < V; ++v) B.queue(bk.lo[v]);
          }
          for (int v = 0; v < V; ++v) {
            B.queue(lag->lg[v]);
            B.queue(lag->up[v]);
            B.queue(lag->wg[v]);
          }
        }
      }
    }
  }

  // ---- split-KV reduction ----
  auto merge_us = [&](double rows, double partials) {
    const double elems = rows * partials * kLatentDim;
    return prof.overhead_merge_us + per(elems * prof.merge_ops_per_element, prof.vector_ops_per_s) +
           per(rows * partials * (kLatentDim + 1) * 4.0, prof.ws_read_bytes_per_s) +
           per(rows * (kLatentDim + 1) * 4.0, prof.ws_write_bytes_per_s);
  };
  const int ng = int(plan.merges.size());
  out.merge_writes = ng;
  if (ng > 0 && cfg.reduction == SimReduction::last) {
    for (int gi = 0; gi < ng; ++gi) {
      const MergeGroup& m = plan.merges[gi];
      const int32_t rows = cfg.q_len * (m.head_end - m.head_begin);
      for (int v = 0; v < V; ++v) {
        SimTask t{.op = Op::merge,
                  .core = -1,
                  .lane = vec_lane(v),
                  .part = v,
                  .rows = part_rows(rows, v, V)};
        const int32_t id = B.add(t, merge_us(t.rows, m.num_partials), -1);
        for (int w = 0; w < cfg.cores; ++w)
          out.engine.tasks[id].float_resources.push_back(B.res(w, vec_lane(v)));
        for (size_t it = 0; it < plan.items.size(); ++it)
          if (plan.item_merge[it] == gi)
            for (int32_t f : item_final[it]) B.dep(id, f, sync);
      }
    }
  } else if (ng > 0) {
    // After a global sync (separate: a second kernel's launch as well), the rows x partials of all
    // groups spread evenly over every core and vector unit (combine_all's split).
    const double start = sync + (cfg.reduction == SimReduction::separate
                                     ? prof.separate_pass_overhead_us : 0.0);
    double total = 0, rows_total = 0;
    for (const MergeGroup& m : plan.merges) {
      const double rows = double(cfg.q_len) * (m.head_end - m.head_begin);
      total += rows * m.num_partials;
      rows_total += rows;
    }
    std::vector<int32_t> lasts;
    for (const auto& q : out.engine.queues)
      if (!q.empty()) lasts.push_back(q.back());
    const double share = 1.0 / (double(cfg.cores) * V);
    const double avg_partials = total / rows_total;
    for (int w = 0; w < cfg.cores; ++w)
      for (int v = 0; v < V; ++v) {
        SimTask t{.op = Op::merge,
                  .core = w,
                  .lane = vec_lane(v),
                  .part = v,
                  .rows = int32_t(std::ceil(rows_total * share))};
        const int32_t id =
            B.add(t, merge_us(rows_total * share, avg_partials), B.res(w, vec_lane(v)));
        for (int32_t l : lasts) B.dep(id, l, start);
        B.queue(id);
      }
  }
  return std::move(B.out);
}

SimResult run_sim(const SimConfig& cfg, const Profile& prof) {
  SimResult r;
  r.sched = build_schedule(cfg, prof);
  r.tl = simulate(r.sched.engine);
  r.predicted_us = r.tl.makespan_us + prof.call_overhead_us;
  const int V = prof.shared_unit ? 1 : prof.vector_units;
  double matrix = 0, vector = 0;
  std::vector<double> core_first(cfg.cores, INFINITY), core_last(cfg.cores, 0),
      core_matrix(cfg.cores, 0);
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const SimTask& task = r.sched.tasks[t];
    const double d = r.tl.end_us[t] - r.tl.start_us[t];
    const int core = r.sched.engine.core_of_resource[r.tl.resource[t]];
    core_first[core] = std::min(core_first[core], r.tl.start_us[t]);
    core_last[core] = std::max(core_last[core], r.tl.end_us[t]);
    const bool is_matrix = task.op == Op::stage && stage_unit(task.stage) == Unit::matrix;
    if (is_matrix)
      matrix += d;
    else if (task.op == Op::stage || task.op == Op::merge)
      vector += d;
    // On a shared unit the matrix unit is the core itself: it idles only when nothing runs.
    if (is_matrix || prof.shared_unit) core_matrix[core] += d;
    if (task.op == Op::store_p || task.op == Op::store_go) ++r.mte3_transfers;
  }
  r.mte3_transfers += r.sched.merge_writes;
  const double span = r.tl.makespan_us;
  if (span > 0) {
    r.cube_busy = matrix / (cfg.cores * span);
    r.vector_busy = vector / (double(cfg.cores) * V * span);
  }
  int active = 0;
  double idle = 0;
  for (int c = 0; c < cfg.cores; ++c) {
    if (!(core_last[c] > core_first[c])) continue;
    ++active;
    idle += core_last[c] - core_first[c] - core_matrix[c];
  }
  r.bubble_us = active ? idle / active : 0;
  // The end bubble: on each busy core, the matrix unit's idle time from the end of its last QK to
  // the end of its last matrix task (its last PVs waiting for their SM); the tail: everything after
  // the last matrix task of any core.
  std::vector<double> last_qk(cfg.cores, -1), last_mx(cfg.cores, -1), mx_after(cfg.cores, 0);
  double first_merge = INFINITY;
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const SimTask& task = r.sched.tasks[t];
    if (task.op == Op::merge) first_merge = std::min(first_merge, r.tl.start_us[t]);
    if (task.op != Op::stage || stage_unit(task.stage) != Unit::matrix) continue;
    const int core = r.sched.engine.core_of_resource[r.tl.resource[t]];
    last_mx[core] = std::max(last_mx[core], r.tl.end_us[t]);
    if (task.stage != Stage::PV) last_qk[core] = std::max(last_qk[core], r.tl.end_us[t]);
  }
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const SimTask& task = r.sched.tasks[t];
    if (task.op != Op::stage || stage_unit(task.stage) != Unit::matrix) continue;
    const int core = r.sched.engine.core_of_resource[r.tl.resource[t]];
    if (r.tl.start_us[t] >= last_qk[core]) mx_after[core] += r.tl.end_us[t] - r.tl.start_us[t];
  }
  double end_idle = 0, mx_end = 0;
  for (int c = 0; c < cfg.cores; ++c) {
    if (last_mx[c] < 0) continue;
    end_idle += last_mx[c] - last_qk[c] - mx_after[c];
    mx_end = std::max(mx_end, last_mx[c]);
  }
  r.end_bubble_us = active ? end_idle / active : 0;
  r.tail_us = std::max(0.0, span - mx_end);
  r.merge_us = std::isfinite(first_merge) ? std::max(0.0, span - first_merge) : 0.0;
  return r;
}

SeedMatch match_seed(const std::vector<double>& ratio) {
  MLA_CHECK(ratio.size() == 21, "match_seed: " << ratio.size() << " ratios, not the seed's 21 rows");
  SeedMatch m;
  const int n = int(ratio.size());
  double ma = 0, mb = 0;
  for (int i = 0; i < n; ++i) {
    m.gaining += ratio[i] > 1 ? 1 : 0;
    ma += ratio[i] / n;
    mb += kSeedRatio[i] / n;
    m.by_k[i % 3] += ratio[i] / (n / 3);
  }
  double sab = 0, saa = 0, sbb = 0;
  for (int i = 0; i < n; ++i) {
    sab += (ratio[i] - ma) * (kSeedRatio[i] - mb);
    saa += (ratio[i] - ma) * (ratio[i] - ma);
    sbb += (kSeedRatio[i] - mb) * (kSeedRatio[i] - mb);
  }
  m.corr = saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0;
  m.avg = ma;
  return m;
}

std::vector<std::vector<StageOp>> stages_run(const SimResult& r, bool step_major) {
  struct Ran {
    int32_t step;
    double start;
    size_t task;
  };
  std::vector<std::vector<Ran>> by_item(r.sched.plan.items.size());
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const SimTask& task = r.sched.tasks[t];
    if (task.op == Op::stage && task.part == 0)
      by_item[task.item].push_back({task.step, r.tl.start_us[t], t});
  }
  std::vector<std::vector<StageOp>> out(by_item.size());
  for (size_t i = 0; i < by_item.size(); ++i) {
    std::stable_sort(by_item[i].begin(), by_item[i].end(), [&](const Ran& a, const Ran& b) {
      if (step_major && a.step != b.step) return a.step < b.step;
      return a.start < b.start;
    });
    for (const Ran& x : by_item[i]) {
      const SimTask& task = r.sched.tasks[x.task];
      out[i].push_back({task.stage, task.step, task.rows, task.tokens});
    }
  }
  return out;
}

int busiest_core(const SimResult& r) {
  std::vector<double> busy;
  for (size_t t = 0; t < r.sched.tasks.size(); ++t) {
    const size_t core = size_t(r.sched.engine.core_of_resource[r.tl.resource[t]]);
    if (busy.size() <= core) busy.resize(core + 1, 0.0);
    busy[core] += r.tl.end_us[t] - r.tl.start_us[t];
  }
  return busy.empty() ? 0 : int(std::max_element(busy.begin(), busy.end()) - busy.begin());
}

}  // namespace mla::sim
