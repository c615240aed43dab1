#!/usr/bin/env bash
# Makes .venv ready: creates it if missing, installs the pinned Python packages
# (python/requirements.txt) and builds + installs the package with `pip install .`.
# Rebuilds are incremental: scikit-build-core keeps its CMake tree in build-py/ and ccache (when
# present) serves unchanged objects. Prints the interpreter's path (stdout; the rest goes to
# stderr): MLA_PYTHON=$(bash scripts/venv.sh)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/deps.sh" >&2
py=${PYTHON:-python3}
if [ ! -x "$root/.venv/bin/python" ]; then
  "$py" -m venv "$root/.venv" >&2 || {
    echo "venv: '$py -m venv' failed; on Debian install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  }
fi
pip=("$root/.venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install -r "$root/python/requirements.txt" >&2
command -v ccache >/dev/null && export CMAKE_CXX_COMPILER_LAUNCHER=ccache
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
# The build requirements are the pinned ones just installed, so no isolated build environment.
"${pip[@]}" install --no-build-isolation "$root" >&2
echo "$root/.venv/bin/python"
