"""Run every notebook under `nbs/` through nbdev's test machinery: one pytest test per notebook.

Cells flagged with any of `tst_flags` (`notest gpu llm slow`) are skipped, exactly as `nbdev-test` does.
"""
import os
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
    ok, _seconds = run_notebook(notebook, skip_flags=skip_flags, basepath=ROOT, showerr=True)
    assert ok, f"{notebook.name} failed; the cell traceback is printed above"
