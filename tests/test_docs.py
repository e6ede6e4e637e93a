"""What CI can check of the docs without Quarto: the README and its notebook agree, the Colab tutorial only calls
what exists, every notebook goes through `nbdev-proc-nbs`, and an HTML rendering keeps headings and outputs."""
import ast
import html
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
TUTORIAL = NBS / "tutorials" / "colab_end_to_end.ipynb"
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not any(part.startswith((".", "_")) for part in p.relative_to(NBS).parts))
DEMO_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -e . "
                "&& dreamframe demo demo_run")
TEST_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 uv && uv pip install -e \".[dev]\" "
                "&& python -m pytest -n 2 --dist loadfile -q")


def _words(text: str) -> list[str]:
    "Alphanumeric words of `text`: compares markdown, plain text and HTML without caring about markup or escaping."
    return re.findall(r"\w+", html.unescape(text).lower())


def _contains(haystack: list[str], needle: list[str]) -> bool:
    "Is `needle` a contiguous run of words in `haystack`?"
    if not needle: return True
    text, pattern = " " + " ".join(haystack) + " ", " " + " ".join(needle) + " "
    return pattern in text


def _text_words(text: str) -> list[str]:
    "Words of plain-text output as the HTML shows them (tag-like text such as `<dramatic-style>` is dropped)."
    return _words(re.sub(r"<[^<>\n]*>", " ", html.unescape(text)))


def _html_words(page: str) -> list[str]:
    "Visible words of HTML; text that reads like a tag once unescaped (`&lt;image&gt;`, `<factory>`) is dropped on both sides."
    page = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", page)
    text = html.unescape(re.sub(r"(?s)<[^>]+>", " ", page))
    return _words(re.sub(r"<[^<>\n]*>", " ", text))


# ---------------------------------------------------------------- README and nbs/index.ipynb

def _readme_sections(markdown: str) -> list[str]:
    return [line.strip() for line in markdown.splitlines() if re.match(r"#{1,3} ", line)]


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    assert DEMO_COMMAND in readme, "README.md must give the demo set-up command verbatim"
    assert TEST_COMMAND in readme, "README.md must give the test set-up command verbatim"
    ci = (ROOT / ".ci" / "run").read_text()
    test_line = TEST_COMMAND.split("&& ")[-1]
    assert test_line in ci, f".ci/run must run the README's test command {test_line!r}"
    for step in ("pip install -q torch==2.13.0 uv", 'uv pip install -q -e ".[dev]"'):
        assert step in ci, f".ci/run must install like the README: {step!r}"
    if "chromium" in ci: assert "chromium" in readme, "CI installs chromium for the viewer test; the README must say so"


def test_index_mirrors_readme():
    readme = (ROOT / "README.md").read_text()
    index = nbformat.read(NBS / "index.ipynb", as_version=4)
    markdown = "\n\n".join(c.source for c in index.cells if c.cell_type == "markdown")
    assert _readme_sections(readme) == _readme_sections(markdown), "nbs/index.ipynb and README.md have different sections"
    for command in (DEMO_COMMAND, TEST_COMMAND): assert command in markdown
    table = [line for line in readme.splitlines() if line.startswith("| `")]
    assert table and all(line in markdown for line in table), "the stage map differs between README.md and index"


def test_stage_map_names_exist():
    "Every module and command in the README's stage map exists."
    from dreamframe.cli import COMMANDS
    readme = (ROOT / "README.md").read_text()
    rows = [line.split("|")[1:-1] for line in readme.splitlines() if line.startswith("| `")]
    for notebook, module, command, _outputs in rows:
        notebook, module = notebook.strip().strip("`"), module.strip().strip("`")
        assert list(NBS.glob(notebook + ".ipynb")), f"README's stage map names notebook {notebook} which is not in nbs/"
        importlib.import_module(module)
        for name in re.findall(r"dreamframe ([a-z][a-z-]*)", command):
            assert name in COMMANDS, f"README's stage map names `dreamframe {name}`, which is not a command"


def test_sidebar_lists_every_notebook():
    quarto = (NBS / "_quarto.yml").read_text()
    listed = re.findall(r"^\s*-\s+(\S+\.ipynb)\s*$", quarto, flags=re.M)
    for notebook in NOTEBOOKS:
        assert str(notebook.relative_to(NBS)) in listed, f"{notebook.relative_to(NBS)} is missing from the sidebar in nbs/_quarto.yml"
    for name in listed: assert (NBS / name).exists(), f"nbs/_quarto.yml's sidebar lists {name}, which does not exist"


