#!/usr/bin/env bash
# The layering check's own test: three tiny layers low <- mid <- high, built here as archives.
#   clean tree: high calls mid and low (low only through mid's DEPS: transitive), mid calls low,
#               everyone calls libc (no layer defines it)                      -> passes
#   planted:    low also calls a function only mid defines (an upward call)     -> fails, naming
#               the object, the symbol and the layer that defines it
#   sideways:   two layers on low, one calling the other                       -> fails
#   check_layers_selftest.sh CHECK_SCRIPT
set -euo pipefail
check=$(realpath "${1:?usage: check_layers_selftest.sh tests/check_layers.sh}")
cc=${CC:-cc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

lib() {  # lib NAME SOURCE: an archive libNAME.a of one object NAME.o
  echo "$2" > "$1.c"
  "$cc" -c -o "$1.o" "$1.c"
  ar rcs "lib$1.a" "$1.o"
}
expect() {  # expect pass|fail DESCRIPTION SPECS...
  local want=$1 what=$2
  shift 2
  if bash "$check" "$@" > out.txt 2>&1; then got=pass; else got=fail; fi
  cat out.txt
  [ "$got" = "$want" ] || { echo "FAIL: $what: the check should $want, it did $got" >&2; exit 1; }
  echo "ok: $what ($got)"
}

lib low '#include <string.h>
int low_fn(const char* s) { return (int)strlen(s); }'
lib mid 'int low_fn(const char*); int mid_fn(void) { return low_fn("mid"); }'
lib high 'int low_fn(const char*); int mid_fn(void);
int high_fn(void) { return mid_fn() + low_fn("high"); }'
expect pass "downward calls, transitive and libc" \
  "low=$tmp/liblow.a:" "mid=$tmp/libmid.a:low" "high=$tmp/libhigh.a:mid,Threads::Threads"

lib low '#include <string.h>
int mid_fn(void);
int low_fn(const char* s) { return (int)strlen(s) + mid_fn(); }'
expect fail "planted upward call low -> mid" \
  "low=$tmp/liblow.a:" "mid=$tmp/libmid.a:low" "high=$tmp/libhigh.a:mid"
grep -q "low (low.o) uses mid_fn, defined in mid" out.txt ||
  { echo "FAIL: the message does not name the object, symbol and layer" >&2; exit 1; }

lib low '#include <string.h>
int low_fn(const char* s) { return (int)strlen(s); }'
lib side 'int mid_fn(void); int side_fn(void) { return mid_fn(); }'
expect fail "sideways call between two layers on low" \
  "low=$tmp/liblow.a:" "mid=$tmp/libmid.a:low" "side=$tmp/libside.a:low"
echo "check_layers_selftest: passed"
