// The work planner (include/mla/plan.h). How it splits:
//
// 1. The work is a list of units (sequence, head group), one per head group of every non-empty
//    sequence, in (seq, group) order. A unit is laid out on a line of cost: first its fixed
//    overhead o, then its tiles, each of cost r (r = the group's rows, at least mem_bound_rows):
//
//        unit u:   |<-- o -->|<- r ->|<- r ->| ... |<- r ->|   next unit ...
//        cut at:   ^S_u              ^       ^     ^        ^S_u+1
//                  (unit start)      (tile boundaries inside)
//
// 2. Each worker gets a stretch of the line between two cuts. Allowed cuts are unit starts and tile
//    boundaries inside a unit, never inside the overhead nor the first tile: there is no point
//    paying a piece's overhead for less than one tile. A cut inside a unit splits its KV range and
//    the worker after it pays the overhead once more, which is what the model charges a split. The
//    cuts minimise the largest worker cost m exactly (binary search on m; filling each worker as
//    far as m allows decides whether m is feasible). That m is at most ceil(T / W) + r + o (T = the
//    line's length, W = workers): cutting at the last allowed position at or before w * T / W
//    reaches it, because the gap above an allowed cut is r, or o + r at a unit start, and a worker
//    that starts inside a unit pays one extra o. Then a cut that falls inside a unit moves back to
//    the unit's start when the remaining workers can still finish within m, so no sequence is split
//    that the makespan does not need split. Pieces of a worker are contiguous on the line, so it
//    walks its sequences' pages in order.
// 3. The head-group count G (same for every sequence) is chosen by trying every G from 1 to
//    min(W, ceil(H / min_heads_per_group)) and keeping the lowest maximum worker cost, then the
//    fewest partials (no reduction to run), then the lowest total cost. Splitting heads costs
//    nothing in the model while groups keep at least mem_bound_rows rows (they re-read the keys,
//    but the time is in the dot products); below that, every group pays the full read of the keys,
//    so few-row cases (H = 16 at q_len 1) split the KV range instead, and many-row ones (H = 128)
//    split heads.
// 4. A second family, kept when it reaches a lower largest worker cost (then fewer partials, then a
//    lower total): every sequence gets workers of its own (batch <= W), its heads are cut into
//    groups of whole blocks, and a group split into k KV pieces takes k workers, one piece each.
//    For a makespan m, the blocks a group of k pieces can hold follow from the cost model; the
//    fewest workers covering a sequence is an unbounded knapsack over k; m is the least value for
//    which the sequences' workers add up to at most W. Groups of different sizes with different KV
//    splits are what the uniform head-group count of 1-3 cannot express: b1 k512 H 128 q_len 2 on
//    5 workers is 13 blocks in 4 KV pieces plus 3 blocks unsplit (928, 896 per worker), where the
//    cost line gave 1024 to four workers and left the fifth idle.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <tuple>
#include <vector>

#include "mla/plan.h"
#include "mla/status.h"

