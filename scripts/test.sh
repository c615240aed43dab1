#!/usr/bin/env bash
# Builds everything and runs the whole test suite (the README's test command; .ci/run calls it):
#   1. the release build's tests (CTest), with numpy from the project's venv (scripts/venv.sh) so
#      the .npy cross-check runs;
#   2. the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer (the CLI, the
#      thread pool and the AVX-512 kernels included), with MLA_TEST_QUICK=1 so the long random
#      sweeps run a smaller sample;
#   3. ThreadSanitizer over the decode and thread-pool tests (scripts/tsan.sh);
#   4. the libFuzzer targets (fuzz/), 10 s each from their corpus (scripts/fuzz.sh; longer runs:
#      scripts/fuzz.sh 600).
# MLA_SKIP_SANITIZE=1 skips 2-4; MLA_SKIP_TSAN=1 skips 3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
MLA_PYTHON=$(bash "$root/scripts/venv.sh")
export MLA_PYTHON
bash "$root/scripts/build.sh" "$root/build"
(cd "$root/build" && ctest --output-on-failure -j"$jobs")
if [ "${MLA_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== sanitizer build (address, undefined): the whole suite" >&2
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLA_SANITIZE=ON \
    -DMLA_BUILD_BENCH=OFF "${launcher[@]}" >/dev/null
  cmake --build "$root/build-asan" -j"$jobs"
  # CeilingsMeasure.Fallbacks compares measured L2 and memory bandwidths, which ASan's checked
  # loads distort (L2 came out below memory); every other test runs.
  (cd "$root/build-asan" && MLA_TEST_QUICK=1 ctest --output-on-failure -j"$jobs" \
    -E '^CeilingsMeasure\.Fallbacks$')
  if [ "${MLA_SKIP_TSAN:-0}" != 1 ]; then
    bash "$root/scripts/tsan.sh"
  fi
  bash "$root/scripts/fuzz.sh" "${MLA_FUZZ_SECONDS:-10}"
fi
