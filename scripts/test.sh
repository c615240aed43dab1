#!/usr/bin/env bash
# Builds everything and runs the whole test suite (the README's test command; .ci/run calls it):
#   1. the release build's tests (CTest), with NumPy from the Python package's venv
#      (scripts/venv.sh) so the C++ .npy cross-check runs, the instruction-set check of its objects
#      (scripts/check_isa.sh), then the Python package's tests (pytest);
#   2. the C++ tests again with the library under AddressSanitizer + UndefinedBehaviorSanitizer
#      (every layer under src/ but the simulator: kernels of every ISA, parsers, cache, thread
#      pool, driver), the suite (CLI included; not the simulator's or the ceilings' tests) linked with
#      the sanitizer runtimes, with MLA_TEST_QUICK=1 so the long random sweeps run a smaller
#      sample. The tests, the program and the harness are built plain there (CMakeLists.txt says
#      why: instrumented, the tree took 8m43s of the 10 minutes), and the benchmarks are not built;
#   3. the libFuzzer targets (fuzz/), 5 s each from their corpus (scripts/fuzz.sh; longer runs:
#      scripts/fuzz.sh 600).
# ThreadSanitizer is scripts/tsan.sh (a third cold build does not fit CI's 10 minutes on 2 cores);
# MLA_TSAN=1 runs it here too. MLA_SKIP_SANITIZE=1 skips 2-3, MLA_SKIP_PYTHON=1 the Python parts.
#   scripts/test.sh --quick   the edit loop: step 1 only (release build, ctest, pytest), no sanitizer
#                             build, no fuzzing. Mutation testing is scripts/mutate.sh, on demand.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
case "${1:-}" in
  --quick) MLA_SKIP_SANITIZE=1 ;;
  "") ;;
  *) echo "usage: scripts/test.sh [--quick]" >&2; exit 2 ;;
esac
jobs=$(nproc)
# Elapsed time at each phase, for the CI budget (10 minutes in all on 2 cores).
phase() { echo "== [$((SECONDS / 60))m$((SECONDS % 60))s] $*" >&2; }
phase "release build"
bash "$root/scripts/build.sh" "$root/build"
if [ "${MLA_SKIP_PYTHON:-0}" != 1 ]; then
  phase "Python environment: .venv (pinned packages), pip install ."
  MLA_PYTHON=$(bash "$root/scripts/venv.sh")  # the C++ .npy test exchanges files with its NumPy
  export MLA_PYTHON
fi
phase "release tests (ctest)"
(cd "$root/build" && ctest --output-on-failure -j"$jobs")
# The library runs on a CPU without AVX-512: no EVEX code outside the *_avx512*.cc objects.
bash "$root/scripts/check_isa.sh" "$root/build"
if [ "${MLA_SKIP_PYTHON:-0}" != 1 ]; then
  phase "Python package tests (tests/python)"
  MLA_CLI="$root/build/mla" "$MLA_PYTHON" -m pytest -q -p no:cacheprovider "$root/tests/python"
fi
if [ "${MLA_SKIP_SANITIZE:-0}" != 1 ]; then
  phase "sanitizer build (address, undefined): the library instrumented, the tests and the program linked with it"
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DMLA_SANITIZE=ON \
    -DMLA_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
  # One build of every target (benchmarks off), not a list of --target goals: make runs goals
  # one after another, and a test target is a single file, so a list left one core idle.
  cmake --build "$root/build-asan" -j"$jobs"
  phase "sanitized tests (ctest, MLA_TEST_QUICK=1)"
  (cd "$root/build-asan" && MLA_TEST_QUICK=1 ctest --output-on-failure -j"$jobs")
  if [ "${MLA_TSAN:-0}" = 1 ]; then
    bash "$root/scripts/tsan.sh"
  fi
  phase "fuzz targets"
  bash "$root/scripts/fuzz.sh" "${MLA_FUZZ_SECONDS:-5}"
fi
phase "done"
