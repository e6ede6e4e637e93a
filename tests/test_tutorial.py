"""The Colab tutorial keeps its first cell's promises. Every code cell runs (`tutorial_run.run_tutorial`) with the
parameters that load models swapped for the tiny stand-ins and the offline LLM, the `!dreamframe` commands included;
a cell that raises fails the test. With the defaults, Run-all draws the keyframes the introduction promises and
downloads nothing the user did not ask for (no comparison folder, no refiner, no IP-Adapter); the run folder the
Python cells made is one the command-line cell continues without redoing anything. With `RUN_COMPARISONS = True` the
comparisons run too, and draw what the budget counts. The introduction's budget is generated from the tutorial's own
settings cell with its defaults, and the docs page of the stand-in run still matches the tutorial."""
import json
import os
import sys
import types
from pathlib import Path

import nbformat
import pytest

from tutorial_run import (PAGE, TUTORIAL, budget_markdown, default_budgets, frames_drawn, intro_block, page_shape,
                          parameters, render_page, run_tutorial, stand_ins, write_intro)

STAND_IN_PARAMETERS = {"MODEL", "VARIANT", "VAE", "REFINER", "LLM_MODEL, BASE_URL", "SIZE, STEPS",
                       "STYLE_SIZE, STYLE_STEPS, STYLE_IMAGES", "EVAL_TINY", "IP_ADAPTER"}


