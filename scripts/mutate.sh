#!/usr/bin/env bash
# Mutation testing on demand (not part of scripts/test.sh: a rebuild and a test run per mutation):
#   scripts/mutate.sh [tests/mutations/NN-name.patch ...]      (default: every patch there)
# Each patch in tests/mutations/ plants one plausible bug. Its header (the lines before the diff,
# which git apply skips) says what it does and which tests should catch it:
#   Mutation: one line
#   Targets:  CMake targets to rebuild (test binaries), beside the CLI and the Python module
#   Ctest:    a ctest -R regex over those binaries' tests
#   Pytest:   pytest paths (tests/python/...)
# One at a time, the patch is applied to this working tree (refused if a file it touches has
# uncommitted changes), the targets are rebuilt in build-mutate/ (a release tree with the Python
# module, separate from build/ and .venv: neither is touched), the tests run, and the patch is
# reverted (also on Ctrl-C or error). First a control run: the same tests on the unmutated tree
# must all pass. A mutation is caught when at least one test fails; the
# table at the end names the failing tests, and the exit status is 1 if any mutation was missed.
# MLA_TEST_SEED is fixed for the whole run (printed) so a miss reproduces. Heavy work: on a
# shared machine run it under the lock (/work/shared/tools/quiet bash scripts/mutate.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ $# -gt 0 ]; then
  patches=()
  for p in "$@"; do patches+=("$(realpath "$p")"); done  # paths as given, from the caller's folder
else
  patches=("$root"/tests/mutations/*.patch)
fi
cd "$root"
build="$root/build-mutate"
py="$root/.venv/bin/python"
[ -x "$py" ] || py=$(bash "$root/scripts/venv.sh")  # pytest, numpy, nanobind (the module's build)
export MLA_TEST_SEED=${MLA_TEST_SEED:-$((RANDOM * 32768 + RANDOM))}
echo "mutate: MLA_TEST_SEED=$MLA_TEST_SEED" >&2

field() { sed -n "/^diff --git/q; s/^$2: *//p" "$1"; }
applied=""
revert() { [ -n "$applied" ] && git apply -R "$applied" && echo "mutate: reverted $(basename "$applied")" >&2; applied=""; }
trap revert EXIT
trap 'exit 130' INT TERM

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DMLA_PYTHON=ON -DMLA_BUILD_BENCH=OFF \
  -DPython_EXECUTABLE="$py" "${launcher[@]}" >/dev/null
pkg="$build/pypkg"  # python/mla/*.py of the (mutated) tree beside the module built here

# run_tests CTEST_REGEX PYTEST_PATHS...: fills failed[] with the names of the failing tests.
run_tests() {
  local regex=$1 out
  shift
  failed=()
  if [ -n "$regex" ]; then
    out=$(cd "$build" && ctest -R "$regex" -j"$(nproc)" 2>&1 || true)
    while read -r t; do [ -n "$t" ] && failed+=("${t%%  #*}"); done < <(sed -n 's/^[[:space:]]*[0-9]* - \(.*\) (\(Failed\|SEGFAULT\|Timeout\|Subprocess aborted\|Exception\|Not Run\)).*/\1/p' <<<"$out")
  fi
  if [ $# -gt 0 ]; then
    rm -rf "$pkg" && mkdir -p "$pkg/mla"
    cp "$root"/python/mla/*.py "$root"/python/mla/*.pyi "$pkg/mla/"
    cp "$build"/python/_mla*.so "$pkg/mla/"
    out=$(cd "$root" && PYTHONPATH="$pkg" MLA_CLI="$build/mla" "$py" -m pytest -q -rf -p no:cacheprovider "$@" 2>&1 || true)
    while read -r t; do [ -n "$t" ] && failed+=("${t#tests/python/}"); done < <(sed -n 's/^FAILED \([^ ]*\).*/\1/p' <<<"$out")
    grep -q "passed\|failed" <<<"$out" || failed+=("pytest did not run: ${out:0:200}")
  fi
}

# The control: every test the patches name, on the tree as it is, must pass (a failure here
# would count as a catch below).
all_targets=() all_regex=() all_pytest=()
for p in "${patches[@]}"; do
  read -r -a t <<<"$(field "$p" Targets)"
  all_targets+=("${t[@]}")
  r=$(field "$p" Ctest)
  [ -n "$r" ] && all_regex+=("$r")
  read -r -a t <<<"$(field "$p" Pytest)"
  all_pytest+=("${t[@]}")
done
mapfile -t all_targets < <(printf '%s\n' "${all_targets[@]}" | sed '/^$/d' | sort -u)
mapfile -t all_pytest < <(printf '%s\n' "${all_pytest[@]}" | sed '/^$/d' | sort -u)
regex=$(IFS='|'; echo "${all_regex[*]}")
echo "== control: the unmutated tree" >&2
cmake --build "$build" -j"$(nproc)" --target mla_cli _mla "${all_targets[@]}" >"$build/mutate-build.log" 2>&1 ||
  { echo "mutate: the unmutated tree does not build (build-mutate/mutate-build.log)" >&2; exit 2; }
run_tests "$regex" "${all_pytest[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "mutate: the unmutated tree fails: ${failed[*]}" >&2
  exit 2
fi

results=()
missed=0
for p in "${patches[@]}"; do
  name=$(basename "$p" .patch)
  what=$(field "$p" Mutation)
  echo "== $name: $what" >&2
  for f in $(git apply --numstat "$p" | cut -f3); do
    git diff --quiet HEAD -- "$f" || { echo "mutate: $f has uncommitted changes; commit them first" >&2; exit 2; }
  done
  git apply "$p"
  applied="$p"
  read -r -a targets <<<"$(field "$p" Targets)"
  if ! cmake --build "$build" -j"$(nproc)" --target mla_cli _mla "${targets[@]}" >"$build/mutate-build.log" 2>&1; then
    results+=("$name|build failed (not a test catch; see build-mutate/mutate-build.log)|")
    missed=$((missed + 1))
    revert
    continue
  fi
  read -r -a tests <<<"$(field "$p" Pytest)"
  run_tests "$(field "$p" Ctest)" "${tests[@]}"
  revert
  if [ ${#failed[@]} -gt 0 ]; then
    shown=$(printf '%s, ' "${failed[@]:0:3}")
    [ ${#failed[@]} -gt 3 ] && shown+="... "
    results+=("$name|caught by ${#failed[@]}|${shown%, }")
  else
    results+=("$name|MISSED|")
    missed=$((missed + 1))
  fi
done

echo
printf '%-34s %-14s %s\n' "mutation" "result" "failing tests (first 3)"
for r in "${results[@]}"; do
  IFS='|' read -r n res tests <<<"$r"
  printf '%-34s %-14s %s\n' "$n" "$res" "$tests"
done
echo "seed $MLA_TEST_SEED; $((${#patches[@]} - missed)) of ${#patches[@]} caught"
[ "$missed" -eq 0 ]
