"""Hostile input, round 3 (issue 22): settings, reproducibility, the CLI's messages, an unreachable hub, the docs.

Every attack tried here, and its outcome:

Non-finite numbers (point 2)
- `--guidance inf`, `--guidance Infinity`, `--set keyframes.guidance=NaN`, `--style-lr 1e999`, `--gpu-memory inf`,
  `--llm-temperature nan`: refused before anything runs, one line saying the value must be a finite number;
  `config.json`, `pipeline.json` and the manifest are left as they were (no `Infinity` anywhere).
- `"guidance": Infinity` written into `config.json` by hand: refused, naming the file and the section.
- `atomic_write_json`, the manifest writers and `save_run_config` given NaN: refused, nothing written.
Settings (point 6)
- `--style-token the --redo`: refused by the preflight before the settings are saved; `config.json` keeps the old
  token and the next plain `run` works.
- a typo `"stpes"` in `config.json`, a stray section `"keyframe"`: an error naming the file and the valid names.
- `"steps": true` and `"steps": "30"` in `config.json`, `--steps true` on the command line: refused (strict types).
Reproducibility (point 8; the executors themselves: `tests/test_run_many_ray.py`)
- a run made in this process: every frame's manifest line records the machine (device, dtype, versions) and
  `cpu_threads` 1, the setting's default, whatever torch's own count; the count is restored afterwards.
Messages (point 10, the CLI's part)
- `dreamframe eval RUN` prints its numbers (a table), not only the file that holds them.
- `dreamframe view RUN --link` for a run folder named `take #2?%`: every image path is URL-escaped and resolves.
- `--theme`'s help says it has no default (not "PydanticUndefined"); `demo --help` shows the demo's own values.
- `dreamframe status RUN`, `dreamframe --help`, `run --help`: no torch, transformers, diffusers, matplotlib,
  ipywidgets or openai imported, and under 2 s of CPU time each.
Hub unreachable (point 11)
- `--preset colab` with no network (a hub endpoint nobody listens on), no cache and no HF_HUB_OFFLINE: one line
  within seconds naming the id and what to do (network and `hf auth login`, a local folder, HF_HUB_OFFLINE=1),
  no dependency warning, nothing spent (no story, no config).
- `--preset colab` on a machine without a GPU: refused before the story, listing the GPU-only settings and the flags
  that run it on the CPU; the command with those flags runs to the end.
Repository hygiene (point 13)
- CONTRIBUTING.md links only files inside the repository, and they exist.
- README.md says how to install Chromium as root (no sudo in a container) and with sudo; no "not yet … yet"; every
  file of the repository it names (`bench/…`, `nbs/…`, `tests/…`) exists.
"""
import json
import math
import re
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import torch

from dreamframe.cli import command_parser, main
from dreamframe.config import ConfigError, save_run_config
from dreamframe.run_folder import append_manifest_line, write_manifest
from dreamframe.schema import atomic_write_json

from cli_support import DREAMFRAME, ENV, SMALL, demo_run, one_line_failure as one_line, run_copy  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[1]


def records(run_dir: Path) -> dict[str, bytes]:
    "The run's records, as bytes."
    names = ("config.json", "pipeline.json", "frames/manifest.jsonl")
    return {name: (run_dir / name).read_bytes() for name in names}


# ---------------------------------------------------------------- 2. non-finite numbers

@pytest.mark.parametrize("flag, value", [("--guidance", "inf"), ("--guidance", "Infinity"), ("--style-lr", "1e999"),
                                         ("--gpu-memory", "inf"), ("--llm-temperature", "nan"),
                                         ("--set", "keyframes.guidance=NaN")])
def test_non_finite_flags_are_refused_and_nothing_is_written(run_copy, cli, flag, value):
    before = records(run_copy)
    done = cli("run", run_copy, flag, value, "--redo", "--quiet")
    line = one_line(done)
    assert "finite number" in line or "valid number" in line, line
    assert records(run_copy) == before
    for text in before.values(): assert b"Infinity" not in text and b"NaN" not in text


def test_infinity_saved_in_config_json_names_the_file(run_copy, cli):
    config = json.loads((run_copy / "config.json").read_text())
    config["keyframes"]["guidance"] = math.inf
    (run_copy / "config.json").write_text(json.dumps(config))   # Python writes it as `Infinity`
    one_line(cli("run", run_copy, "--quiet"), "config.json [keyframes]", "finite number", "guidance")


