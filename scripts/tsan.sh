#!/usr/bin/env bash
# ThreadSanitizer over the multi-threaded parts: the thread pool, the decode driver (split KV,
# both reductions, the last-worker hand-off) and the non-finite rule at 1-8 threads on the AVX-512
# kernels (the portable kernels' runs of it take 80 s each under TSan; their threading is the same
# driver's).
# Builds build-tsan/ (tests only) and runs those tests; extra arguments go to ctest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc)
launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
echo "== thread sanitizer: thread pool, decode, combine, non-finite tests" >&2
cmake -S "$root" -B "$root/build-tsan" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMLA_BUILD_BENCH=OFF \
  -DCMAKE_CXX_FLAGS="-fsanitize=thread -fno-omit-frame-pointer" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=thread" "${launcher[@]}" >/dev/null
cmake --build "$root/build-tsan" -j"$jobs" --target test_thread_pool test_decode test_combine \
  test_nonfinite
(cd "$root/build-tsan" && TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" MLA_TEST_QUICK=1 \
  ctest --output-on-failure -j"$jobs" -R '^(ThreadPool|Decode|Combine|Registry/DecodeKernel|Registry/NonFinite\.VisibleNanOrInfMakesExactlyThoseRowsNan/.*avx512)' "$@")
