#!/usr/bin/env bash
# Checks that a build runs on a CPU without AVX-512: disassembles every object of the library's
# layers (mla_*), the roofline, the harness and the command-line tool, and fails if any object
# other than the *_avx512*.cc ones (called only after a run-time CPU check, isa.h) holds an
# EVEX-encoded instruction (AVX-512: the 0x62 prefix in 64-bit code, zmm or mask registers), or if
# an object other than the *_avx2.cc kernels and roofline/ceilings.cc (whose AVX2 loops are
# target-attributed functions behind a run-time check) holds a VEX instruction (ymm, or any
# v-prefixed AVX mnemonic). tests/check_isa_objects.sh (a ctest) checks the other direction: that
# no ISA object exports a shared inline symbol the linker could hand to baseline callers. Functions
# cloned by GCC's target_clones (symbols ending .arch_x86_64_v3 / _v4) are skipped: the loader's
# ifunc resolver only picks them on a CPU that has those instructions.
#
#   scripts/check_isa.sh [BUILD_DIR]     (default: build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
command -v objdump >/dev/null || { echo "check_isa: objdump not found (binutils)" >&2; exit 2; }

mapfile -t objects < <(find "$build/CMakeFiles" -name '*.o' -path '*/mla*.dir/*' | sort)
[ "${#objects[@]}" -gt 0 ] || { echo "check_isa: no objects under $build/CMakeFiles" >&2; exit 2; }

bad=0 checked=0
for o in "${objects[@]}"; do
  name=$(basename "$o")
  case "$name" in *_avx512*.cc.o) continue ;; esac
  checked=$((checked + 1))
  # EVEX: after legacy prefixes, the first byte is 0x62 (invalid outside EVEX in 64-bit mode).
  evex=$(objdump -d --no-addresses "$o" 2>/dev/null | awk -F'\t' '
    /^<.*>:$/ { clone = $0 ~ /\.arch_x86_64_v[34]/ }
    NF >= 3 && !clone {
      n = split($2, b, " "); i = 1
      while (i <= n && b[i] ~ /^(66|67|f2|f3|2e|3e|26|64|65|36|f0)$/) i++
      if (b[i] == "62" || $3 ~ /%zmm|%k[0-7]|\{1to/) { c++; if (c <= 3) print "    " $3 }
    }
    END { if (c) print "    (" c " EVEX instructions)" }')
  if [ -n "$evex" ]; then
    echo "check_isa: $name holds AVX-512 (EVEX) code:" >&2
    echo "$evex" >&2
    bad=1
  fi
  case "$name" in *_avx2.cc.o | *_avx2vnni.cc.o | ceilings.cc.o) continue ;; esac
  vex=$(objdump -d --no-addresses "$o" 2>/dev/null | awk -F'\t' '
    /^<.*>:$/ { clone = $0 ~ /\.arch_x86_64_v[34]/ }
    NF >= 3 && !clone && ($3 ~ /%ymm/ || $3 ~ /^ *v[a-z]/) { c++; if (c <= 3) print "    " $3 }
    END { if (c) print "    (" c " AVX instructions)" }')
  if [ -n "$vex" ]; then
    echo "check_isa: $name holds AVX code but is built for the baseline x86-64:" >&2
    echo "$vex" >&2
    bad=1
  fi
done
[ "$bad" = 0 ] || exit 1
echo "check_isa: $checked objects without AVX-512 code (AVX only in *_avx2.cc and ceilings.cc)"
