#!/usr/bin/env bash
# The package as a user gets it (a CTest test; README "Install"): installs the build tree into a
# temporary prefix, then
#   1. checks the installed files and that libmla.so exports only public symbols (no internal
#      namespace: mla::cpu, mla::ref, mla::layer, mla::sim; no C++ symbol outside namespace mla
#      but the standard library's template instances, which libstdc++ marks visible);
#   2. builds tests/package/consumer with find_package(mla) (shared and static) and runs both;
#   3. compiles tests/package/c_api.c with gcc -std=c11 -pedantic against the installed mla.h,
#      flags from pkg-config's mla.pc, links it with the shared and with the static library
#      (mla.pc's Libs.private), and runs both; then README's C example the same way.
#   check_package.sh BUILD_DIR
set -euo pipefail
build=$(realpath "${1:?usage: check_package.sh BUILD_DIR}")
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
step() { echo "== $*"; }

step "install into a temporary prefix"
cmake --install "$build" --prefix "$prefix" > /dev/null
for f in include/mla/mla.h include/mla/attention.h include/mla/version.h include/mla/export.h \
         lib/libmla.a lib/libmla.so lib/cmake/mla/mlaConfig.cmake lib/cmake/mla/mlaTargets.cmake \
         lib/cmake/mla/mlaConfigVersion.cmake lib/pkgconfig/mla.pc; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f is not installed" >&2; exit 1; }
done

version=$(awk '/^#define MLA_VERSION_(MAJOR|MINOR|PATCH) /{printf "%s%s", s, $3; s="."}' \
          "$prefix/include/mla/version.h")

step "exports of libmla.so"
nm -D --defined-only "$prefix/lib/libmla.so" | awk '{print $3}' > "$tmp/exports.mangled"
c++filt < "$tmp/exports.mangled" > "$tmp/exports"
# By mangled name: _Z, then a vtable/typeinfo/guard prefix, N and qualifiers, then the outermost
# namespace: 3mla followed by an internal one is internal; neither mla nor the standard library's
# (St, Sa.., 9__gnu_cxx) is a stray C++ symbol of ours.
scope='^_ZZ?(T[VIS]|GV|T[HW])?N?[KVRO]*'
internal=$(grep -E "${scope}3mla(3cpu|3ref|5layer|3sim|6detail)" "$tmp/exports.mangled" |
             c++filt || true)
stray=$(grep -E '^_Z' "$tmp/exports.mangled" | grep -vE "${scope}(3mla|S[a-z]|9__gnu_cxx)" |
          c++filt || true)
if [ -n "$internal$stray" ]; then
  echo "FAIL: libmla.so exports internal symbols:" >&2
  printf '%s\n' "$internal" "$stray" | head -20 >&2
  exit 1
fi
for want in mla_decode mla_last_error 'mla::make_decode_plan(' 'mla::PagedLatentCache::write('; do
  grep -qF "$want" "$tmp/exports" || { echo "FAIL: libmla.so does not export $want" >&2; exit 1; }
done
echo "$(grep -c '^mla' "$tmp/exports") mla symbols exported, none internal"

step "mlaConfigVersion.cmake: the same major.minor only"
compatible() {  # compatible VERSION: what mlaConfigVersion.cmake answers to find_package(mla VERSION)
  local v=$1
  cat > "$tmp/ask.cmake" <<CMAKE
set(PACKAGE_FIND_VERSION $v)
string(REPLACE "." ";" parts $v)
list(GET parts 0 PACKAGE_FIND_VERSION_MAJOR)
list(GET parts 1 PACKAGE_FIND_VERSION_MINOR)
include("$prefix/lib/cmake/mla/mlaConfigVersion.cmake")
message("\${PACKAGE_VERSION_COMPATIBLE}")
CMAKE
  cmake -P "$tmp/ask.cmake" 2>&1
}
[ "$(compatible "$version")" = TRUE ] && [ "$(compatible 99.0.0)" = FALSE ] ||
  { echo "FAIL: mlaConfigVersion.cmake accepts a version other than $version" >&2; exit 1; }

step "CMake consumer: find_package(mla)"
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$here/consumer" -B "$tmp/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" > /dev/null
cmake --build "$tmp/consumer" -j2 > "$tmp/consumer.log" 2>&1 || { cat "$tmp/consumer.log"; exit 1; }
readelf -d "$tmp/consumer/consumer_shared" | grep -q 'NEEDED.*libmla\.so' ||
  { echo "FAIL: consumer_shared does not load libmla.so" >&2; exit 1; }
"$tmp/consumer/consumer_shared"
"$tmp/consumer/consumer_static"

step "C program: gcc -std=c11 against mla.h, pkg-config mla"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion mla)" = "$version" ] ||
  { echo "FAIL: mla.pc says $(pkg-config --modversion mla), version.h $version" >&2; exit 1; }
cflags=(-std=c11 -pedantic -Wall -Wextra -Werror -O1 $(pkg-config --cflags mla))
gcc "${cflags[@]}" "$here/c_api.c" $(pkg-config --libs mla) -Wl,-rpath,"$prefix/lib" -lm \
  -o "$tmp/c_shared"
"$tmp/c_shared"
# Static: libmla.a, then what it needs (mla.pc's Libs.private: libstdc++, libm, threads).
private=$(pkg-config --static --libs mla | sed -e 's/-L[^ ]*//g' -e 's/-lmla\b//g')
gcc "${cflags[@]}" "$here/c_api.c" "$prefix/lib/libmla.a" $private -o "$tmp/c_static"
readelf -d "$tmp/c_static" | grep -q 'NEEDED.*libmla' &&
  { echo "FAIL: c_static loads libmla.so" >&2; exit 1; }
"$tmp/c_static"

# README's C example, as printed there (the one ```c block), compiles and runs.
readme=$here/../../README.md
if [ -f "$readme" ]; then
  step "README's C example"
  awk '/^```c$/ {on = 1; next} /^```$/ {on = 0} on' "$readme" > "$tmp/readme.c"
  [ -s "$tmp/readme.c" ] || { echo "FAIL: README has no \`\`\`c example" >&2; exit 1; }
  gcc "${cflags[@]}" "$tmp/readme.c" $(pkg-config --libs mla) -Wl,-rpath,"$prefix/lib" -lm \
    -o "$tmp/readme_c"
  "$tmp/readme_c"
fi
step "package: ok"
