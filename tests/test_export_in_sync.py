"""The exported modules must be what `nbdev-export` makes of the notebooks."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_modules_match_notebooks(tmp_path):
    work = tmp_path / "repo"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "_proc", "_docs", "*.egg-info",
                                                                "__pycache__", ".whl", ".gl"))
    before = {p.relative_to(work): p.read_bytes() for p in (work / "dreamframe").rglob("*.py")}
    exporter = Path(sys.executable).with_name("nbdev-export")
    subprocess.run([str(exporter)], cwd=work, check=True)
    after = {p.relative_to(work): p.read_bytes() for p in (work / "dreamframe").rglob("*.py")}
    changed = sorted(str(p) for p in set(before) | set(after) if before.get(p) != after.get(p))
    assert not changed, f"run nbdev-export and commit: these modules differ from the notebooks: {changed}"