# ---------------------------------------------------------------- the Colab tutorial

def _tutorial_code() -> list[tuple[int, str]]:
    "Code cells of the tutorial with shell (`!`) and magic (`%`) lines turned into `pass`."
    nb = nbformat.read(TUTORIAL, as_version=4)
    cells = []
    for number, cell in enumerate(nb.cells):
        if cell.cell_type != "code": continue
        lines = [re.sub(r"^(\s*)[!%].*$", r"\1pass", line) for line in cell.source.splitlines()]
        cells.append((number, "\n".join(lines)))
    return cells


def test_tutorial_is_colab_ready():
    nb = nbformat.read(TUTORIAL, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "raw" and re.search(r"(?m)^skip_exec:\s*true\s*$", first.source), \
        "the tutorial must start with a raw frontmatter cell `---\\nskip_exec: true\\n---` (not executed in CI)"
    badge = "https://colab.research.google.com/github/dreamframe/dreamframe/blob/main/nbs/tutorials/colab_end_to_end.ipynb"
    assert any(badge in c.source and "colab-badge.svg" in c.source for c in nb.cells if c.cell_type == "markdown")


def test_tutorial_code_parses_and_calls_real_names():
    "Every code cell parses; every dreamframe name it imports or calls exists, with keyword arguments it accepts."
    from dreamframe.cli import COMMANDS
    nb = nbformat.read(TUTORIAL, as_version=4)
    for cell in nb.cells:  # shell commands: only real subcommands
        if cell.cell_type == "code":
            for name in re.findall(r"(?m)^\s*!dreamframe\s+([a-z-]+)", cell.source):
                assert name in COMMANDS, f"the tutorial runs `dreamframe {name}`, which is not a command"
    imported: dict[str, object] = {}  # local name -> object (module, function, class)
    checked = 0
    for number, source in _tutorial_code():
        try: tree = ast.parse(source)
        except SyntaxError as error: pytest.fail(f"tutorial cell {number} does not parse: {error}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dreamframe"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert alias.name != "*", f"cell {number}: no star imports from {node.module}; name what you use"
                    assert hasattr(module, alias.name), f"cell {number}: {node.module} has no {alias.name}"
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("dreamframe"):
                        module = importlib.import_module(alias.name)
                        imported[alias.asname or alias.name.split(".")[0]] = module if alias.asname else importlib.import_module("dreamframe")
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call): continue
            target = _resolve_call(node.func, imported)
            if target is None: continue
            checked += 1
            _check_keywords(target, node, number)
    assert checked >= 8, f"the tutorial should call the stage functions; only {checked} dreamframe calls found"


def _resolve_call(func: ast.expr, imported: dict):
    "The dreamframe object a call expression names, or None when it is not one; fails on a missing attribute."
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in imported: return None
    obj, path = imported[func.id], func.id
    for attr in reversed(parts):
        if inspect.ismodule(obj) and obj.__name__.startswith("dreamframe") and not hasattr(obj, attr):
            try: obj = importlib.import_module(f"{obj.__name__}.{attr}"); path += "." + attr; continue
            except ImportError: pass
        if not (inspect.ismodule(obj) or inspect.isclass(obj)): return None  # a method of an instance: not checked here
        assert hasattr(obj, attr), f"the tutorial calls {path}.{attr}, which does not exist"
        obj, path = getattr(obj, attr), path + "." + attr
    return obj if callable(obj) else None


def _check_keywords(target, call: ast.Call, number: int):
    try: signature = inspect.signature(target)
    except (TypeError, ValueError): return
    params = signature.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()): return
    for keyword in call.keywords:
        if keyword.arg is not None:
            assert keyword.arg in params, f"cell {number}: {getattr(target, '__qualname__', target)} has no argument {keyword.arg!r} (has {list(params)})"


# ---------------------------------------------------------------- docs processing and HTML rendering

_HINT = ("\nnbdev's docs processor executes only import, export and show_doc cells, from the repository root: a cell "
         "mixing imports with other code runs without the cells before it. Put such imports in a cell of their own.")


