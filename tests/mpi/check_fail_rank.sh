#!/usr/bin/env bash
# A rank that fails (its checkpoint lacks a shard file) must end every rank of the group with its
# error within 10 s; without the abort the other ranks would wait in the all-reduce forever.
#   check_fail_rank.sh PROGRAM NP MPIRUN [MPIRUN ARGS...]
set -uo pipefail
prog=$1 np=$2
shift 2
log=$(mktemp)
start=$(date +%s%N)
timeout 30 "$@" -np "$np" "$prog" --fail-rank $((np - 1)) >"$log" 2>&1
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
cat "$log"
fail() { echo "FAIL: $*"; rm -f "$log"; exit 1; }
[ $rc -ne 124 ] || fail "the ranks hung (killed by timeout after 30 s)"
[ $rc -ne 0 ] || fail "mpirun exited 0 although rank $((np - 1)) failed"
grep -q "error (rank $((np - 1)) of $np)" "$log" || fail "no error message from rank $((np - 1))"
grep -q "model-00003-of-00003.safetensors" "$log" || fail "the error does not name the missing file"
grep -q "should not have finished" "$log" && fail "a rank finished its step"
[ $ms -lt 10000 ] || fail "took $ms ms (limit 10 s)"
echo "ok: rank $((np - 1)) of $np failed; mpirun exited $rc after $ms ms"
rm -f "$log"