namespace mla {
namespace {

int q_len_of(const PlanInput& in, int b) { return in.q_lens ? in.q_lens[b] : in.q_len; }

void check_input(const PlanInput& in) {
  MLA_CHECK(in.batch >= 0, "plan: batch = " << in.batch << " is negative");
  MLA_CHECK(in.batch == 0 || in.seq_lens, "plan: seq_lens is null for batch = " << in.batch);
  MLA_CHECK(in.q_len >= 1, "plan: q_len = " << in.q_len << " must be at least 1");
  MLA_CHECK(in.num_heads >= 1, "plan: num_heads = " << in.num_heads << " must be at least 1");
  MLA_CHECK(in.num_workers >= 1 && in.num_workers <= kMaxPlanWorkers,
            "plan: num_workers = " << in.num_workers << " is outside 1.." << kMaxPlanWorkers);
  MLA_CHECK(in.kv_tile >= 1 && in.kv_tile <= (1 << 20),
            "plan: kv_tile = " << in.kv_tile << " is outside 1..2^20");
  MLA_CHECK(in.overhead_tiles <= (1 << 20),
            "plan: overhead_tiles = " << in.overhead_tiles << " is above 2^20");
  MLA_CHECK(in.overhead_tiles >= 0,
            "plan: overhead_tiles = " << in.overhead_tiles << " is negative");
  MLA_CHECK(in.min_heads_per_group >= 1,
            "plan: min_heads_per_group = " << in.min_heads_per_group << " must be at least 1");
  MLA_CHECK(in.mem_bound_rows >= 0,
            "plan: mem_bound_rows = " << in.mem_bound_rows << " is negative");
  for (int b = 0; b < in.batch; ++b) {
    MLA_CHECK(in.seq_lens[b] >= 0,
              "plan: seq_lens[" << b << "] = " << in.seq_lens[b] << " is negative");
    if (in.seq_lens[b] > 0 && in.q_lens) {
      MLA_CHECK(in.q_lens[b] >= 1 && in.q_lens[b] <= in.q_len,
                "plan: q_lens[" << b << "] = " << in.q_lens[b]
                                << " is outside 1..q_len = " << in.q_len << " for a sequence of "
                                << in.seq_lens[b] << " tokens");
    }
  }
}

int64_t tiles_of(const PlanInput& in, int kv_begin, int kv_end) {
  if (kv_end <= kv_begin) return 0;
  return (static_cast<int64_t>(kv_end) + in.kv_tile - 1) / in.kv_tile - kv_begin / in.kv_tile;
}

int64_t rows_cost(const PlanInput& in, int64_t rows) {
  return std::max<int64_t>(rows, in.mem_bound_rows);
}

int64_t tile_cost_checked(const PlanInput& in) {
  int q_max = 0;
  for (int b = 0; b < in.batch; ++b)
    if (in.seq_lens[b] > 0) q_max = std::max(q_max, q_len_of(in, b));
  if (q_max == 0) q_max = in.q_len;
  return rows_cost(in, static_cast<int64_t>(q_max) * in.num_heads);
}

// Head groups for a group count g: ceil(H / m) blocks of m heads (the last block may be short),
// dealt out as evenly as possible, the first groups taking one block more.
std::vector<std::pair<int, int>> head_groups(int heads, int m, int g) {
  const int blocks = (heads + m - 1) / m;
  std::vector<std::pair<int, int>> out;
  int block = 0;
  for (int i = 0; i < g; ++i) {
    const int n = blocks / g + (i < blocks % g ? 1 : 0);
    out.emplace_back(block * m, std::min(heads, (block + n) * m));
    block += n;
  }
  return out;
}

struct Unit {
  int32_t seq, head_begin, head_end;
  int32_t tiles;
  int64_t r;      // cost of one tile
  int64_t start;  // position of the unit on the cost line
};

struct Cut {
  int32_t unit;  // units.size() for the end of the line
  int32_t tile;  // 0: at the unit's start; k >= 1: before tile k of the unit
  auto operator<=>(const Cut&) const = default;
};

struct Candidate {
  std::vector<Unit> units;
  std::vector<Cut> cuts;  // [W + 1]
  int64_t total = 0;      // sum of unsplit unit costs (T)
  int64_t makespan = 0;   // largest worker cost
  int64_t cost = 0;       // sum of worker costs (T plus one overhead per extra piece)
  int64_t partials = 0;
};

// The cost line of one head-group count and the cuts on it.
class Line {
 public:
  Line(const PlanInput& in, int groups, int64_t overhead) : o_(overhead) {
    for (int b = 0; b < in.batch; ++b) {
      const int32_t len = in.seq_lens[b];
      if (len == 0) continue;
      for (const auto& [hb, he] : head_groups(in.num_heads, in.min_heads_per_group, groups)) {
        const Unit u{.seq = b,
                     .head_begin = hb,
                     .head_end = he,
                     .tiles = static_cast<int32_t>(tiles_of(in, 0, len)),
                     .r = rows_cost(in, static_cast<int64_t>(q_len_of(in, b)) * (he - hb)),
                     .start = total_};
        total_ += o_ + u.tiles * u.r;
        units_.push_back(u);
      }
    }
  }

  const std::vector<Unit>& units() const { return units_; }
  int64_t total() const { return total_; }
  Cut end() const { return {static_cast<int32_t>(units_.size()), 0}; }

  int64_t pos(const Cut& x) const {
    if (x == end()) return total_;
    const Unit& u = units_[x.unit];
    return u.start + (x.tile == 0 ? 0 : o_ + x.tile * u.r);
  }
  // Where the work of a worker starting at x begins to cost: a worker that starts inside a unit
  // pays that piece's overhead once more.
  int64_t cost_start(const Cut& x) const { return pos(x) - (x.tile > 0 ? o_ : 0); }

