// The MPI communicator (src/mpi/, the mla_mpi library, built only where CMake finds MPI): one
// rank per process of MPI_COMM_WORLD, the all-reduce is MPI_Allreduce(MPI_FLOAT, MPI_SUM) and
// abort is MPI_Abort. Not part of libmla: a program that runs under mpirun links mla_mpi (and MPI)
// itself; the header has no <mpi.h>, so code that includes it builds without MPI's headers.
#pragma once

#include <memory>

#include "mla/comm.h"

namespace mla {

// MPI_Init (once per process) and the communicator of MPI_COMM_WORLD; MPI_Finalize runs when the
// last one returned is destroyed. Errors in MPI calls abort every rank (MPI_ERRORS_ARE_FATAL).
std::unique_ptr<Communicator> mpi_world_comm(int* argc, char*** argv);

}  // namespace mla
