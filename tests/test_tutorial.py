"""The Colab tutorial runs: its parameter cell is swapped for the tiny stand-in SDXL and the offline LLM, and every
cell runs except those flagged `gpu` (Colab secrets) and shell lines (`!pip`, `!dreamframe`, checked by test_docs).
A cell that raises fails the test. The run folder its Python calls made is one the command line continues:
`dreamframe status` finds every stage done (none "brought by the user"), and `dreamframe run` redraws nothing."""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from execnb.shell import CaptureShell

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "nbs" / "tutorials" / "colab_end_to_end.ipynb"


def test_tutorial_runs_on_the_tiny_model(tmp_path, monkeypatch):
    from dreamframe.identity import random_ip_adapter
    from dreamframe.models import load_sdxl
    from dreamframe.testing import tiny_sdxl
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); monkeypatch.setenv("TQDM_DISABLE", "1")
    tiny = tiny_sdxl(tmp_path / "tiny", refiner=True)
    nb = nbformat.read(TUTORIAL, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if c.source.lstrip().startswith("# parameters")]
    assert len(params) == 1, "the tutorial must have exactly one cell starting with `# parameters`"
    names = set(re.findall(r"(?m)^([A-Z_]+(?:, [A-Z_]+)*) =", params[0].source))
    override = {
        "THEME": "'a lighthouse keeper finds a message in a bottle'", "RUN": repr(str(tmp_path / "run")),
        "SUBSTORIES, SHOTS, FRAMES": "2, 1, 2", "MODEL": repr(str(tiny)), "REFINER": repr(str(tiny / "refiner")),
        "VAE": repr(str(tiny / "vae")), "LLM_MODEL, BASE_URL": "'scripted', None",
        "SIZE, STEPS": "64, 2", "STYLE_SIZE, STYLE_STEPS, STYLE_IMAGES": "64, 2, 2", "LOW_MEMORY": "False", "EVAL_TINY": "True",
        "IP_ADAPTER": repr(random_ip_adapter(tmp_path / "ip-adapter", load_sdxl(tiny).unet))}
    assert names == set(override), f"the parameter cell sets {sorted(names)}; this test overrides {sorted(override)}"
    params[0].source = "\n".join(f"{name} = {value}" for name, value in override.items())
    shell = CaptureShell()
    shell.run("import os; os.chdir(%r)" % str(tmp_path))
    ran = 0
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "code": continue
        lines = cell.source.splitlines()
        if any(re.match(r"#\|\s*gpu\b", l) for l in lines) or any(l.lstrip().startswith("!") for l in lines): continue
        shell.run(cell.source)
        if shell.exc: pytest.fail(f"tutorial cell {number} failed:\n{cell.source}\n{type(shell.exc).__name__}: {shell.exc}")
        ran += 1
    assert ran >= 20
    assert (tmp_path / "run" / "export" / "llava.json").exists() and (tmp_path / "run-refined" / "frames").is_dir()
    for mode in ("none", "shared-attention", "ip-adapter"):   # the identity comparison drew its frames, with the style
        lines = [json.loads(l) for l in (tmp_path / f"run-{mode}" / "frames" / "manifest.jsonl").read_text().splitlines()]
        assert len(lines) == 4 and {l["identity"] for l in lines} == {mode}
        assert (tmp_path / f"run-{mode}" / "style" / "embedding.safetensors").exists()
    refined = [json.loads(l) for l in (tmp_path / "run-refined" / "frames" / "manifest.jsonl").read_text().splitlines()]
    assert {l["style"].split("@")[0] for l in refined} == {"<watercolor-style>"}   # the refined frames keep the style

    from dreamframe.cli import main
    from dreamframe.pipeline import status
    run = tmp_path / "run"
    text = status(run)
    assert "brought by the user" not in text and all(" done " in line for line in text.splitlines()[1:]), text
    made = {p: p.read_bytes() for p in sorted((run / "frames").glob("*.png")) + [run / "style" / "embedding.safetensors"]}
    stamps = {p: p.stat().st_mtime_ns for p in made}
    assert main(["run", str(run), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in made} == stamps and {p: p.read_bytes() for p in made} == made
