#!/usr/bin/env bash
# Each layer compiles with the public headers and the folders of itself and the layers below it
# only (CMakeLists.txt's mla_layer: build/layer_include/<layer>/). This compiles one-line files
# with a layer's include flags: a header of a layer below must be found, one of a layer above
# must not (the include that would make a kernel depend on the driver fails to compile).
#   check_layer_includes.sh CXX SOURCE_DIR BUILD_DIR
set -euo pipefail
cxx=$1 src=$2 build=$3
try() {  # try LAYER HEADER: does `#include "HEADER"` compile with LAYER's include flags?
  echo "#include \"$2\"" | "$cxx" -std=c++20 -fsyntax-only -x c++ -I"$src/include" \
    -I"$build/layer_include/$1" - 2> /dev/null
}
expect() {  # expect found|missing LAYER HEADER
  if try "$2" "$3"; then got=found; else got=missing; fi
  [ "$got" = "$1" ] || { echo "FAIL: $3 is $got for $2, expected $1" >&2; exit 1; }
  echo "ok: $3 $got for $2"
}
expect found mla_kernels cpu/attention/isa.h   # its own folder
expect found mla_kernels core/stages.h         # mla_core, below
expect missing mla_kernels cpu/thread_pool.h   # mla_cpu, above
expect missing mla_kernels ref/reference.h     # mla_ref, beside
expect found mla_cpu cpu/attention/kernel.h    # mla_kernels, below
expect missing mla_core cpu/attention/isa.h
expect found mla_ops ref/reference.h
expect missing mla_sim cpu/thread_pool.h       # the simulator is on the plan and cache layers
echo "check_layer_includes: ok"
