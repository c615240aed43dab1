#!/usr/bin/env bash
# Writes docs/FORMATS.md: the accuracy of every cache format and int8 scale mode against the
# unquantized cache (`mla formats`, DeepSeek-V3's 128 heads, MTP q_len 2, 3 sequences).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/build.sh" "$root/build"
out="$root/docs/FORMATS.md"
{
  cat "$root/docs/formats_intro.md"
  echo
  "$root/build/mla" formats --heads 128 --q-len 2 --batch 3 --context 1024 --seed 1
  echo
  # Issue 20's case: every outlier channel 12x (the plain and sink rows are the table's above).
  "$root/build/mla" formats --heads 128 --q-len 2 --batch 3 --context 1024 --seed 1 \
      --outlier-gain 12 | grep -v -e '^| normal ' -e '^| attention sink '
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
