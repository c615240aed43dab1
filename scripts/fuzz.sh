#!/usr/bin/env bash
# Builds every libFuzzer target fuzz/fuzz_*.cc (clang++ from Debian, with AddressSanitizer and
# UndefinedBehaviorSanitizer) and runs each for SECONDS (default 300; scripts/test.sh runs 10),
# starting from its corpus fuzz/corpus/<name>/ (kept read-only: new inputs go to build-fuzz/).
# A crash leaves its input in build-fuzz/ and fails the script.   scripts/fuzz.sh [SECONDS]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
out="$root/build-fuzz"
mkdir -p "$out"
cxx=${MLA_FUZZ_CXX:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
# The library sources each target needs: the parsers and what they use, nothing with AVX-512.
lib_sources=("$root/src/core/npy.cc" "$root/src/core/dtype.cc" "$root/src/io/safetensors.cc"
             "$root/src/io/model_config.cc")
for src in "$root"/fuzz/fuzz_*.cc; do
  name=$(basename "$src" .cc)
  corpus="$root/fuzz/corpus/${name#fuzz_}"
  bin="$out/$name"
  if [ ! -x "$bin" ] || [ -n "$(find "$src" "${lib_sources[@]}" "$root/include" -newer "$bin" -print -quit)" ]; then
    echo "== fuzz: building $name" >&2
    "$cxx" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
      -I"$root/include" -I"$root/src" "$src" "${lib_sources[@]}" -o "$bin"
  fi
  work="$out/${name}_corpus"
  mkdir -p "$work"
  echo "== fuzz: $name for ${secs}s from $(ls "$corpus" | wc -l) corpus inputs" >&2
  (cd "$out" && MLA_FUZZ_TMP="$out" "$bin" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 \
    -timeout=10 -print_final_stats=1 "$work" "$corpus" 2>"$out/$name.log") ||
    { tail -40 "$out/$name.log" >&2; echo "fuzz: $name failed; see $out/$name.log" >&2; exit 1; }
  grep -E "stat::number_of_executed_units" "$out/$name.log" >&2 || true
done
