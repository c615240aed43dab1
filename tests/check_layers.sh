#!/usr/bin/env bash
# The layering check (CMakeLists.txt's first comment, README "Layers"): every library layer may
# use only the layers below it. A static archive links whatever it is given, so an upward call
# (a kernel calling a function of the ops layer) builds and runs as long as the program links
# both; this check finds it with nm instead:
#   for each layer L, a symbol L's objects leave undefined, that neither L nor a layer L may link
#   (its DEPS, transitively) defines, but another layer's archive does, is an upward (or
#   sideways) reference. Symbols no layer defines (libc, libstdc++) are not ours and pass.
#
#   check_layers.sh NAME=ARCHIVE:DEP,DEP,... ...     (CMakeLists.txt passes every mla_layer;
#                                                     DEPS that are not layers are ignored)
# Exit 1 and one line per reference (layer, object, symbol, where it is defined) when any is found.
# tests/check_layers_selftest.sh plants an upward call and checks that this fails on it.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: check_layers.sh NAME=ARCHIVE:DEPS ..." >&2; exit 2; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

declare -A archive deps
names=()
for spec in "$@"; do
  name=${spec%%=*}
  rest=${spec#*=}
  archive[$name]=${rest%%:*}
  deps[$name]=${rest#*:}
  names+=("$name")
done

# Symbols each archive defines (global or weak, any section), and the ones its objects use.
for n in "${names[@]}"; do
  a=${archive[$n]}
  [ -f "$a" ] || { echo "check_layers: $n: no archive $a" >&2; exit 2; }
  nm -g --defined-only "$a" 2>/dev/null | awk 'NF == 3 {print $3}' | sort -u > "$tmp/$n.def"
  # "archive:object: U symbol" -> "object symbol"
  nm -A -u "$a" 2>/dev/null |
    awk '{o = $1; sub(/:$/, "", o); n = split(o, p, ":"); print p[n], $NF}' | sort -k2 > "$tmp/$n.use"
done

# The layers n may link: its DEPS, transitively.
closure() {
  local todo=("$1") seen=" " d
  while [ ${#todo[@]} -gt 0 ]; do
    d=${todo[0]}
    todo=("${todo[@]:1}")
    for x in ${deps[$d]//,/ }; do
      [ -n "${archive[$x]+set}" ] || continue  # Threads::Threads and other non-layers
      case "$seen" in *" $x "*) continue ;; esac
      seen="$seen$x "
      todo+=("$x")
    done
  done
  echo "$seen"
}

bad=0
for n in "${names[@]}"; do
  allowed=$(closure "$n")
  cat "$tmp/$n.def" $(for x in $allowed; do echo "$tmp/$x.def"; done) | sort -u > "$tmp/allowed"
  # Uses that n and the layers below it leave undefined...
  awk 'NR == FNR {ok[$1] = 1; next} !($2 in ok)' "$tmp/allowed" "$tmp/$n.use" > "$tmp/open"
  [ -s "$tmp/open" ] || continue
  # ...that another layer defines.
  for x in "${names[@]}"; do
    [ "$x" = "$n" ] && continue
    case " $allowed " in *" $x "*) continue ;; esac
    awk 'NR == FNR {def[$1] = 1; next} $2 in def {print $1, $2}' "$tmp/$x.def" "$tmp/open" |
      while read -r obj sym; do
        echo "layering: $n ($obj) uses $(echo "$sym" | c++filt), defined in $x," \
             "which is not below $n"
      done > "$tmp/found"
    if [ -s "$tmp/found" ]; then
      cat "$tmp/found"
      bad=1
    fi
  done
done
if [ $bad = 1 ]; then
  echo "check_layers: a layer uses a layer above it (or beside it): move the helper down, or" \
       "give the layer the dependency in CMakeLists.txt if it really belongs above" >&2
  exit 1
fi
echo "check_layers: ${#names[@]} layers, no upward reference"
