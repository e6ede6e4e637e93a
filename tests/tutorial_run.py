"""The Colab tutorial run as CI runs it, and what is generated from it.

`run_tutorial` executes every code cell of `nbs/tutorials/colab_end_to_end.ipynb` in one IPython shell, with some
parameters swapped for stand-ins (`stand_ins`: the tiny random-weight SDXL, the scripted offline LLM, untrained metric
networks); a `!dreamframe …` line runs the same command through `dreamframe.cli.main`, with the notebook's variables
expanded as IPython expands them. No other shell line is allowed: CI could not run it.

`python tests/tutorial_run.py` rewrites what is generated from the tutorial:
- the budget in its introduction (between the `<!-- budget` markers), from its own settings cell with its defaults;
- `nbs/tutorials/colab_stand_in_run.ipynb`, the docs page with the outputs of a whole run on the stand-ins, and the
  viewer's screenshot beside it (headless Chromium; without Chromium the page keeps no screenshot).
`tests/test_tutorial.py` checks that both are current.
"""
import base64
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_raw_cell

ROOT = Path(__file__).resolve().parents[1]
TUTORIAL = ROOT / "nbs" / "tutorials" / "colab_end_to_end.ipynb"
PAGE = ROOT / "nbs" / "tutorials" / "colab_stand_in_run.ipynb"
SCREENSHOT = ROOT / "nbs" / "tutorials" / "images" / "colab_stand_in_viewer.jpg"
BUDGET_START = "<!-- budget: written by `python tests/tutorial_run.py` from the settings cell; do not edit by hand -->"
BUDGET_END = "<!-- end of budget -->"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


# ---------------------------------------------------------------- running the tutorial

def stand_ins(folder: Path) -> dict[str, str]:
    "Parameter values (as source text) that put the tiny stand-ins, built in `folder`, in place of real models."
    from dreamframe.identity import random_ip_adapter
    from dreamframe.models import load_sdxl
    from dreamframe.testing import tiny_sdxl
    tiny = tiny_sdxl(folder / "tiny", refiner=True)
    adapter = random_ip_adapter(folder / "ip-adapter", load_sdxl(tiny).unet)
    return {"MODEL": repr(str(tiny)), "VARIANT": "None", "VAE": repr(str(tiny / "vae")),
            "REFINER": repr(str(tiny / "refiner")), "LLM_MODEL, BASE_URL": "'scripted', None",
            "SIZE, STEPS": "64, 2", "STYLE_SIZE, STYLE_STEPS, STYLE_IMAGES": "64, 2, 2", "EVAL_TINY": "True",
            "IP_ADAPTER": repr(adapter)}


def parameter_cell(nb) -> nbformat.NotebookNode:
    "The one code cell that starts with `# parameters`."
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("# parameters")]
    assert len(cells) == 1, f"the tutorial must have exactly one cell starting with `# parameters`, has {len(cells)}"
    return cells[0]


def parameters(nb) -> list[str]:
    "The names the parameter cell sets, one entry per line (`SIZE, STEPS` is one)."
    return re.findall(r"(?m)^([A-Z_]+(?:, [A-Z_]+)*) = ", parameter_cell(nb).source)


def with_parameters(source: str, overrides: dict[str, str]) -> str:
    "The parameter cell `source` with the lines of `overrides` (name -> value as source text) replaced."
    unknown = set(overrides) - set(re.findall(r"(?m)^([A-Z_]+(?:, [A-Z_]+)*) = ", source))
    assert not unknown, f"the parameter cell sets no {sorted(unknown)}"
    lines = []
    for line in source.splitlines():
        match = re.match(r"([A-Z_]+(?:, [A-Z_]+)*) = ", line)
        if match and match.group(1) in overrides: line = f"{match.group(1)} = {overrides[match.group(1)]}"
        lines.append(line)
    return "\n".join(lines)


def shell_lines(source: str) -> list[str]:
    "The `!` lines of a cell (a cell is either all shell lines or none)."
    lines = [line.strip() for line in source.splitlines() if line.strip()]
    shell = [line for line in lines if line.startswith("!")]
    assert not shell or len(shell) == len(lines), f"a cell mixes shell and Python lines:\n{source}"
    return shell


def run_command(shell, line: str) -> list[dict]:
    "Run a `!dreamframe …` line through `dreamframe.cli.main`, expanded as IPython would; its output as a stream."
    from dreamframe.cli import main
    words = shlex.split(shell.var_expand(line[1:]))
    assert words[0] == "dreamframe", f"CI runs only `!dreamframe` shell lines, not {line!r}"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(words[1:])
    assert code == 0, f"`{' '.join(words)}` exited with {code}:\n{out.getvalue()}"
    return [nbformat.v4.new_output("stream", name="stdout", text=out.getvalue())]


