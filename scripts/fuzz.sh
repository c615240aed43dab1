#!/usr/bin/env bash
# Builds every libFuzzer target fuzz/fuzz_*.cc (clang++ from Debian, with AddressSanitizer and
# UndefinedBehaviorSanitizer) and runs each for SECONDS (default 300; scripts/test.sh runs 10),
# starting from its corpus fuzz/corpus/<name>/ (kept read-only: new inputs go to build-fuzz/).
# A crash leaves its input in build-fuzz/ and fails the script.   scripts/fuzz.sh [SECONDS]
# The library sources are compiled once and the targets built and run nproc at a time.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-300}
out="$root/build-fuzz"
mkdir -p "$out/obj"
cxx=${MLA_FUZZ_CXX:-clang++}
command -v "$cxx" >/dev/null || { echo "fuzz: $cxx not found (apt-get install clang libclang-rt-14-dev)" >&2; exit 1; }
jobs=$(nproc)
flags=(-std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
       -I"$root/include" -I"$root/src" -I"$root")
# The library sources the targets need: the parsers and what they use, nothing with AVX-512.
lib_sources=("$root/src/core/npy.cc" "$root/src/core/dtype.cc" "$root/src/core/atomic_file.cc"
             "$root/src/io/safetensors.cc"
             "$root/src/io/model_config.cc")
stale() {  # stale OUTPUT INPUT...: OUTPUT is missing or older than an input or a header
  [ ! -e "$1" ] || [ -n "$(find "${@:2}" "$root/include" -newer "$1" -print -quit)" ]
}
export -f stale
export root cxx out
# Each job: "obj SRC" compiles one library source (-fsanitize=fuzzer-no-link: no main),
# "bin SRC" one target linked with the objects.
build_one() {
  local kind=$1 src=$2 name
  name=$(basename "$src" .cc)
  if [ "$kind" = obj ]; then
    stale "$out/obj/$name.o" "$src" || return 0
    "$cxx" "${@:3}" -c "$src" -o "$out/obj/$name.o"
  else
    stale "$out/$name" "$src" "$root/fuzz/input_file.h" "$out"/obj/*.o || return 0
    echo "== fuzz: building $name" >&2
    "$cxx" "${@:3}" "$src" "$out"/obj/*.o -o "$out/$name"
  fi
}
export -f build_one
objflags=("${flags[@]/-fsanitize=fuzzer,address,undefined/-fsanitize=fuzzer-no-link,address,undefined}")
printf '%s\n' "${lib_sources[@]}" |
  xargs -P "$jobs" -I{} bash -c 'build_one obj "$@"' _ {} "${objflags[@]}"
printf '%s\n' "$root"/fuzz/fuzz_*.cc |
  xargs -P "$jobs" -I{} bash -c 'build_one bin "$@"' _ {} "${flags[@]}"

# Runs one target for SECONDS; on failure prints the end of its log.
run_one() {
  local name secs=$2 corpus work
  name=$(basename "$1" .cc)
  corpus="$root/fuzz/corpus/${name#fuzz_}"
  work="$out/${name}_corpus"
  mkdir -p "$work"
  echo "== fuzz: $name for ${secs}s from $(ls "$corpus" | wc -l) corpus inputs" >&2
  if ! (cd "$out" && MLA_FUZZ_TMP="$out" "$out/$name" -max_total_time="$secs" -max_len=65536 \
        -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 "$work" "$corpus" 2>"$out/$name.log"); then
    tail -40 "$out/$name.log" >&2
    echo "fuzz: $name failed; see $out/$name.log" >&2
    return 1
  fi
  echo "$name: $(grep -E "stat::number_of_executed_units" "$out/$name.log" || true)" >&2
}
export -f run_one
printf '%s\n' "$root"/fuzz/fuzz_*.cc | xargs -P "$jobs" -I{} bash -c 'run_one "$@"' _ {} "$secs"
