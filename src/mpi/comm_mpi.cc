// The MPI communicator (mla/mla_mpi.h) over MPI_COMM_WORLD. Its own library (mla_mpi), built only
// where CMake finds MPI, so libmla and everything else build and run without it.
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <vector>

#include "mla/mla_mpi.h"
#include "mla/status.h"

namespace mla {
namespace {

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  void allreduce_sum(float* x, int64_t n) override {
    // MPI counts are int: a larger vector goes in pieces (a step's is n_tokens x hidden_size).
    for (int64_t i = 0; i < n; i += INT_MAX) {
      const int c = int(std::min<int64_t>(INT_MAX, n - i));
      MPI_Allreduce(MPI_IN_PLACE, x + i, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    }
  }
  void allgather(const float* x, float* all, const int64_t* counts) override {
    // MPI_Allgatherv's counts and displacements are int: a step's gather is n_tokens x 2112 floats.
    std::vector<int> c(size_), d(size_);
    int64_t off = 0;
    for (int r = 0; r < size_; ++r) {
      c[r] = int(counts[r]);
      d[r] = int(off);
      off += counts[r];
    }
    MLA_CHECK(off <= INT_MAX, "all-gather of " << off << " floats exceeds MPI's int count");
    MPI_Allgatherv(x, c[rank_], MPI_FLOAT, all, c.data(), d.data(), MPI_FLOAT, MPI_COMM_WORLD);
  }
  void broadcast(void* x, int64_t bytes, int root) override {
    MLA_CHECK(bytes <= INT_MAX, "broadcast of " << bytes << " bytes exceeds MPI's int count");
    MPI_Bcast(x, int(bytes), MPI_BYTE, root, MPI_COMM_WORLD);
  }
  [[noreturn]] void abort(int code) override {
    std::fflush(stdout);
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; in case an implementation does
  }

 private:
  int rank_ = 0, size_ = 1;
};

}  // namespace

std::unique_ptr<Communicator> mpi_world_comm(int* argc, char*** argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) MPI_Init(argc, argv);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_ARE_FATAL);
  return std::make_unique<MpiComm>();
}

}  // namespace mla
