#!/usr/bin/env bash
# Builds everything and runs the whole test suite (the README's test command; .ci/run calls it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/build.sh" "$root/build"
cd "$root/build"
ctest --output-on-failure -j"$(nproc)"
