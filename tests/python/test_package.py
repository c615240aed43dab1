"""The installed package: importable without torch, typed (py.typed, a current _mla.pyi)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

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
    def normal(text):  # import order varies with the environment
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        imports = sorted(ln for ln in lines if ln.startswith(("from ", "import ")))
        return imports, [ln for ln in lines if not ln.startswith(("from ", "import "))]

    committed = (ROOT / "python" / "mla" / "_mla.pyi").read_text()
    assert normal(committed) == normal((tmp_path / "s.pyi").read_text()), \
        "python/mla/_mla.pyi is stale: regenerate it with python -m nanobind.stubgen -m mla._mla"


def test_docstrings_name_the_conventions():
    doc = mla.flash_mla_with_kvcache.__doc__
    for phrase in ("q.shape[-1] ** -0.5", "lse +inf", "read in place through its strides", "ignored when s_q == 1"):
        assert phrase in doc, phrase


def test_readme_snippet_runs():
    text = (ROOT / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    ns = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["out"].shape == (2, 2, 16, 512) and str(ns["out"].dtype) == "bfloat16"
    assert ns["lse"].shape == (2, 16, 2) and np.isfinite(ns["lse"]).all()
