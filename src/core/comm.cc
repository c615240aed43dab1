// SingleProcessComm (mla/comm.h): the group of one process, so the library runs a layer without MPI.
#include "mla/comm.h"

#include <cstdio>
#include <cstdlib>

namespace mla {

void SingleProcessComm::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}

}  // namespace mla
