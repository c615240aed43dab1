#!/usr/bin/env bash
# Installs the Debian packages the build needs (binutils: objdump for scripts/check_isa.sh), only
# those that are missing.
# Safe to run again and again: with everything present it does nothing and needs no network.
set -euo pipefail
# clang + libclang-rt-14-dev: the libFuzzer targets (scripts/fuzz.sh); python3-venv: scripts/venv.sh;
# openmpi-bin + libopenmpi-dev: the tensor-parallel layer (src/dist/comm_mpi.cc) and its mpirun tests.
pkgs=(cmake g++ make binutils libgtest-dev libgmock-dev libbenchmark-dev libopenblas-dev libcli11-dev
      nlohmann-json3-dev clang libclang-rt-14-dev python3-venv openmpi-bin libopenmpi-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "deps: installing ${missing[*]}" >&2
sudo_cmd=()
[ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