  // The last allowed cut at or before line position p (p >= 0). Allowed: unit starts, and tile
  // boundaries inside a unit past its overhead and first tile.
  Cut last_cut_at(int64_t p) const {
    if (p >= total_) return end();
    const auto it = std::upper_bound(units_.begin(), units_.end(), p,
                                     [](int64_t t, const Unit& u) { return t < u.start; });
    const int32_t ui = static_cast<int32_t>(it - units_.begin()) - 1;
    const Unit& u = units_[ui];
    const int64_t off = p - u.start;
    if (off < o_ + u.r) return {ui, 0};
    return {ui, static_cast<int32_t>(std::min<int64_t>(u.tiles - 1, (off - o_) / u.r))};
  }

  // The farthest a worker starting at x gets without costing more than m.
  Cut farthest(const Cut& x, int64_t m) const {
    return std::max(x, last_cut_at(cost_start(x) + m));
  }

  // Workers needed to finish the line from x when none may cost more than m (taking as much as fits
  // is optimal: a later cut never leaves more work behind); more than `limit` means "too many".
  int needed(Cut x, int64_t m, int limit) const {
    int n = 0;
    while (x != end() && n <= limit) {
      const Cut f = farthest(x, m);
      if (f == x) return limit + 1;
      x = f;
      ++n;
    }
    return n;
  }

 private:
  int64_t o_;
  int64_t total_ = 0;
  std::vector<Unit> units_;
};

// The least possible largest worker cost for the line: binary search on m, each m decided by
// filling workers as far as m allows. The rounding-down rule of the header comment reaches
// ceil(T/W) + tile + o, so the search starts there.
int64_t min_makespan(const Line& line, int W, int64_t tile, int64_t overhead) {
  const Cut start{0, 0};
  int64_t lo = (line.total() + W - 1) / W, hi = lo + tile + overhead;
  while (line.needed(start, hi, W) > W)
    hi *= 2;  // never taken; keeps the search total if the bound fails
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (line.needed(start, mid, W) <= W)
      hi = mid;
    else
      lo = mid + 1;
  }
  return hi;
}

// Splits the line across the workers within makespan m (feasible): worker by worker, the farthest
// cut within m, moved back to the start of its unit when the remaining workers can still finish
// within m: a split that the makespan does not need only adds a reduction.
Candidate split(const Line& line, int W, int64_t m) {
  Candidate c;
  c.total = line.total();
  c.cuts.assign(W + 1, line.end());
  c.cuts[0] = {0, 0};
  for (int w = 0; w + 1 < W; ++w) {
    Cut f = line.farthest(c.cuts[w], m);
    if (f.tile > 0) {
      const Cut unit_start{f.unit, 0};
      if (c.cuts[w] <= unit_start && line.needed(unit_start, m, W) <= W - w - 1) f = unit_start;
    }
    c.cuts[w + 1] = f;
  }

  std::vector<int32_t> last_inner(line.units().size(),
                                  0);  // last cut inside each unit (cuts are sorted)
  for (int w = 0; w < W; ++w) {
    const int64_t cost =
        c.cuts[w] == c.cuts[w + 1] ? 0 : line.pos(c.cuts[w + 1]) - line.cost_start(c.cuts[w]);
    c.makespan = std::max(c.makespan, cost);
    c.cost += cost;
    const Cut& a = c.cuts[w];
    if (w > 0 && a.tile > 0 && last_inner[a.unit] != a.tile) {
      c.partials += last_inner[a.unit] == 0 ? 2 : 1;
      last_inner[a.unit] = a.tile;
    }
  }
  c.units = line.units();
  return c;
}

// ceil(T / W) for `groups` head groups, without building the line.
int64_t lower_bound_makespan(const PlanInput& in, int groups, int64_t overhead) {
  const auto hg = head_groups(in.num_heads, in.min_heads_per_group, groups);
  int64_t total = 0;
  for (int b = 0; b < in.batch; ++b) {
    if (in.seq_lens[b] == 0) continue;
    const int64_t tiles = tiles_of(in, 0, in.seq_lens[b]);
    for (const auto& [hb, he] : hg)
      total += overhead + tiles * rows_cost(in, static_cast<int64_t>(q_len_of(in, b)) * (he - hb));
  }
  return (total + in.num_workers - 1) / in.num_workers;
}

}  // namespace

