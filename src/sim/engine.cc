// The event loop (see engine.h).
#include "sim/engine.h"

#include <algorithm>
#include <cmath>
#include <queue>

#include "mla/status.h"

namespace mla::sim {

namespace {

struct Event {
  double time;
  int64_t seq;  // ties: the order the events were made, so a run is deterministic
  bool finish;  // true: task `id` finishes; false: resource `id` may be able to start its next task
  int32_t id;
  bool operator>(const Event& o) const { return time != o.time ? time > o.time : seq > o.seq; }
};

}  // namespace

Timeline simulate(const Schedule& s) {
  const int32_t nt = int32_t(s.tasks.size());
  const int32_t nr = int32_t(s.queues.size());
  MLA_CHECK(s.core_of_resource.size() == s.queues.size(),
            "simulate: " << s.core_of_resource.size() << " resource cores for " << nr << " queues");
  std::vector<std::vector<int32_t>> queues = s.queues;
  std::vector<std::vector<Dep>> dependents(nt);
  std::vector<int32_t> deps_left(nt);
  std::vector<double> ready(nt, 0.0);
  Timeline tl;
  tl.start_us.assign(nt, -1);
  tl.end_us.assign(nt, -1);
  tl.resource.assign(nt, -1);
  tl.busy_us.assign(nr, 0.0);
  for (int32_t t = 0; t < nt; ++t) {
    const EngineTask& task = s.tasks[t];
    MLA_CHECK(task.duration_us >= 0 && std::isfinite(task.duration_us),
              "simulate: task " << t << " has duration " << task.duration_us);
    MLA_CHECK(task.resource >= -1 && task.resource < nr,
              "simulate: task " << t << " on resource " << task.resource);
    tl.resource[t] = task.resource;
    deps_left[t] = int32_t(task.deps.size());
    for (const Dep& d : task.deps) {
      MLA_CHECK(d.task >= 0 && d.task < nt && d.task != t && d.latency_us >= 0,
                "simulate: task " << t << " has a bad dependency on " << d.task);
      dependents[d.task].push_back({t, d.latency_us});
    }
  }
  std::vector<size_t> pos(nr, 0);
  std::vector<bool> busy(nr, false);
  std::priority_queue<Event, std::vector<Event>, std::greater<Event>> events;
  int64_t seq = 0;
  int32_t done = 0;

  auto try_start = [&](int32_t r, double now) {
    if (busy[r] || pos[r] >= queues[r].size()) return;
    const int32_t t = queues[r][pos[r]];
    if (deps_left[t] > 0) return;  // the last dependency's finish calls again
    if (ready[t] > now) {
      events.push({ready[t], seq++, false, r});
      return;
    }
    ++pos[r];
    busy[r] = true;
    tl.start_us[t] = now;
    tl.end_us[t] = now + s.tasks[t].duration_us;
    tl.busy_us[r] += s.tasks[t].duration_us;
    events.push({tl.end_us[t], seq++, true, t});
  };

  for (int32_t r = 0; r < nr; ++r) try_start(r, 0.0);
  while (!events.empty()) {
    const Event e = events.top();
    events.pop();
    if (!e.finish) {
      try_start(e.id, e.time);
      continue;
    }
    const int32_t t = e.id;
    const int32_t r = tl.resource[t];
    busy[r] = false;
    ++done;
    for (const Dep& d : dependents[t]) {
      ready[d.task] = std::max(ready[d.task], e.time + d.latency_us);
      if (--deps_left[d.task] > 0) continue;
      const EngineTask& dt = s.tasks[d.task];
      int32_t target = dt.resource;
      if (target < 0) {  // floating: to the front of the queue of the core that finished last
        const int32_t core = s.core_of_resource[r];
        MLA_CHECK(core >= 0 && core < int32_t(dt.float_resources.size()),
                  "simulate: floating task " << d.task << " has no resource on core " << core);
        target = dt.float_resources[core];
        tl.resource[d.task] = target;
        queues[target].insert(queues[target].begin() + ptrdiff_t(pos[target]), d.task);
      }
      try_start(target, e.time);
    }
    try_start(r, e.time);
  }
  if (done != nt) {
    int32_t stuck = 0;
    while (stuck < nt && tl.end_us[stuck] >= 0) ++stuck;
    MLA_FAIL("simulate: deadlock: " << nt - done << " of " << nt
                                    << " tasks can never start (first: task " << stuck
                                    << "); too few buffers for the look-ahead?");
  }
  for (int32_t t = 0; t < nt; ++t) tl.makespan_us = std::max(tl.makespan_us, tl.end_us[t]);
  return tl;
}

}  // namespace mla::sim
