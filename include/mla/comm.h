// The communicator of a tensor-parallel group (issue 24): the layer splits its heads over the
// ranks and sums the o_proj partial outputs with one all-reduce per step. An interface, so the
// library needs no MPI: SingleProcessComm is the group of one process (nothing to reduce), and
// the MPI implementation (src/mpi/, built when CMake finds MPI; mla_mpi.h) is a separate library
// that a program links when it runs under mpirun.
//
//   rank r of size p owns heads [r * H/p, (r + 1) * H/p)
//   out [n, hidden_size] = sum over ranks of o_proj(columns of the rank's heads) . o_rank
//
// The head-free down-projections (q_a_proj, kv_a_proj_with_mqa) are split by output rows instead,
// and one all-gather per step assembles each token's whole c_q and kv before their RMSNorms.
#pragma once

#include <cstdint>

#include "mla/export.h"

namespace mla {

class MLA_API Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // x [n] <- the elementwise sum of every rank's x [n]; fp32 on the wire, so the sum differs from
  // a single process's only by the order of the additions. Collective: every rank calls it.
  virtual void allreduce_sum(float* x, int64_t n) = 0;
  // all [sum of counts] <- every rank's x [counts[rank]], in rank order (rank 0's first); counts
  // [size()] is the same on every rank. fp32 on the wire (a copy: exact). Collective.
  virtual void allgather(const float* x, float* all, const int64_t* counts) = 0;
  // bytes of x on rank `root` copied to every rank's x. Collective.
  virtual void broadcast(void* x, int64_t bytes, int root) = 0;
  // Ends every rank of the group with `code` (after the caller printed its error): a rank that
  // fails must not leave the others waiting in a collective.
  [[noreturn]] virtual void abort(int code) = 0;
};

// The group of one process: rank 0 of 1, the all-reduce and broadcast leave x as it is, the
// all-gather copies x. (The layer calls none of them in one process.)
class MLA_API SingleProcessComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  void allreduce_sum(float*, int64_t) override {}
  void allgather(const float* x, float* all, const int64_t* counts) override;
  void broadcast(void*, int64_t, int) override {}
  [[noreturn]] void abort(int code) override;
};

}  // namespace mla