@pytest.fixture(scope="module")
def processed(tmp_path_factory) -> tuple[Path, str]:
    "A copy of the repository after `nbdev-proc-nbs` (with a stand-in `quarto`, which CI lacks), and its error if any."
    work = tmp_path_factory.mktemp("docs") / "repo"
    shutil.copytree(ROOT, work, ignore=shutil.ignore_patterns(".git", ".venv", "venv", "_proc", "_docs", "*.egg-info",
                                                                "__pycache__", ".whl*", ".gl", ".pytest_cache", "_run*",
                                                                "demo_run", "runs"))
    bin_dir = work.parent / "bin"
    bin_dir.mkdir()
    (bin_dir / "quarto").write_text("#!/bin/sh\necho 1.6.0\n")
    (bin_dir / "quarto").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    command = [str(Path(sys.executable).with_name("nbdev-proc-nbs")), "--n-workers", "0"]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert (work / "nbs" / "nbdev.yml").read_text() == (NBS / "nbdev.yml").read_text(), \
        "nbdev regenerates nbs/nbdev.yml differently: commit what nbdev-proc-nbs writes"
    return work, "" if result.returncode == 0 else result.stderr[-3000:]


def _processed_notebook(notebook: Path, processed) -> Path:
    """The `_proc/` copy of `notebook`. `nbdev-proc-nbs` stops at the first failing notebook; one it did not reach is
    processed here on its own, the same way (nbdev.serve_drv), so each notebook's test reports its own error."""
    work, error = processed
    out = work / "_proc" / notebook.relative_to(NBS)
    if out.exists(): return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # in a child process: the notebook's cells (imports, reloads) must not touch this test process's modules
    script = ("import sys; from pathlib import Path; from nbdev.processors import FilterDefaults; "
              "from nbdev.serve_drv import exec_nb; exec_nb(Path(sys.argv[1]), Path(sys.argv[2]), FilterDefaults)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    result = subprocess.run([sys.executable, "-c", script, str(work / "nbs" / notebook.relative_to(NBS)), str(out)],
                            cwd=work, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode: pytest.fail(f"nbdev-proc-nbs fails on {notebook.name}: {result.stderr[-2500:]}{_HINT}")
    return out


_CELL_KEYS = {"cell_type", "id", "metadata", "source", "outputs", "execution_count", "attachments"}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[str(p.relative_to(NBS)) for p in NOTEBOOKS])
def test_notebook_processes_and_renders(notebook, processed):
    rel = notebook.relative_to(NBS)
    out = _processed_notebook(notebook, processed)
    assert out.exists(), f"nbdev-proc-nbs did not produce {rel}"
    source = nbformat.read(notebook, as_version=4)
    proc = nbformat.read(out, as_version=4)
    for cell in proc.cells:  # nbdev leaves its own keys (has_sd, …) that nbformat's validator rejects
        for key in set(cell) - _CELL_KEYS: del cell[key]
        cell.metadata.pop("execution", None)
    from nbconvert import HTMLExporter
    page, _resources = HTMLExporter().from_notebook_node(proc)
    words = _html_words(page)
    headings = [line.lstrip("#").strip() for c in source.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if re.match(r"#{1,4} ", line)]
    assert headings, f"{rel} has no headings"
    for heading in headings:
        assert _contains(words, _words(heading)), f"{rel}: heading {heading!r} is missing from the HTML rendering"
    outputs = 0
    for cell in proc.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if output.get("output_type") == "stream": expected = _text_words(output.get("text", ""))[:40]
            elif "image/png" in data:
                assert data["image/png"].strip()[:64] in page, f"{rel}: an image output is missing from the HTML"
                outputs += 1
                continue
            elif "text/html" in data: expected = _html_words(data["text/html"])[:40]
            elif "text/markdown" in data:  # link targets and raw tags are not visible text
                visible = re.sub(r"\[([^\]]*)\]\([^)]*\)(\{[^}]*\})?", r"\1", data["text/markdown"])  # Quarto {attrs} too
                visible = re.sub(r"(?m)^\s*(```|~~~)\S*\s*$", " ", visible)  # code fences and their language
                for line in [l for l in visible.splitlines() if _html_words(l)][:15]:  # line by line: Quarto's
                    assert _contains(words, _html_words(line)), f"{rel}: markdown output line {line[:80]!r} is missing"  # {attrs} stay as text in nbconvert
                outputs += 1
                continue
            elif "text/plain" in data: expected = _text_words(data["text/plain"])[:40]
            else: continue
            assert _contains(words, expected), f"{rel}: output {' '.join(expected)[:80]!r}… is missing from the HTML rendering"
            outputs += 1
    saved = sum(len(c.get("outputs", [])) for c in source.cells if c.cell_type == "code")
    if saved: assert outputs, f"{rel} has saved outputs but none survive processing and rendering"
