// The tensor-parallel group of `mla layer --tp N` and `mla demo --tp N` (issue 24): the processes
// mpirun started, one rank each. Built with MPI where CMake found it (MLA_HAVE_MPI); elsewhere
// --tp above 1 is refused. A rank that fails aborts the whole group (main.cc), so no rank waits
// forever in the all-reduce of one that is gone.
#include <sched.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "mla/commands.h"
#include "mla/status.h"
#if MLA_HAVE_MPI
#include "mla/mla_mpi.h"
#endif

namespace mla::tool {
namespace {

std::unique_ptr<Communicator> g_group;

#if MLA_HAVE_MPI
// Each rank's thread pool pins its workers to the CPUs the rank may run on (mpirun's --bind-to),
// so ranks that share CPUs put two workers on one CPU. Counted over the group (one all-reduce at
// start); rank 0 says so, once.
void warn_if_ranks_share_cpus(Communicator& g) {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return;
  std::vector<float> users(CPU_SETSIZE, 0.f);
  for (int c = 0; c < CPU_SETSIZE; ++c) users[c] = CPU_ISSET(c, &set) ? 1.f : 0.f;
  g.allreduce_sum(users.data(), CPU_SETSIZE);
  int shared = 0;
  for (float u : users) shared += u > 1.f;
  if (g.rank() == 0 && shared > 0)
    std::fprintf(stderr,
                 "mla: note: the %d ranks share %d CPU(s) (rank 0 runs on %s); bind one rank per "
                 "NUMA node or core (mpirun --map-by numa --bind-to numa, or --bind-to core) so "
                 "their threads do not compete\n",
                 g.size(), shared, affinity_string().c_str());
}
#endif

}  // namespace

Communicator* open_tp_group(int tp) {
  MLA_CHECK(tp >= 1, "--tp " << tp << " must be at least 1");
  if (tp == 1) {
    g_group = std::make_unique<SingleProcessComm>();
    return g_group.get();
  }
#if MLA_HAVE_MPI
  g_group = mpi_world_comm(nullptr, nullptr);
  MLA_CHECK(g_group->size() == tp, "--tp " << tp << " but mpirun started " << g_group->size()
                                           << " process(es): launch with mpirun -np " << tp);
  warn_if_ranks_share_cpus(*g_group);
  return g_group.get();
#else
  MLA_FAIL("--tp " << tp
                   << " needs MPI, and this mla was built without it (install Open MPI: "
                      "scripts/deps.sh, and rebuild)");
#endif
}

Communicator* tp_group() { return g_group.get(); }

void close_tp_group() { g_group.reset(); }

std::string affinity_string() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return "?";
  std::string s;
  for (int c = 0; c < CPU_SETSIZE; ++c) {
    if (!CPU_ISSET(c, &set)) continue;
    int e = c;
    while (e + 1 < CPU_SETSIZE && CPU_ISSET(e + 1, &set)) ++e;
    s += (s.empty() ? "" : ",") + std::to_string(c) + (e > c ? "-" + std::to_string(e) : "");
    c = e;
  }
  return s;
}

}  // namespace mla::tool
