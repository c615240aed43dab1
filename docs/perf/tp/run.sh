#!/usr/bin/env bash
# Interleaved: one process x 1 thread vs 2 ranks x 1 thread, V3 preset, b1.
cd "$(dirname "$0")/../../.."  # the repository root; run under /work/shared/tools/quiet
M="mpirun --allow-run-as-root --bind-to core --map-by core --mca btl self,vader --mca btl_vader_single_copy_mechanism none -np 2"
C="--preset deepseek-v3 --batch 1 --threads 1 --steps 24 --ceilings docs/perf/ceilings.json"
for i in 1 2 3 4 5 6 7 8; do  # (run as 1-3, then 4-8)
  build/mla demo $C > docs/perf/tp/tp1_$i.txt 2>/dev/null
  $M build/mla demo $C --tp 2 > docs/perf/tp/tp2_$i.txt 2>/dev/null
done
