#!/usr/bin/env bash
# Builds everything and runs the whole test suite (the README's test command; .ci/run calls it):
# the release build's tests, the instruction-set check of its objects (scripts/check_isa.sh), then
# the reference, cache and kernel tests again under
# AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
bash "$root/scripts/build.sh" "$root/build"
(cd "$root/build" && ctest --output-on-failure -j"$jobs")
# The library runs on a CPU without AVX-512: no EVEX code outside the *_avx512*.cc objects.
bash "$root/scripts/check_isa.sh" "$root/build"
if [ "${MLA_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== sanitizer build (address, undefined): reference, cache, plan, combine, decode plan, layout, stage and kernel tests" >&2
  cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLA_SANITIZE=ON \
    -DMLA_BUILD_BENCH=OFF >/dev/null
  cmake --build "$root/build-asan" -j"$jobs" --target test_reference test_cache test_decode \
    test_plan test_combine test_npy test_decode_plan test_decode_layout test_stages
  (cd "$root/build-asan" && ctest --output-on-failure -j"$jobs" \
    -R '^(Reference|Validate|Cache|Int8Cache|BlockAllocator|Registry|Decode|Plan|Combine|Npy|Stages)')
fi
