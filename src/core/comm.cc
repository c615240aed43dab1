// SingleProcessComm (mla/comm.h): the group of one process, so the library runs a layer without MPI.
#include <cstdio>
#include <cstdlib>

#include "mla/comm.h"

namespace mla {

void SingleProcessComm::abort(int code) {
  std::fflush(stdout);
  std::fflush(stderr);
  std::exit(code);
}

}  // namespace mla