def run_tutorial(folder: Path, overrides: dict[str, str], until: str | None = None):
    """Run the tutorial's code cells in `folder` (the working directory) with `overrides` for its parameters; returns
    the notebook with its outputs, the shell (its variables), and when each code cell started (by cell number).
    `until`: stop after the first cell whose source contains it."""
    from execnb.shell import CaptureShell
    nb = nbformat.read(TUTORIAL, as_version=4)
    cell = parameter_cell(nb)
    cell.source = with_parameters(cell.source, overrides)
    if "matplotlib.pyplot" in sys.modules: sys.modules["matplotlib.pyplot"].close("all")   # a fresh kernel has none
    shell = CaptureShell()
    started = {}
    here = os.getcwd()
    os.chdir(folder)
    try:
        for number, cell in enumerate(nb.cells):
            if cell.cell_type != "code": continue
            started[number] = time.time_ns()
            commands = shell_lines(cell.source)
            if commands:
                cell.outputs = []
                for line in commands: cell.outputs += run_command(shell, line)
            else:
                cell.outputs = [nbformat.from_dict(output) for output in shell.run(cell.source)]
                if shell.exc:
                    raise RuntimeError(f"tutorial cell {number} failed:\n{cell.source}\n"
                                       f"{type(shell.exc).__name__}: {shell.exc}") from shell.exc
            if until is not None and until in cell.source: break
    finally:
        os.chdir(here)
    return nb, shell, started


def frames_drawn(runs: Path) -> dict[str, int]:
    "Keyframes each run folder under `runs` holds (manifest lines), by folder name."
    counts = {}
    for manifest in sorted(runs.glob("*/frames/manifest.jsonl")):
        counts[manifest.parents[1].name] = len(manifest.read_text().splitlines())
    return counts


# ---------------------------------------------------------------- the budget in the introduction

SETTINGS_CELL = "budget = run_budget("


def default_budgets(folder: Path):
    "The tutorial's settings with its own defaults, and with `RUN_COMPARISONS = True`: (namespace, budget, budget)."
    found = []
    for compare in ("False", "True"):
        _nb, shell, _started = run_tutorial(folder, {"RUN_COMPARISONS": compare}, until=SETTINGS_CELL)
        found.append(shell.user_ns)
    return found[0], found[0]["budget"], found[1]["budget"]


def budget_markdown(names: dict, budget, compared) -> str:
    "The introduction's budget: what Run-all costs with the defaults, what the comparisons add, what a disconnect costs."
    from dreamframe.budget import DOWNLOAD_MB_PER_S, OTHER_MINUTES, SESSION_MINUTES, size_text
    story = names["story_cfg"]
    movie = next(line for line in budget.work if line.what.startswith("keyframes: the movie"))
    checkpoint = names["style_speed"].checkpoint_seconds
    extra_keyframes = compared.keyframes - budget.keyframes
    sheets = compared.count("character sheets")
    extra_download = compared.download_bytes - budget.download_bytes
    within = "within" if budget.fits_session else "beyond"
    text = f"""**Run-all with the defaults** draws {budget.keyframes} keyframes ({story.substories} × {story.shots} × \
{story.frames}), trains the style and measures the result: about {budget.minutes:.0f} min on a free T4 by the README's \
estimate, {within} the {SESSION_MINUTES} min this project plans one free session for. The estimate is \
`dreamframe.budget.run_budget` on the settings the cells below use (the settings cell prints it again for yours): \
the keyframe time measured on an H200, scaled by area, steps and a T4's 1/15 of the speed, plus the downloads at \
{DOWNLOAD_MB_PER_S} MB/s and a {OTHER_MINUTES}-minute allowance for the LLM calls, loading the models, the export and \
the metrics.

{budget._repr_markdown_()}

**With `RUN_COMPARISONS = True`** Run-all also draws the comparisons on the first shots — the refiner pass, the \
movie without its style, three ways of keeping characters alike: {extra_keyframes} keyframes and up to {sheets} \
character sheets more, and {size_text(extra_download)} more to download (the refiner, IP-Adapter and its image \
encoder). That is about {compared.minutes - budget.minutes:.0f} min more, {compared.minutes:.0f} min in all: more \
than one session. The movie comes first; a comparison cut off by a disconnect continues in the next session.

**After a disconnect**, with the run folder on Google Drive, everything finished is kept: the story and the LLM's \
answers, the style images and the training's checkpoints (one every {checkpoint:.0f} s), every keyframe, the QA and \
the exports. Lost are the runtime (the installed package, the downloaded weights, the loaded models) and the work \
in flight: the keyframe being drawn ({movie.seconds_each:.0f} s) or under {checkpoint:.0f} s of style training. Run \
all again: about {budget.reconnect_minutes:.0f} min to install, download and load again, then it continues where it \
stopped. A run folder not on Drive goes with the runtime, and everything is redone."""
    paragraphs = []
    for paragraph in text.split("\n\n"):   # prose wrapped as the notebook's own markdown; tables as they are
        paragraphs.append(paragraph if paragraph.startswith("|") else textwrap.fill(paragraph, 116))
    return "\n\n".join(paragraphs)


