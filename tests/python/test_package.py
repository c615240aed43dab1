"""The installed package: importable without torch, typed (py.typed, a current _mla.pyi)."""

import subprocess
import sys
from pathlib import Path

import mla

ROOT = Path(__file__).resolve().parents[2]


def test_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; import mla; print(mla.flash_mla_with_kvcache.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "flash_mla_with_kvcache" in r.stdout, r.stderr


def test_type_information_is_installed_and_current(tmp_path):
    pkg = Path(mla.__file__).parent
    assert (pkg / "py.typed").is_file() and (pkg / "_mla.pyi").is_file()
    r = subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-m", "mla._mla", "-o", str(tmp_path / "s.pyi")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    committed = (ROOT / "python" / "mla" / "_mla.pyi").read_text().split("\n", 2)[2]
    assert committed == (tmp_path / "s.pyi").read_text(), \
        "python/mla/_mla.pyi is stale: regenerate it with python -m nanobind.stubgen -m mla._mla"


def test_docstrings_name_the_conventions():
    doc = mla.flash_mla_with_kvcache.__doc__
    for phrase in ("q.shape[-1] ** -0.5", "lse +inf", "copied once per call", "ignored when s_q == 1"):
        assert phrase in doc, phrase
