#!/usr/bin/env bash
# The main job: builds (installing what is missing), measures this machine's ceilings once, and
# prints the seed-grid benchmark report for the int8 path with its check column.
# Extra arguments go to `mla bench` (e.g. --kv-dtype bf16, --grid small).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/build.sh" "$root/build"
cd "$root/build"
if [ ! -s ceilings.json ]; then
  echo "measuring this machine's ceilings (once; saved to build/ceilings.json)" >&2
  ./roofline --out ceilings.json
fi
./mla bench --grid seed --kv-dtype int8 --ceilings ceilings.json "$@"
