#!/usr/bin/env bash
# Regenerates the simulator's figures and tables of docs/SIM.md into docs/sim/ (timelines as SVG,
# tables as text and JSON). Needs build/mla (bash scripts/build.sh). The CPU comparison with measured
# times is scripts/sim_fit_cpu.py check (measurements: scripts/sim_measure_cpu.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=docs/sim
mkdir -p "$out"
mla=build/mla
run() {  # run NAME ARGS...: the command line and its output into docs/sim/NAME.txt
  local name=$1; shift
  { echo "\$ mla sim $*"; "$mla" sim "$@"; } > "$out/$name.txt"
}
a=(--profile ascend-910b)
# The seed's table, int8 (its V0 / V11 columns) and bf16.
run grid_ascend_int8 "${a[@]}" --grid seed --json "$out/grid_ascend_int8.json"
run grid_ascend_bf16 "${a[@]}" --grid seed --kv-dtype bf16 --json "$out/grid_ascend_bf16.json"
# The seed's two chunk rows: chunk 1 against 2 (and 4) with the original UP and reduction, as the
# seed's section (I) compares them; then every variant.
run ascend_chunk_b1_k2048 "${a[@]}" --b 1 --k 2048 --c 24 --up spill --reduction separate
run ascend_chunk_b1_k4096 "${a[@]}" --b 1 --k 4096 --c 24 --up spill --reduction separate
# The same with the old, merged reading of a chunk (one QK / SM / PV over all its tokens).
run ascend_chunk_merged_b1_k2048 "${a[@]}" --b 1 --k 2048 --c 24 --up spill --reduction separate --reading merged
run ascend_chunk_merged_b1_k4096 "${a[@]}" --b 1 --k 4096 --c 24 --up spill --reduction separate --reading merged
# The work splits at b1_k2048 (steps per core, predicted times).
for s in tp1 none round=512 pieces=4; do
  run "ascend_split_${s/=/}_b1_k2048" "${a[@]}" --b 1 --k 2048 --c 24 --chunk 1,2 --up resident --reduction inkernel --split "$s"
done
run ascend_b1_k2048 "${a[@]}" --b 1 --k 2048 --c 24 --json "$out/ascend_b1_k2048.json"
run ascend_b1_k4096 "${a[@]}" --b 1 --k 4096 --c 24 --json "$out/ascend_b1_k4096.json"
# Timelines: chunk 1 vs 2, resident vs spilled UP, the long-softmax bubble, the two reductions.
run tl_chunk1 "${a[@]}" --b 1 --k 4096 --c 24 --chunk 1 --up resident --reduction last --svg "$out/ascend_b1_k4096_chunk1.svg"
run tl_chunk2 "${a[@]}" --b 1 --k 4096 --c 24 --chunk 2 --up resident --reduction last --svg "$out/ascend_b1_k4096_chunk2.svg"
run tl_spill "${a[@]}" --b 1 --k 4096 --c 24 --chunk 2 --up spill --reduction last --svg "$out/ascend_b1_k4096_chunk2_spill.svg"
run tl_sm1 "${a[@]}" --b 8 --k 512 --c 24 --chunk 2 --up resident --reduction last --svg "$out/ascend_b8_k512_chunk2.svg"
run tl_sm2 "${a[@]}" --b 8 --k 512 --c 24 --chunk 2 --up resident --reduction last --sm-scale 2 --svg "$out/ascend_b8_k512_chunk2_sm2.svg"
run tl_separate "${a[@]}" --b 1 --k 2048 --c 24 --chunk 2 --up resident --reduction separate --svg "$out/ascend_b1_k2048_separate.svg"
run tl_last "${a[@]}" --b 1 --k 2048 --c 24 --chunk 2 --up resident --reduction last --svg "$out/ascend_b1_k2048_last.svg"
run tl_inkernel "${a[@]}" --b 1 --k 2048 --c 24 --chunk 2 --up resident --reduction inkernel --svg "$out/ascend_b1_k2048_inkernel.svg"
run tl_cpu --profile cpu --b 1 --k 2048 --c 1 --chunk 1 --up resident --reduction last --svg "$out/cpu_b1_k2048_c1_chunk1.svg"
# Which parameter flips which rows (docs/SIM.md's sensitivity table).
python3 scripts/sim_sensitivity.py --mla "$mla" --out "$out/sensitivity.md" > /dev/null
# The AMX kernel's chunk 1/2/4 predictions (amx profile) at the shapes its target names.
for kv in int8 bf16; do
  for b in 1 8; do
    for k in 512 2048 4096; do
      run "amx_${kv}_b${b}_k$k" --profile amx --b "$b" --k "$k" --c 2 --kv-dtype "$kv" --up resident --reduction last
    done
  done
done
# The CPU predictions of the seed grid.
for kv in int8 bf16; do
  for c in 1 2; do
    run "grid_cpu_${kv}_c$c" --profile cpu --grid seed --c "$c" --kv-dtype "$kv" --chunk 4 --json "$out/grid_cpu_${kv}_c$c.json"
  done
done
# The seed's two-stage QK sync against one sync after QK (a profile file: --profile FILE).
for k in 512 2048 4096; do
  run "qk_sync_two_k$k" "${a[@]}" --b 8 --k "$k" --c 24 --chunk 2 --up resident --reduction last
  run "qk_sync_one_k$k" --profile docs/sim/ascend-910b-one-qk-sync.json --b 8 --k "$k" --c 24 --chunk 2 --up resident --reduction last
done
