// The discrete-event engine of the pipeline simulator (DESIGN §8), independent of what the tasks
// mean. A schedule is a set of tasks, each of a fixed duration, run by resources (a core's matrix
// unit, a vector unit, a load or store engine). Every resource runs its tasks in its program order,
// one at a time, like the in-order instruction queues of an accelerator core; a task starts when
// its resource has finished the previous task of its queue and every task it depends on has
// finished, plus that dependency's latency (a cross-core flag's sync latency). Events (a task
// finishes, a latency expires) are processed in time order.
//
// With fixed queues the start times are max-plus functions of the durations and latencies, so a
// longer task or a larger latency never makes any task start earlier, and removing a dependency
// never makes one start later (tests/test_sim.cc checks both on random schedules).
//
// One exception to fixed queues, for the last-worker reduction: a floating task has no resource
// of its own; when its last dependency finishes, it goes to the front of the queue of the resource
// `float_resources[core of that dependency]`, i.e. the core that finished last does the work.
#pragma once

#include <cstdint>
#include <vector>

namespace mla::sim {

struct Dep {
  int32_t task;
  double latency_us = 0;  // the dependent may start this long after `task` finishes
};

struct EngineTask {
  int32_t resource = -1;  // -1: floating
  double duration_us = 0;
  std::vector<Dep> deps;
  std::vector<int32_t> float_resources;  // floating: [core] -> resource
};

struct Schedule {
  std::vector<int32_t> core_of_resource;  // [resources]
  std::vector<EngineTask> tasks;
  std::vector<std::vector<int32_t>> queues;  // [resources]: fixed tasks in program order
};

struct Timeline {
  std::vector<double> start_us, end_us;  // [tasks]
  std::vector<int32_t> resource;         // [tasks]: where each ran (floating ones included)
  std::vector<double> busy_us;           // [resources]
  double makespan_us = 0;
};

// Runs the schedule. Throws mla::Error when tasks remain that can never start (a cycle of
// dependencies and program orders: e.g. too few buffers for the pipeline's look-ahead), naming
// the first such task.
Timeline simulate(const Schedule& s);

}  // namespace mla::sim