def intro_block(nb) -> str:
    "The generated part of the tutorial's introduction, as it stands."
    intro = next(c for c in nb.cells if c.cell_type == "markdown" and BUDGET_START in c.source)
    assert BUDGET_END in intro.source, f"the introduction has {BUDGET_START!r} without {BUDGET_END!r}"
    return intro.source.split(BUDGET_START)[1].split(BUDGET_END)[0].strip()


def write_intro(block: str, path: Path = TUTORIAL) -> None:
    "Put `block` between the budget markers of the tutorial at `path`."
    nb = nbformat.read(path, as_version=4)
    intro = next(c for c in nb.cells if c.cell_type == "markdown" and BUDGET_START in c.source)
    before, rest = intro.source.split(BUDGET_START)
    intro.source = f"{before}{BUDGET_START}\n{block}\n{BUDGET_END}{rest.split(BUDGET_END)[1]}"
    nbformat.write(nb, path)


# ---------------------------------------------------------------- the docs page of the stand-in run

STAND_IN = "the tiny stand-in SDXL (random weights, 64 px, 2 steps) and the scripted offline LLM"
CAPTIONS = {   # a phrase of the cell's source -> what its output is on the stand-ins
    "budget = run_budget(": "the budget of the stand-in settings (64 px, 2 steps, local folders: nothing to "
                            "download); the introduction's table is the one for the defaults",
    "expand_story(": "the story the scripted offline LLM writes for every theme (a test fixture), not an LLM's story",
    "plot_loss_curve(": "the loss of the stand-in's 2 style updates; a real run plots 400, noisy, drifting down",
    "Image.open(": "a style image of the stand-in: random weights draw noise, where SDXL draws the movie's look",
    "plot_shot_grid(": "the first shot as the stand-in draws it: noise under the real prompts; a real run shows its "
                       "pictures",
    "Counter(": "the QA types of the scripted LLM's story",
    "Video(": "the video player is left out of this page (movie.mp4 of 54 noise frames does not compress)",
    "summary_table(": "metrics of untrained stand-in networks on noise frames: the numbers mean nothing, the table is "
                      "the real one",
}


def _output_kind(output) -> str:
    "stream, image, html, markdown or text: what an output shows."
    if output.get("output_type") == "stream": return "stream"
    data = output.get("data", {})
    for mime, kind in (("image/png", "image"), ("image/jpeg", "image"), ("text/html", "html"),
                       ("text/markdown", "markdown")):
        if mime in data: return kind
    return "text"


