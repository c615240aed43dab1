#!/usr/bin/env bash
# Reproduces every figure of docs/PERF.md: the ceilings, the seed grid for int8/bf16/fp16 at 128
# heads (q_len 2) and at 16 heads (q_len 1), thread scaling, chunk sizes, UP forms, reductions, and
# the same grids for the AVX2 kernels (--isa avx2).
# Tables go to docs/perf/*.txt and JSON to docs/perf/*.json. Run it on an otherwise idle machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/build.sh" "$root/build"
out="$root/docs/perf"
mkdir -p "$out"
cd "$root/build"
./roofline --out "$out/ceilings.json" | tee "$out/ceilings.txt"
bench() {  # bench NAME ARGS...
  local name=$1; shift
  echo "== mla bench $*" | tee "$out/$name.txt"
  ./mla bench --ceilings "$out/ceilings.json" --json "$out/$name.json" "$@" | tee -a "$out/$name.txt"
}
bench int8_h128  --grid seed --kv-dtype int8
bench bf16_h128  --grid seed --kv-dtype bf16
bench fp16_h128  --grid seed --kv-dtype fp16
bench int8_h16   --grid seed --kv-dtype int8 --heads 16 --q-len 1
bench bf16_h16   --grid seed --kv-dtype bf16 --heads 16 --q-len 1
bench threads_int8 --b 1,2,8 --k 4096 --kv-dtype int8 --threads 1,2 --no-baseline
bench threads_bf16 --b 1,2,8 --k 4096 --kv-dtype bf16 --threads 1,2 --no-baseline
bench chunk1_vs_4 --b 1,8 --k 512,4096 --kv-dtype int8 --variants chunk=1:chunk=4 --no-baseline
bench chunk2_vs_4 --b 1,8 --k 512,4096 --kv-dtype int8 --variants chunk=2:chunk=4 --no-baseline
bench up_spill_vs_resident --b 1,8 --k 512,4096 --kv-dtype int8 --variants up=spill:up=resident --no-baseline
bench red_separate_vs_last --b 1,2,4 --k 512,4096 --kv-dtype int8 --heads 16 --q-len 1 --variants red=separate:red=last --no-baseline
# The AVX2 kernels (what a CPU without AVX-512 runs), held to the AVX2 ceilings of the same file.
bench avx2_int8_h128 --grid seed --kv-dtype int8 --isa avx2
bench avx2_bf16_h128 --grid seed --kv-dtype bf16 --isa avx2
bench avx2_int8_h16  --grid seed --kv-dtype int8 --heads 16 --q-len 1 --isa avx2
bench avx2_bf16_h16  --grid seed --kv-dtype bf16 --heads 16 --q-len 1 --isa avx2
./bench_kernel_avx2 | tee "$out/avx2_kernels.txt"