int64_t tile_cost(const PlanInput& in) {
  check_input(in);
  return tile_cost_checked(in);
}

int64_t piece_cost(const PlanInput& in, int seq, int heads, int kv_begin, int kv_end) {
  check_input(in);
  MLA_CHECK(seq >= 0 && seq < in.batch,
            "piece_cost: seq = " << seq << " is outside 0.." << in.batch - 1);
  return tiles_of(in, kv_begin, kv_end) *
             rows_cost(in, static_cast<int64_t>(q_len_of(in, seq)) * heads) +
         in.overhead_tiles * tile_cost_checked(in);
}

namespace {

// The first family (header comment, 1-3): the cost line cut into W stretches.
Plan line_plan(const PlanInput& in) {
  const int64_t tile = tile_cost_checked(in);
  const int64_t overhead = in.overhead_tiles * tile;
  const int max_groups = std::min(
      in.num_workers, (in.num_heads + in.min_heads_per_group - 1) / in.min_heads_per_group);
  // The makespan of every head-group count first (cheap), then the full split of those that reach
  // the least one, compared by partials and total cost.
  std::vector<int64_t> makespan(max_groups + 1, -1);
  int64_t least = 0;
  for (int g = 1; g <= max_groups; ++g) {
    // Skip a g whose total cannot beat the least makespan even split perfectly (more groups add
    // overhead, so with many sequences this skips every g > 1 cheaply).
    if (g > 1 && lower_bound_makespan(in, g, overhead) > least) continue;
    makespan[g] = min_makespan(Line(in, g, overhead), in.num_workers, tile, overhead);
    if (g == 1 || makespan[g] < least) least = makespan[g];
  }
  Candidate best;
  for (int g = 1; g <= max_groups; ++g) {
    if (makespan[g] != least) continue;
    Candidate c = split(Line(in, g, overhead), in.num_workers, least);
    if (best.cuts.empty() || std::tie(c.partials, c.cost) < std::tie(best.partials, best.cost))
      best = std::move(c);
  }

  Plan plan;
  plan.num_workers = in.num_workers;
  plan.worker_offsets.assign(in.num_workers + 1, 0);
  const int n = static_cast<int>(best.units.size());
  for (int w = 0; w < in.num_workers; ++w) {
    const Cut a = best.cuts[w], b = best.cuts[w + 1];
    for (int ui = a.unit; ui < n && (ui < b.unit || (ui == b.unit && b.tile > 0)); ++ui) {
      const Unit& u = best.units[ui];
      const int32_t t0 = ui == a.unit ? a.tile : 0;
      const int32_t t1 = ui == b.unit ? b.tile : u.tiles;
      if (t1 <= t0) continue;
      const int32_t len = in.seq_lens[u.seq];
      plan.items.push_back({.seq = u.seq,
                            .head_begin = u.head_begin,
                            .head_end = u.head_end,
                            .kv_begin = t0 * in.kv_tile,
                            .kv_end = t1 == u.tiles ? len : t1 * in.kv_tile,
                            .partial = -1});
    }
    plan.worker_offsets[w + 1] = static_cast<int32_t>(plan.items.size());
  }

  return plan;
}

// The second family of plans (header comment, 4): every sequence gets workers of its own; its heads
// are cut into groups of whole blocks, and group j's KV range into k_j pieces of ceil(tiles / k_j)
// tiles, one piece per worker.
struct SeqShape {
  int64_t tiles, q;
  bool operator==(const SeqShape&) const = default;
};

class Rects {
 public:
  Rects(const PlanInput& in, int64_t overhead) : in_(in), o_(overhead) {
    blocks_ = (in.num_heads + in.min_heads_per_group - 1) / in.min_heads_per_group;
    for (int b = 0; b < in.batch; ++b) {
      if (in.seq_lens[b] == 0) continue;
      const SeqShape sh{tiles_of(in, 0, in.seq_lens[b]), q_len_of(in, b)};
      if (std::find(shapes_.begin(), shapes_.end(), sh) == shapes_.end()) shapes_.push_back(sh);
      seq_shape_.push_back(
          {b, static_cast<int>(std::find(shapes_.begin(), shapes_.end(), sh) - shapes_.begin())});
    }
  }
  bool empty() const { return seq_shape_.empty(); }
  int sequences() const { return static_cast<int>(seq_shape_.size()); }

