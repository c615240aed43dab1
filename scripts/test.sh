#!/usr/bin/env bash
# Builds everything and runs the whole test suite (the README's test command; .ci/run calls it):
# the release build's tests, the instruction-set check of its objects (scripts/check_isa.sh), the
# Python package's tests (scripts/venv.sh, pytest), then the reference, cache, kernel, layer and
# safetensors tests again under AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
bash "$root/scripts/build.sh" "$root/build"
if [ "${MLA_SKIP_PYTHON:-0}" != 1 ]; then
  echo "== Python environment: .venv (pinned packages), pip install ." >&2
  MLA_PYTHON=$(bash "$root/scripts/venv.sh")  # the C++ .npy test exchanges files with its NumPy
  export MLA_PYTHON
fi
(cd "$root/build" && ctest --output-on-failure -j"$jobs")
# The library runs on a CPU without AVX-512: no EVEX code outside the *_avx512*.cc objects.
bash "$root/scripts/check_isa.sh" "$root/build"
if [ "${MLA_SKIP_PYTHON:-0}" != 1 ]; then
  echo "== Python package tests (tests/python)" >&2
  MLA_CLI="$root/build/mla" "$MLA_PYTHON" -m pytest -q -p no:cacheprovider "$root/tests/python"
fi
if [ "${MLA_SKIP_SANITIZE:-0}" != 1 ]; then
  echo "== sanitizer build (address, undefined): reference, cache, plan, combine, decode plan, layout, stage, kernel, layer and safetensors tests" >&2
  cmake -S "$root" -B "$root/build-asan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLA_SANITIZE=ON \
    -DMLA_BUILD_BENCH=OFF >/dev/null
  cmake --build "$root/build-asan" -j"$jobs" --target test_reference test_cache test_decode \
    test_plan test_combine test_npy test_decode_plan test_decode_layout test_stages test_layer \
    test_safetensors
  (cd "$root/build-asan" && ctest --output-on-failure -j"$jobs" \
    -R '^(Reference|Validate|Cache|Int8Cache|BlockAllocator|Registry|Decode|Plan|Combine|Npy|Stages|Layer|ModelConfig|Linear|Safetensors)')
fi
