#!/usr/bin/env bash
# Measurements behind a CPU simulator profile (profiles/cpu.json: the vector kernels; profiles/amx.json:
# the AMX kernels) and the CPU check of docs/SIM.md (see docs/SIM.md, "The cpu and amx profiles").
# Two sets, both with `mla bench` (the CPU kernels as the library runs them), under
# ../shared/tools/quiet when it exists (one command at a time, so a long measurement does not hold the
# machine's lock for its whole length):
#   fit_*   one thread, b 1 and 4, k 512/2048/4096, 64 and 128 heads (128 / 256 query rows), chunk
#           1/2/4, accumulator spilled and resident: scripts/sim_fit_cpu.py fits the profile's
#           rates and overheads to these;
#   grid_*  the seed grid at 1 and 2 threads, old:new, int8 and bf16: what `mla sim --profile cpu
#           --grid seed` must predict within 15% (never used by the fit);
#   chunk_* 2 threads, b 1 and 8, k 512/2048/4096, chunk 1/2/4 with the accumulator resident: which
#           chunk wins (the amx profile's target; never used by the fit).
# Usage: ISA=avx512|amx RUN=run2 scripts/sim_measure_cpu.sh [fit|grid|chunk|all]
#        (JSON into docs/sim/measure/$MACHINE-$ISA/$RUN/; MACHINE defaults to "xeon-amx")
# On a busy machine, run it several times (RUN=run1, run2, ...): the fit and the comparison take,
# per row, the fastest repetition over all runs (scripts/sim_fit_cpu.py).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
isa=${ISA:-avx512}
out="$root/docs/sim/measure/${MACHINE:-xeon-amx}-$isa/${RUN:-run1}"
what=${1:-all}
mkdir -p "$out"
quiet=()
[ -x "$root/../shared/tools/quiet" ] && quiet=("$root/../shared/tools/quiet")
cat /proc/loadavg > "$out/loadavg_start_$what.txt"
grep -o -w 'amx_[a-z0-9]*\|avx512[a-z_0-9]*\|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ' > "$out/cpu_flags.txt"
mla=${MLA_BIN:-$root/build/mla}
common=(--isa "$isa" --ceilings "${CEILINGS:-$root/docs/perf/amx/ceilings.json}" --no-baseline --no-check)
if [[ $what == fit || $what == all ]]; then
  for kv in int8 bf16; do
    for heads in 128 64; do
      for chunk in 1 2 4; do
        "${quiet[@]}" "$mla" bench --b 1,4 --k 512,2048,4096 --threads 1 --heads "$heads" --q-len 2 \
          --kv-dtype "$kv" --variants "chunk=$chunk,up=spill:chunk=$chunk,up=resident" \
          --time 0.1 "${common[@]}" --json "$out/fit_${kv}_h${heads}_c${chunk}.json" >/dev/null
      done
    done
  done
fi
if [[ $what == grid || $what == all ]]; then
  for kv in int8 bf16; do
    for c in 1 2; do
      "${quiet[@]}" "$mla" bench --grid seed --threads "$c" --kv-dtype "$kv" --variants old:new \
        "${common[@]}" --json "$out/grid_${kv}_c${c}.json" > "$out/grid_${kv}_c${c}.txt"
    done
  done
fi
if [[ $what == chunk || $what == all ]]; then
  for kv in int8 bf16; do
    for pair in 1:2 2:4; do
      "${quiet[@]}" "$mla" bench --b 1,8 --k 512,2048,4096 --threads 2 --heads 128 --q-len 2 \
        --kv-dtype "$kv" --variants "chunk=${pair%:*},up=resident:chunk=${pair#*:},up=resident" \
        "${common[@]}" --json "$out/chunk_${kv}_${pair/:/v}.json" > "$out/chunk_${kv}_${pair/:/v}.txt"
    done
  done
fi
# Load of the machine while the measurements ran (other processes share the cores).
cat /proc/loadavg > "$out/loadavg_end_$what.txt"
