"""Run every notebook under `nbs/` through nbdev's test machinery: one pytest test per notebook.

Cells flagged with any of `tst_flags` (`notest gpu llm slow`) are skipped, exactly as `nbdev-test` does.
"""
import sys
from pathlib import Path

import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_notebook

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted(p for p in (ROOT / "nbs").rglob("*.ipynb")
             if not any(part.startswith((".", "_")) for part in p.relative_to(ROOT / "nbs").parts))


@pytest.mark.parametrize("notebook", NBS, ids=[str(p.relative_to(ROOT / "nbs")) for p in NBS])
def test_notebook(notebook, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    skip_flags = get_config(ROOT).tst_flags.split()
    try:
        ok, _seconds = run_notebook(notebook, skip_flags=skip_flags, basepath=ROOT, showerr=True)
    finally:
        _forget_dreamframe_modules()
    assert ok, f"{notebook.name} failed; the cell traceback is printed above"


def _forget_dreamframe_modules():
    """Notebooks end by reloading their module; drop every dreamframe module afterwards so the next test in this
    process imports one consistent set (a reloaded `llm` next to an old `llm_testing` would hold two LLMConfig classes)."""
    for name in [n for n in sys.modules if n == "dreamframe" or n.startswith("dreamframe.")]:
        del sys.modules[name]