def test_json_writers_refuse_nan(tmp_path):
    with pytest.raises(ValueError): atomic_write_json(tmp_path / "x.json", {"guidance": math.nan})
    assert not (tmp_path / "x.json").exists()
    line = {"frame_id": "s01.t01.f01", "path": "frames/s01.t01.f01.png", "guidance": math.inf}
    (tmp_path / "frames").mkdir()
    with pytest.raises(ValueError): append_manifest_line(tmp_path / "frames" / "manifest.jsonl", line)
    with pytest.raises(ValueError): write_manifest(tmp_path / "frames", [line])
    assert not (tmp_path / "frames" / "manifest.jsonl").exists() or not (tmp_path / "frames" / "manifest.jsonl").read_text()
    with pytest.raises(ConfigError, match="finite number"): save_run_config(tmp_path, {"keyframes": {"guidance": math.nan}})


# ---------------------------------------------------------------- 6. settings

def test_a_refused_style_token_is_never_saved(run_copy, cli):
    token = json.loads((run_copy / "config.json").read_text())["style"]["token"]
    one_line(cli("run", run_copy, "--style-token", "the", "--redo", "--quiet"), "--style-token 'the'", "vocabulary",
             "Nothing was saved")
    assert json.loads((run_copy / "config.json").read_text())["style"]["token"] == token
    done = cli("run", run_copy, "--quiet")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("edit, words", [
    (lambda c: c["keyframes"].update(stpes=3), ["config.json [keyframes]", "no setting(s) ['stpes']", "steps, guidance"]),
    (lambda c: c.update(keyframe={"steps": 3}), ["config.json", "no settings section(s) ['keyframe']", "keyframes"]),
    (lambda c: c["keyframes"].update(steps=True), ["config.json [keyframes]", "valid integer (got True)"]),
    (lambda c: c["keyframes"].update(steps="30"), ["config.json [keyframes]", "valid integer (got '30')"]),
])
def test_config_json_is_read_strictly(run_copy, cli, edit, words):
    config = json.loads((run_copy / "config.json").read_text())
    edit(config)
    (run_copy / "config.json").write_text(json.dumps(config))
    one_line(cli("run", run_copy, "--quiet"), *words)
    assert any(words[1] in line for line in cli("status", run_copy).stdout.splitlines())   # status says it too


def test_a_bool_is_not_a_number_on_the_command_line(run_copy, cli):
    one_line(cli("run", run_copy, "--steps", "true", "--quiet"), "steps", "valid integer (got True)")


# ---------------------------------------------------------------- 8. the thread count is a recorded setting

def test_frames_record_the_machine_and_the_thread_count(demo_run):
    lines = [json.loads(line) for line in (demo_run / "frames" / "manifest.jsonl").read_text().splitlines()]
    machines = {json.dumps(line["machine"], sort_keys=True) for line in lines}
    assert len(machines) == 1, machines
    machine = lines[0]["machine"]
    assert machine["cpu_threads"] == json.loads((demo_run / "config.json").read_text())["models"]["cpu_threads"] == 1
    assert {"device", "dtype", "torch", "diffusers"} <= set(machine), machine
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_dir = demo_run.parent / "threads"
        assert main(["demo", str(run_dir), *SMALL, "--only", "story,style,keyframes", "--identity", "none"]) == 0
        assert torch.get_num_threads() == 2   # restored after the stage
        recorded = {json.loads(line)["machine"]["cpu_threads"] for line in (run_dir / "frames/manifest.jsonl").open()}
        assert recorded == {1}
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- 10. messages of the CLI, viewer and eval

