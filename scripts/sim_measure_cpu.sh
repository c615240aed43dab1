#!/usr/bin/env bash
# Measurements behind profiles/cpu.json and the CPU check of docs/SIM.md (see docs/SIM.md, "The cpu
# profile"). Two sets, both with `mla bench` (the CPU kernels as the library runs them):
#   fit_*   one thread, b 1 and 4, k 512/2048/4096, 64 and 128 heads (128 / 256 query rows), chunk
#           1/2/4, accumulator spilled and resident: scripts/sim_fit_cpu.py fits the profile's
#           rates and overheads to these;
#   grid_*  the seed grid at 1 and 2 threads, old:new, int8 and bf16: what `mla sim --profile cpu
#           --grid seed` must predict within 15% (never used by the fit).
# Usage: RUN=run2 scripts/sim_measure_cpu.sh [fit|grid|all]   (JSON into docs/sim/measure/$RUN/)
# On a busy machine, run it several times (RUN=run1, run2, ...): the fit and the comparison take,
# per row, the fastest repetition over all runs (scripts/sim_fit_cpu.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/docs/sim/measure/${RUN:-run1}"
what=${1:-all}
mkdir -p "$out"
cat /proc/loadavg > "$out/loadavg_start_$what.txt"
mla="$root/build/mla"
common=(--ceilings "$root/docs/perf/ceilings.json" --no-baseline --no-check)
if [[ $what == fit || $what == all ]]; then
  for kv in int8 bf16; do
    for heads in 128 64; do
      for chunk in 1 2 4; do
        "$mla" bench --b 1,4 --k 512,2048,4096 --threads 1 --heads "$heads" --q-len 2 \
          --kv-dtype "$kv" --variants "chunk=$chunk,up=spill:chunk=$chunk,up=resident" \
          --time 0.1 "${common[@]}" --json "$out/fit_${kv}_h${heads}_c${chunk}.json" >/dev/null
      done
    done
  done
fi
if [[ $what == grid || $what == all ]]; then
  for kv in int8 bf16; do
    for c in 1 2; do
      "$mla" bench --grid seed --threads "$c" --kv-dtype "$kv" --variants old:new \
        "${common[@]}" --json "$out/grid_${kv}_c${c}.json" | tee "$out/grid_${kv}_c${c}.txt"
    done
  done
fi
# Load of the machine while the measurements ran (other processes share the cores).
cat /proc/loadavg > "$out/loadavg_end_$what.txt"
