#!/usr/bin/env bash
# Fails if an object compiled with extra instructions (a file named *_avx512*.cc or *_avx2.cc,
# src/cpu/attention/isa.h) defines a weak or unique symbol: an inline function or template of a
# shared header emitted there could be picked by the linker for baseline callers, which would then
# run AVX-512 / AVX2 code on a CPU without it. Arguments: object lists (';'-separated).
set -euo pipefail
bad=0
checked=0
IFS=';' read -r -a objs <<<"$*"
for o in "${objs[@]}"; do
  for f in $o; do
    [[ "$f" =~ _(avx512|avx512bf16|avx512vnni|avx512f|avx2)\.cc\.o$ ]] || continue
    checked=$((checked + 1))
    weak=$(nm -C "$f" | awk '$2 ~ /^[WVu]$/' | grep -v 'DW.ref.__gxx_personality_v0' || true)
    if [ -n "$weak" ]; then
      echo "$f defines shared symbols (keep these helpers static or in an anonymous namespace):"
      echo "$weak"
      bad=1
    fi
  done
done
if [ "$checked" -eq 0 ]; then
  echo "no ISA object found among the arguments" >&2
  exit 1
fi
echo "$checked ISA objects, no shared inline symbols"
exit $bad