def test_eval_prints_its_numbers(run_copy, cli):
    done = cli("eval", run_copy, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "CLIP image–image, adjacent frames" in done.stdout and re.search(r"\| \d\.\d{4} \|", done.stdout), done.stdout


def test_view_link_escapes_paths(run_copy, cli, tmp_path):
    odd = tmp_path / "take #2?%"
    run_copy.rename(odd)
    page = tmp_path / "page.html"
    done = cli("view", odd, "--link", "--html", page)
    assert done.returncode == 0, done.stderr
    data = json.loads(page.read_text().split('id="data">')[1].split("</script>")[0])
    sources = [f["thumb"] for f in data["frames"]] + [src for f in data["frames"] for src in f["src"]]
    for src in sources:
        parts = urllib.parse.urlsplit(src)
        assert not parts.fragment and not parts.query and parts.path == src, src
        assert (tmp_path / urllib.parse.unquote(parts.path)).is_file(), src


def test_help_says_what_defaults_are():
    run_help = " ".join(command_parser("run").format_help().split())
    assert "PydanticUndefined" not in run_help
    assert "(no default: required for a new run)" in run_help
    demo_help = " ".join(command_parser("demo").format_help().split())
    assert "a lighthouse keeper finds a message in a bottle" in demo_help   # the demo's own theme
    assert re.search(r"--resolution RESOLUTION width = height in pixels \(SDXL: 1024\) \(default: 64\)", demo_help)


PROBE = """
import contextlib, io, sys
from dreamframe.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try: main(sys.argv[1:])
    except SystemExit: pass
heavy = ("torch", "transformers", "diffusers", "matplotlib", "ipywidgets", "openai", "huggingface_hub", "ray", "datasets",
         "scipy")
print(",".join(m for m in heavy if m in sys.modules))
"""


@pytest.mark.parametrize("args", [["status", "RUN"], ["--help"], ["run", "--help"], ["demo", "--help"]])
def test_status_and_help_answer_at_once(demo_run, args):
    "They import none of the heavy libraries (torch alone is seconds of start-up); the time itself is not asserted."
    args = [str(demo_run) if a == "RUN" else a for a in args]
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{args} imported {done.stdout.strip()}"


# ---------------------------------------------------------------- 11. hub unreachable, a GPU plan without a GPU

def test_unreachable_hub_is_one_fast_line(tmp_path):
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))   # nobody listens there; an empty cache
    run_dir = tmp_path / "run"
    started = time.perf_counter()
    done = subprocess.run([*DREAMFRAME, "run", run_dir, "--preset", "colab", "--theme", "a heist", "--llm-model",
                           "scripted", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    seconds = time.perf_counter() - started
    line = one_line(done, "--model 'stabilityai/stable-diffusion-xl-base-1.0' cannot be fetched", "cannot be reached",
                    "hf auth login", "local folder", "HF_HUB_OFFLINE=1")
    assert "warn" not in done.stderr.lower() and "deprecat" not in done.stderr.lower(), done.stderr
    assert seconds < 20, f"{seconds:.1f} s: {line}"   # no minute of retries (the probe waits 5 s at most)
    assert not (run_dir / "movie.json").exists() and not (run_dir / "config.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU runs the colab preset as planned")
def test_a_gpu_plan_on_a_cpu_is_refused_before_it_starts(tmp_path):
    run_dir = tmp_path / "run"
    small = ["--theme", "a heist", "--llm-model", "scripted", "--model", "tiny", "--vae", "none", "--substories", "1",
             "--shots", "1", "--frames", "2", "--resolution", "64", "--steps", "2", "--style-steps", "2",
             "--style-n-images", "1", "--style-resolution", "64", "--style-image-steps", "2", "--eval-tiny", "--quiet"]
    command = [*DREAMFRAME, "run", run_dir, "--preset", "colab", *small]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    line = one_line(done, "--low-memory, --dtype float16, --style-dtype float16 are planned for a GPU",
                    "CUDA is not available")
    assert not (run_dir / "movie.json").exists() and not (run_dir / "config.json").exists()   # nothing spent
    advised = re.search(r"add (--no-low-memory --dtype float32 --style-dtype float32) to run", line).group(1).split()
    done = subprocess.run([*command, *advised], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval       done" in done.stdout


# ---------------------------------------------------------------- 13. repository hygiene

def test_contributing_links_only_files_in_the_repository():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    assert "../" not in text, [line for line in text.splitlines() if "../" in line]
    targets = re.findall(r"\]\(([^)#]+)\)", text)
    assert targets, "CONTRIBUTING.md links the files it asks to read"
    for target in targets: assert (ROOT / target).exists(), target


def test_readme_installs_chromium_as_root_or_with_sudo():
    readme = (ROOT / "README.md").read_text()
    tests = readme.split("## Run the tests")[1].split("\n## ")[0]
    blocks = re.findall(r"``` sh\n(.*?)```", tests, re.S)
    assert any(line.startswith("apt-get") and "install -y chromium" in line for b in blocks for line in b.splitlines())
    assert "sudo" in tests   # and how to run it without being root
    words = " ".join(readme.split())
    assert not re.search(r"\bnot yet\b[^.]*\byet\b", words, re.I), "a 'not yet … yet' sentence"
    assert not re.search(r"\b(\w+) \1\b", words), re.search(r"\b(\w+) \1\b", words)
    named = re.findall(r"`(?:python )?((?:bench|nbs|tests|dreamframe|\.ci)/[^`\s]+)", readme)
    missing = [path for path in named if not list(ROOT.glob(path))]
    assert named and not missing, f"README.md names files that are not in the repository: {missing}"
