#!/usr/bin/env bash
# Creates the project's Python environment, .venv (if missing), with the pinned packages the tests
# use (python/requirements-test.txt: numpy, for the .npy cross-check in tests/test_npy.cc).
# Prints the interpreter's path; scripts/test.sh passes it to the tests as MLA_PYTHON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
if ! "$venv/bin/python" -c 'import numpy' 2>/dev/null; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$root/python/requirements-test.txt" >&2
fi
echo "$venv/bin/python"