def _small(output):
    "The output with a picture over 40 kB made at most 640 px wide, as JPEG (noise compresses badly)."
    from PIL import Image
    data = output.get("data", {})
    picture = data.get("image/png") or data.get("image/jpeg")
    if not picture or len(picture) < 40_000: return output
    image = Image.open(io.BytesIO(base64.b64decode(picture))).convert("RGB")
    if image.width > 640: image = image.resize((640, round(image.height * 640 / image.width)), Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    data = {"image/jpeg": base64.b64encode(buffer.getvalue()).decode(), "text/plain": data["text/plain"]}
    return nbformat.from_dict({**output, "data": data})


def _relative(node, folder: Path):
    "`node` (a cell or an output) with the run's working directory `folder` written as `.`."
    return nbformat.from_dict(json.loads(json.dumps(node).replace(str(folder), ".")))


def page_cells(executed, folder: Path) -> list:
    "The docs page's cells from the tutorial executed in `folder`: headings, the parameters, every cell with output."
    cells = []
    for cell in executed.cells:
        if cell.cell_type == "markdown":
            headings = [line for line in cell.source.splitlines() if re.match(r"#{2,3} ", line)]
            if headings: cells.append(new_markdown_cell("\n\n".join(headings)))
            continue
        if cell.cell_type != "code": continue
        outputs = []
        for output in cell.get("outputs", []):
            if output.get("name") == "stderr": continue   # progress bars, and the stand-in's warnings
            if "application/vnd.jupyter.widget-view+json" in output.get("data", {}): continue   # no widget state
            if "<video" in "".join(output.get("data", {}).get("text/html", "")): continue   # noise does not compress
            outputs.append(_relative(_small(output), folder))
        shown = cell.source.lstrip().startswith("# parameters") or "FramePlayer(" in cell.source
        if not outputs and not shown: continue
        code = new_code_cell(_relative(cell, folder).source)
        code.outputs = outputs
        cells.append(code)
        if "FramePlayer(" in cell.source: cells.append(new_markdown_cell(_viewer_caption()))
        captions = [text for phrase, text in CAPTIONS.items() if phrase in cell.source]
        if captions and outputs: cells.append(new_markdown_cell(f"*Stand-in run: {captions[0]}.*"))
    return cells


def _viewer_caption() -> str:
    picture = f"![The viewer page of the stand-in run](images/{SCREENSHOT.name})\n\n" if SCREENSHOT.exists() else ""
    return (f"{picture}*Stand-in run: `view.html`, the page `write_view` writes (the widget above is the same player), "
            "in headless Chromium. The frames are the stand-in's noise; prompts, dialogue and the layout are real.*")


def render_page(executed, folder: Path) -> nbformat.NotebookNode:
    "The docs page: every output of the tutorial executed in `folder`, each picture captioned as the stand-in's."
    intro = new_markdown_cell(f"""# The Colab tutorial on the stand-ins
> Every output of the Colab tutorial as CI's run of it makes them, with {STAND_IN}.

This is [the Colab tutorial](colab_end_to_end.ipynb) as `tests/test_tutorial.py` runs it: the parameter cell points at \
{STAND_IN} and untrained metric networks; every other cell is the tutorial's own, the `!dreamframe` commands included. \
So the pictures are noise and the metrics mean nothing, while the budget, the story's structure, the records, the \
tables and the commands' answers are the real ones. Cells without output are left out, and so are progress bars \
and warnings. Written by \
`python tests/tutorial_run.py`; the test fails when it no longer matches the tutorial.""")
    cells = [new_raw_cell("---\nskip_exec: true\n---"), intro, *page_cells(executed, folder)]
    return new_notebook(cells=cells, metadata=executed.metadata)


def page_shape(nb) -> list[tuple]:
    "What a page must keep matching: each cell's type and source, and the kinds of its outputs."
    shape = []
    for cell in nb.cells:
        kinds = tuple(_output_kind(o) for o in cell.get("outputs", []))
        shape.append((cell.cell_type, cell.source if cell.cell_type == "code" else "", kinds))
    return shape


def take_screenshot(view: Path, out: Path) -> bool:
    "A JPEG of `view` (an HTML page) in headless Chromium; False when there is no Chromium here."
    from PIL import Image
    if CHROMIUM is None: return False
    with tempfile.TemporaryDirectory() as scratch:
        shot = Path(scratch) / "view.png"
        command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
                   "--disable-background-networking", "--disable-component-update", "--disable-dev-shm-usage",
                   f"--user-data-dir={Path(scratch) / 'profile'}", "--virtual-time-budget=3000",
                   f"--screenshot={shot}", "--window-size=960,720", view.as_uri()]
        subprocess.run(command, capture_output=True, text=True, timeout=120)
        if not shot.exists(): return False
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").save(out, "JPEG", quality=70)
    return True


def main() -> None:
    "Rewrite the tutorial's budget, the docs page of its stand-in run and the viewer's screenshot."
    os.environ.update(HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        names, budget, compared = default_budgets(folder)
        write_intro(budget_markdown(names, budget, compared))
        shutil.rmtree(folder / "runs", ignore_errors=True)
        executed, shell, _started = run_tutorial(folder, stand_ins(folder))
        if not take_screenshot(folder / shell.user_ns["RUN"] / "view.html", SCREENSHOT):
            print("no Chromium here: the page keeps no screenshot", file=sys.stderr)
        nbformat.write(render_page(executed, folder), PAGE)
    clean = Path(sys.executable).with_name("nbdev-clean")   # the repository's notebook format (ids, metadata)
    for path in (TUTORIAL, PAGE): subprocess.run([str(clean), "--fname", str(path)], check=True)
    print(f"wrote the budget into {TUTORIAL.relative_to(ROOT)}, and {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