@pytest.fixture
def quiet(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_parameters_are_the_colab_preset():
    "Every parameter is a stand-in swap or a default kept in CI; the defaults are the `colab` preset's values."
    from dreamframe.pipeline import PRESETS
    nb = nbformat.read(TUTORIAL, as_version=4)
    kept = set(parameters(nb)) - STAND_IN_PARAMETERS
    assert kept == {"THEME", "RUN", "DRIVE", "SUBSTORIES, SHOTS, FRAMES", "LOW_MEMORY", "RUN_COMPARISONS"}, kept
    names = {}
    exec(next(c.source for c in nb.cells if c.source.lstrip().startswith("# parameters")), names)
    preset = PRESETS["colab"]
    assert (names["SUBSTORIES"], names["SHOTS"], names["FRAMES"]) == tuple(preset["story"].values())
    assert (names["SIZE"], names["STYLE_SIZE"], names["VAE"]) == (preset["keyframes"]["resolution"],
                                                                 preset["style"]["resolution"], preset["models"]["vae"])
    assert names["LOW_MEMORY"] is preset["models"]["low_memory"] is preset["style_speed"]["gradient_checkpointing"]
    assert names["RUN_COMPARISONS"] is False and names["DRIVE"] is True


def test_introduction_budget_is_generated_from_the_settings(tmp_path, quiet):
    "The introduction states the budget of the settings cell with the defaults; the defaults fit one session."
    names, budget, compared = default_budgets(tmp_path)
    generated = budget_markdown(names, budget, compared)
    nb = nbformat.read(TUTORIAL, as_version=4)
    assert intro_block(nb) == generated, "the introduction's budget is out of date: run `python tests/tutorial_run.py`"
    assert budget.fits_session and not compared.fits_session, (budget.minutes, compared.minutes)
    assert {d.used_by for d in budget.downloads} == {"SDXL", "metrics"}   # nothing for the comparisons by default
    assert {d.used_by for d in compared.downloads} == {"SDXL", "metrics", "refiner", "IP-Adapter"}
    assert all(d.size for d in compared.downloads), "every download the tutorial can make has its size"
    assert not (tmp_path / "runs").exists()   # the settings cell makes no run folder and loads nothing
    copy = tmp_path / "tutorial.ipynb"   # the command's writing step puts the block where the test reads it
    copy.write_text(TUTORIAL.read_text().replace(generated, "stale"))
    write_intro(generated, copy)
    assert intro_block(nbformat.read(copy, as_version=4)) == generated


def test_run_all_keeps_the_promise(tmp_path, quiet):
    executed, shell, started = run_tutorial(tmp_path, stand_ins(tmp_path))
    budget, run = shell.user_ns["budget"], tmp_path / shell.user_ns["RUN"]
    promised = int(intro_block(executed).split("draws ", 1)[1].split(" keyframes", 1)[0])
    drawn = frames_drawn(tmp_path / "runs")
    assert drawn == {"lighthouse": promised} and promised == budget.keyframes == 54, (drawn, promised)
    assert len(list((run / "style" / "images").glob("*.png"))) == budget.count("style images")
    assert not (run / "characters").exists() and budget.count("character sheets") == 0
    assert "refiner" not in shell.user_ns and not shell.user_ns["identity"]   # no refiner loaded, no IP-Adapter
    for phrase in ("pipe = load_base()", "evaluate_run(eval_cfg, RUN"):   # each download is announced before it starts
        cell = next(c for c in executed.cells if c.cell_type == "code" and phrase in c.source)
        assert "nothing to download (local folders)" in "".join(cell.outputs[0].get("text", "")), cell.outputs
    assert (run / "export" / "llava.json").exists() and (run / "view.html").exists()
    for phrase in ("plot_loss_curve(", "plot_shot_grid("):   # the plots show (training must not switch the backend)
        cell = next(c for c in executed.cells if c.cell_type == "code" and phrase in c.source)
        assert any("image/png" in output.get("data", {}) for output in cell.outputs), f"{phrase} shows no plot"

    # the command-line cell continued the folder the Python cells made, and redid nothing
    cli = next(n for n, c in enumerate(executed.cells) if c.cell_type == "code" and "!dreamframe run" in c.source)
    said = "".join(o.get("text", "") for o in executed.cells[cli].outputs)
    assert "brought by the user" not in said and "nothing to do" in said, said
    status = [line for line in said.splitlines() if line.startswith("  ")]
    assert status and all(" done " in line for line in status), said
    made = sorted((run / "frames").glob("*.png")) + [run / "style" / "embedding.safetensors", run / "qa.json"]
    assert all(path.stat().st_mtime_ns < started[cli] for path in made)

    # the docs page of the stand-in run shows this run: same cells, same kinds of output
    page = nbformat.read(PAGE, as_version=4)
    assert page_shape(render_page(executed, tmp_path)) == page_shape(page), \
        f"{PAGE.name} no longer matches the tutorial: run `python tests/tutorial_run.py`"


def test_run_all_with_comparisons(tmp_path, quiet):
    "A smaller story (1 x 2 x 3) keeps this fast; the comparisons draw the first shot, the identity modes two."
    smaller = {**stand_ins(tmp_path), "RUN_COMPARISONS": "True", "SUBSTORIES, SHOTS, FRAMES": "1, 2, 3"}
    executed, shell, _started = run_tutorial(tmp_path, smaller)
    budget, run = shell.user_ns["budget"], tmp_path / shell.user_ns["RUN"]
    drawn = frames_drawn(tmp_path / "runs")
    assert sum(drawn.values()) == budget.keyframes == 6 + 3 + 3 + 3 * 6, drawn
    assert set(drawn) == {"lighthouse", "lighthouse-refined", "lighthouse-nostyle", "lighthouse-none",
                          "lighthouse-shared-attention", "lighthouse-ip-adapter"}
    sheets = json.loads((run / "characters" / "characters.json").read_text())
    assert 0 < len(sheets["characters"]) * 4 <= budget.count("character sheets")
    for mode in ("none", "shared-attention", "ip-adapter"):   # the identity comparison drew its frames, with the style
        folder = tmp_path / "runs" / f"lighthouse-{mode}"
        lines = [json.loads(line) for line in (folder / "frames" / "manifest.jsonl").read_text().splitlines()]
        assert {line["identity"] for line in lines} == {mode}
        assert (folder / "style" / "embedding.safetensors").exists()
    refined = (tmp_path / "runs" / "lighthouse-refined" / "frames" / "manifest.jsonl").read_text().splitlines()
    assert {json.loads(line)["style"].split("@")[0] for line in refined} == {"<watercolor-style>"}
    assert shell.user_ns["compared"]["against"], "the no-style comparison is measured beside the movie"

    from dreamframe.cli import main
    made = sorted(run.glob("frames/*.png")) + sorted(run.glob("characters/*.png"))
    stamps = {path: path.stat().st_mtime_ns for path in made}
    assert main(["run", str(run), "--quiet"]) == 0   # the comparisons left the movie's folder one the CLI continues
    assert {path: path.stat().st_mtime_ns for path in made} == stamps


def _cell(nb, phrase: str) -> str:
    return next(c.source for c in nb.cells if c.cell_type == "code" and phrase in c.source)


def test_drive_and_secrets_cells_on_colab(tmp_path, monkeypatch):
    """The Colab-only branches, with a stand-in `google.colab`: a mounted Drive takes the run folder, a declined one
    leaves it on the machine's disk and says so; the key comes from Colab's Secrets unless a local server is used.
    The Drive cell runs as written, its mount point moved into `tmp_path`."""
    nb = nbformat.read(TUTORIAL, as_version=4)
    drive_cell = _cell(nb, "drive.mount(")
    assert 'DRIVE_ROOT = Path("/content/drive")' in drive_cell
    drive_cell = drive_cell.replace('Path("/content/drive")', f"Path({str(tmp_path / 'drive')!r})")
    mounts, declined, secrets = [], [], {"OPENAI_API_KEY": "sk-from-secrets"}

    def mount(where):   # what Colab's does: MyDrive appears under `where`, or the user declines in the pop-up
        mounts.append(where)
        if declined: raise RuntimeError("credential propagation was unsuccessful")
        (Path(where) / "MyDrive").mkdir(parents=True)

    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=mount)
    colab.userdata = types.SimpleNamespace(get=secrets.__getitem__)
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)

    def run(source: str, **names) -> tuple[dict, str]:
        printed = []
        names.update(Path=Path, os=os, print=lambda *words: printed.append(" ".join(map(str, words))))
        exec(source, names)
        return names, "\n".join(printed)

    names, said = run(drive_cell, RUN="runs/lighthouse", DRIVE=True)
    assert names["RUN"] == tmp_path / "drive" / "MyDrive" / "runs" / "lighthouse" and "on Google Drive" in said
    names, said = run(drive_cell, RUN="runs/lighthouse", DRIVE=False)   # mounted already: not asked again
    assert names["RUN"] == Path("runs/lighthouse") and "on this machine's disk" in said and len(mounts) == 1
    declined.append(True)   # a new runtime (nothing mounted yet) whose user says no
    elsewhere = drive_cell.replace(f"Path({str(tmp_path / 'drive')!r})", f"Path({str(tmp_path / 'new')!r})")
    names, said = run(elsewhere, RUN="runs/lighthouse", DRIVE=True)
    assert names["RUN"] == Path("runs/lighthouse"), names["RUN"]
    assert "Google Drive is not mounted (credential propagation was unsuccessful)" in said and "machine's disk" in said

    secrets_cell = _cell(nb, "userdata.get(")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    run(secrets_cell, BASE_URL="http://localhost:11434/v1")   # a local server: no key asked for
    assert "OPENAI_API_KEY" not in os.environ
    run(secrets_cell, BASE_URL=None)
    assert os.environ["OPENAI_API_KEY"] == "sk-from-secrets"