  // Blocks of heads one group split into k KV pieces can take within m: a piece costs o + its
  // tiles x max(q x heads, mem_bound_rows).
  int64_t capacity(const SeqShape& sh, int64_t k, int64_t m) const {
    const int64_t per_tile = (m - o_) / ((sh.tiles + k - 1) / k);
    if (m <= o_ || per_tile < in_.mem_bound_rows) return 0;
    const int64_t heads = per_tile / sh.q;
    return heads >= in_.num_heads ? blocks_ : heads / in_.min_heads_per_group;
  }

  // Least workers covering every block of a sequence of shape sh within m (unbounded knapsack over
  // the pieces per group k), and the k of each group; more than `limit` means "too many".
  int workers(const SeqShape& sh, int64_t m, int limit, std::vector<int>* groups) const {
    const int kmax = static_cast<int>(std::min<int64_t>(sh.tiles, limit));
    std::vector<int>& need = need_;
    std::vector<int>& pick = pick_;
    need.assign(blocks_ + 1, limit + 1);
    pick.assign(blocks_ + 1, 0);
    need[0] = 0;
    for (int k = 1; k <= kmax; ++k) {
      const int64_t c = capacity(sh, k, m);
      if (c == 0) continue;
      for (int b = 1; b <= blocks_; ++b) {
        const int from = static_cast<int>(std::max<int64_t>(0, b - c));
        if (need[from] + k < need[b]) need[b] = need[from] + k, pick[b] = k;
      }
    }
    if (groups && need[blocks_] <= limit) {
      groups->clear();
      for (int b = blocks_; b > 0;) {
        const int k = pick[b];
        groups->push_back(k);
        b = static_cast<int>(std::max<int64_t>(0, b - capacity(sh, k, m)));
      }
    }
    return need[blocks_];
  }

  bool feasible(int64_t m) const {
    std::vector<int>& per_shape = per_shape_;
    per_shape.resize(shapes_.size());
    for (size_t i = 0; i < shapes_.size(); ++i)
      per_shape[i] = workers(shapes_[i], m, in_.num_workers, nullptr);
    int64_t total = 0;
    for (const auto& [b, i] : seq_shape_)
      if ((total += per_shape[i]) > in_.num_workers) return false;
    return true;
  }

  // The plan at the least feasible makespan, if that is at most `at_most` (the other family's), or
  // an empty plan (then the other family is at least as good, and one check is all this costs).
  Plan plan(int64_t at_most) const {
    Plan p;
    if (empty() || sequences() > in_.num_workers || at_most <= o_) return p;
    // Every sequence pays o at least once and its tiles at least at its full rows: no makespan of
    // this family is below the mean of that.
    int64_t least = 0;
    for (const auto& [b, i] : seq_shape_)
      least += o_ + shapes_[i].tiles * rows_cost(in_, shapes_[i].q * in_.num_heads);
    int64_t lo = std::max(o_ + 1, (least + in_.num_workers - 1) / in_.num_workers);
    if (lo > at_most || !feasible(at_most)) return p;
    int64_t hi = at_most;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (feasible(mid))
        hi = mid;
      else
        lo = mid + 1;
    }
    p.num_workers = in_.num_workers;
    p.worker_offsets.assign(in_.num_workers + 1, 0);
    int w = 0;
    std::vector<int> groups;
    for (const auto& [b, i] : seq_shape_) {
      const SeqShape& sh = shapes_[i];
      workers(sh, hi, in_.num_workers, &groups);
      // The knapsack's groups in head order, each taking its capacity (the last what is left).
      int block = 0;
      for (int k : groups) {
        const int take = static_cast<int>(std::min<int64_t>(capacity(sh, k, hi), blocks_ - block));
        if (take <= 0) continue;
        const int hb = block * in_.min_heads_per_group;
        const int he = std::min(in_.num_heads, (block + take) * in_.min_heads_per_group);
        block += take;
        for (int j = 0; j < k; ++j) {
          const int64_t t0 = sh.tiles * j / k, t1 = sh.tiles * (j + 1) / k;
          p.items.push_back(
              {.seq = b,
               .head_begin = hb,
               .head_end = he,
               .kv_begin = static_cast<int32_t>(t0 * in_.kv_tile),
               .kv_end = t1 == sh.tiles ? in_.seq_lens[b] : static_cast<int32_t>(t1 * in_.kv_tile),
               .partial = -1});
          p.worker_offsets[++w] = static_cast<int32_t>(p.items.size());
        }
      }
    }
    for (int v = w + 1; v <= in_.num_workers; ++v) p.worker_offsets[v] = p.worker_offsets[w];
    return p;
  }

