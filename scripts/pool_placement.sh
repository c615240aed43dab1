#!/usr/bin/env bash
# Per-process placement and time of small two-thread calls, an old build against a new one,
# interleaved (old, new, old, new, ...) so that both see the same load on a shared machine.
# Usage: scripts/pool_placement.sh OLD_BUILD_DIR NEW_BUILD_DIR [PROCESSES=20]
# Prints one line per process: build, run, the share of runs in which the caller and the worker
# ran on one CPU (bench_thread_pool BM_run_placement), the `mla bench` time per call of
# b1 k512 h16 q_len 1 int8 on 2 threads (30000 calls), and the busy threads' CPUs sampled with ps
# during that run;
# then the per-CPU busy share over the whole script from /proc/stat.
set -euo pipefail
old=$1 new=$2 n=${3:-20}
busy() { awk '/^cpu[0-9]/ {print $1, $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat; }
before=$(busy)
for i in $(seq 1 "$n"); do
  for b in old new; do
    dir=${!b}
    shared=$("$dir/bench_thread_pool" --benchmark_filter=BM_run_placement 2>/dev/null |
             sed -n 's/.*shared_cpu_runs=\([0-9.e-]*\).*/\1/p')
    out=$(mktemp)
    "$dir/mla" bench --b 1 --k 512 --heads 16 --q-len 1 --kv-dtype int8 --threads 2 \
      --variants new:new --reps 30000 --no-baseline --no-check >"$out" 2>&1 &
    pid=$!
    # The CPUs of the threads using more than 5% of a CPU, every 0.3 s while the process runs:
    # "01" = two busy threads on CPUs 0 and 1, "11" = both on CPU 1.
    psr=""
    while kill -0 "$pid" 2>/dev/null; do
      s=$( (ps -L -o psr=,pcpu= -p "$pid" 2>/dev/null || true) | awk '$2 > 5 {printf "%s", $1}')
      [ -n "$s" ] && psr="$psr $s"
      sleep 0.3
    done
    wait "$pid" || true
    us=$(awk '/^b1_k512_c2 / {print $2}' "$out")
    rm -f "$out"
    echo "$b $i shared=$shared us=$us cpus=[${psr# }]"
  done
done
after=$(busy)
paste <(echo "$before") <(echo "$after") |
  awk '{printf "%s busy %.0f%%\n", $1, 100 * ($5 - $2) / ($6 - $3)}'
