"""The code base stays readable the way ../shared/STYLE.md asks: no import cycles, stages that don't import each
other or the stand-ins at module level, notebooks named after their modules, one settings idiom, and code that fits
a screen (lines of at most 120 characters, one statement per line: no `;` chains).

Size is not a rule: the old budgets (350 lines a module, 60 lines an exported cell) were met by squeezing lines, so
they are retired; a module that grows moves a whole idea into its own notebook. The line rule binds every module."""
import ast
import io
import json
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dreamframe"
MODULES = {p.stem: p for p in PACKAGE.glob("*.py") if not p.name.startswith("_")}
STAGES = {"story", "style", "characters", "keyframes", "qa", "export", "viewer", "evaluate"}
MAX_LINE = 120   # STYLE.md: "≲ 110 characters"; 120 leaves room for a field's help comment


def imports(path: Path) -> tuple[set[str], set[str]]:
    "dreamframe modules `path` imports at module level, and inside functions."
    tree, top, inner = ast.parse(path.read_text()), set(), set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module if node.level == 0 else f"dreamframe.{node.module}"
            names = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found = {n.split(".")[1] for n in names if n.startswith("dreamframe.") and n.split(".")[1] in MODULES}
        (top if node in tree.body else inner).update(found)
    for target in re.findall(r"[\"']dreamframe\.(\w+):", path.read_text()):  # lazy `module:name` targets
        if target in MODULES: inner.add(target)
    return top, inner


def generated_lines(text: str) -> set[int]:
    "Numbers of the lines nbdev writes itself: the module docstring (the notebook's summary) and `__all__`."
    lines = set()
    for node in ast.parse(text).body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and node.lineno == 1
        names = isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"]
        if docstring or names: lines.update(range(node.lineno, node.end_lineno + 1))
    return lines


def squeezed_lines(text: str) -> tuple[list[int], list[int]]:
    "(numbers of lines over MAX_LINE characters, numbers of lines holding a `;` between statements)."
    generated = generated_lines(text)
    long = [number for number, line in enumerate(text.splitlines(), start=1)
            if len(line) > MAX_LINE and number not in generated]
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    chained = sorted({t.start[0] for t in tokens if t.type == tokenize.OP and t.string == ";"})
    return long, chained


def test_unwrapped_modules_fit_a_screen():
    problems = {}
    for name, path in sorted(MODULES.items()):
        long, chained = squeezed_lines(path.read_text())
        if long or chained: problems[name] = {f"over {MAX_LINE} characters": long, "`;` chains": chained}
    assert not problems, f"lines to unwrap (see STYLE.md, rule 2), by module and line number: {problems}"


def test_the_line_check_sees_squeezed_code():
    squeezed = f'"""{"A long summary. " * 9}"""\nx, y = "x" * 200, []; count = 0  {"#" * 100}\ntext = "a; b"\n'
    assert squeezed_lines(squeezed) == ([2], [2])   # the generated docstring and a `;` inside a string pass


def test_no_import_cycles():
    graph = {name: set.union(*imports(path)) - {name} for name, path in MODULES.items()}
    def visit(name, stack):
        assert name not in stack, f"import cycle: {' -> '.join(stack + [name])}"
        for other in graph[name]: visit(other, stack + [name])
    for name in graph: visit(name, [])


def test_stages_import_neither_each_other_nor_the_stand_ins():
    for name in STAGES:
        top, inner = imports(MODULES[name])
        assert not (top | inner) & (STAGES - {name}), f"{name} imports another stage: {(top | inner) & STAGES}"
        assert "testing" not in top, f"{name} imports dreamframe.testing at module level"
    for engine, lesson in (("style_fast", "style"), ("keyframes_fast", "keyframes")):
        assert engine not in set.union(*imports(MODULES[lesson])), f"the lesson {lesson} imports its engine {engine}"


def test_notebooks_are_named_after_their_modules():
    for notebook in (ROOT / "nbs").glob("[0-9]*.ipynb"):
        cells = json.loads(notebook.read_text())["cells"]
        target = next(re.search(r"default_exp\s+(\w+)", "".join(c["source"])).group(1) for c in cells
                      if "default_exp" in "".join(c["source"]))
        assert notebook.stem.split("_", 1)[1] == target, f"{notebook.name} exports dreamframe/{target}.py"


def test_one_settings_idiom_and_no_hand_written_parsers():
    for name, path in MODULES.items():
        text = path.read_text()
        assert "__post_init__" not in text, f"{name}: settings are validated by field constraints, not __post_init__"
        if name not in ("cli", "run_many"):
            assert "ArgumentParser(" not in text, f"{name}: options are generated by dreamframe.cli, not written by hand"
        assert not re.search(r"(?m)^\w+\.\w+ = _?\w+$", text), f"{name}: methods are added with @patch, not by assignment"