 private:
  const PlanInput& in_;
  int64_t o_;
  int blocks_;
  std::vector<SeqShape> shapes_;
  std::vector<std::pair<int, int>> seq_shape_;        // (seq, its shape)
  mutable std::vector<int> need_, pick_, per_shape_;  // scratch of workers() and feasible()
};

// Merge groups for the items of one (seq, head group) that split its KV range; items of one unit
// are consecutive in both families.
void add_merges(Plan& plan) {
  plan.merges.clear();
  plan.num_partials = 0;
  plan.item_merge.assign(plan.items.size(), -1);
  auto same_unit = [](const WorkItem& a, const WorkItem& b) {
    return a.seq == b.seq && a.head_begin == b.head_begin && a.head_end == b.head_end;
  };
  for (size_t i = 0; i < plan.items.size();) {
    size_t j = i + 1;
    while (j < plan.items.size() && same_unit(plan.items[j], plan.items[i])) ++j;
    if (j - i > 1) {
      const WorkItem& first = plan.items[i];
      const int32_t group = static_cast<int32_t>(plan.merges.size());
      plan.merges.push_back({.seq = first.seq,
                             .head_begin = first.head_begin,
                             .head_end = first.head_end,
                             .partial_begin = plan.num_partials,
                             .num_partials = static_cast<int32_t>(j - i)});
      for (size_t k = i; k < j; ++k) {
        plan.items[k].partial = plan.num_partials++;
        plan.item_merge[k] = group;
      }
    } else {
      plan.items[i].partial = -1;
    }
    i = j;
  }
}

// (largest worker cost, partials, sum of worker costs): the order plans are compared in.
std::tuple<int64_t, int64_t, int64_t> score(const PlanInput& in, const Plan& p) {
  const int64_t overhead = in.overhead_tiles * tile_cost_checked(in);
  int64_t largest = 0, total = 0;
  for (int w = 0; w < p.num_workers; ++w) {
    int64_t c = 0;
    for (int32_t i = p.worker_offsets[w]; i < p.worker_offsets[w + 1]; ++i) {
      const WorkItem& it = p.items[i];
      c += tiles_of(in, it.kv_begin, it.kv_end) *
               rows_cost(in, int64_t{q_len_of(in, it.seq)} * (it.head_end - it.head_begin)) +
           overhead;
    }
    largest = std::max(largest, c);
    total += c;
  }
  return {largest, p.num_partials, total};
}

std::atomic<uint64_t> g_plan_count{0};

}  // namespace

uint64_t plan_count() { return g_plan_count.load(std::memory_order_relaxed); }

PartialLayout layout_partials(const Plan& plan, const int32_t* q_lens, int q_len) {
  PartialLayout l;
  for (const MergeGroup& g : plan.merges) {
    const int32_t rows = (q_lens ? q_lens[g.seq] : q_len) * (g.head_end - g.head_begin);
    l.offset.push_back(l.total_rows);
    l.rows.push_back(rows);
    l.total_rows += static_cast<int64_t>(rows) * g.num_partials;
  }
  return l;
}

Plan make_plan(const PlanInput& in) {
  g_plan_count.fetch_add(1, std::memory_order_relaxed);
  check_input(in);
  Plan best = line_plan(in);
  add_merges(best);
  // The other family can only win by a lower makespan, or an equal one with fewer partials.
  const auto [line_makespan, line_partials, line_total] = score(in, best);
  Plan rects = Rects(in, in.overhead_tiles * tile_cost_checked(in))
                   .plan(line_partials == 0 ? line_makespan - 1 : line_makespan);
  if (!rects.worker_offsets.empty()) {
    add_merges(rects);
    if (score(in, rects) < score(in, best)) best = std::move(rects);
  }
  return best;
}

}  // namespace mla
