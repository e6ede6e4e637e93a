"""Issue: the run folder is the one source of truth. `RUN/config.json` drives every command, one flag per setting,
nothing finished is overwritten unasked, the user's edits win, one process per run folder, resume checks the disk,
check before spending."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dreamframe.cli import COMMANDS, command_parser, main
from dreamframe.pipeline import SECTIONS, STAGE_SECTIONS, section_class
from dreamframe.config import setting_fields

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
DREAMFRAME = [sys.executable, "-m", "dreamframe.cli"]
SMALL = ["--substories", "2", "--shots", "1", "--frames", "2", "--style-steps", "2", "--quiet"]  # a 4-frame demo


def dreamframe(*args, cwd=None, timeout=600):
    "Run the `dreamframe` command in a fresh process."
    return subprocess.run([*DREAMFRAME, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=timeout)



def snapshot(run_dir: Path) -> dict:
    "Every frame PNG's bytes and the manifest's lines without their wall-clock `seconds`."
    frames = run_dir / "frames"
    lines = [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (frames / "manifest.jsonl").read_text().splitlines()]
    return {p.name: p.read_bytes() for p in sorted(frames.glob("*.png"))} | {"manifest": lines}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    "One finished demo run (the full 24-frame demo), made once; tests work on copies."
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", str(run_dir), "--quiet"]) == 0
    return run_dir


@pytest.fixture
def run_copy(demo_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(demo_run, copy)
    return copy


def test_stage_command_on_a_finished_run_changes_nothing(run_copy, cli):
    before, manifest = snapshot(run_copy), (run_copy / "frames" / "manifest.jsonl").read_bytes()
    done = cli("keyframes", run_copy)
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stdout + done.stderr
    assert snapshot(run_copy) == before and (run_copy / "frames" / "manifest.jsonl").read_bytes() == manifest


def test_changed_setting_is_refused_then_redone_on_request(run_copy, cli):
    before, config = snapshot(run_copy), (run_copy / "config.json").read_text()
    refused = cli("keyframes", run_copy, "--steps", "3")
    assert refused.returncode == 1
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.stderr
    assert "24 finished frames" in refused.stderr and "steps: 2 → 3" in refused.stderr and "--redo" in refused.stderr
    assert snapshot(run_copy) == before and (run_copy / "config.json").read_text() == config

    redone = cli("keyframes", run_copy, "--steps", "3", "--redo")
    assert redone.returncode == 0, redone.stderr
    after = snapshot(run_copy)
    assert all(after[name] != before[name] for name in before if name.endswith(".png"))
    lines = [json.loads(line) for line in (run_copy / "frames" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and len({l["frame_id"] for l in lines}) == 24 and {l["steps"] for l in lines} == {3}
    status = cli("status", run_copy).stdout
    assert any(line.split()[:3] == ["keyframes", "done", "24/24"] for line in status.splitlines()), status


def test_hand_edited_prompt_is_kept_and_only_its_frame_is_stale(run_copy, cli):
    movie = json.loads((run_copy / "movie.json").read_text())
    movie["substories"][0]["shots"][1]["frames"][2]["prompt"] = "In the harbour, Mara is holding a red lantern"
    (run_copy / "movie.json").write_text(json.dumps(movie, indent=1))
    edited = (run_copy / "movie.json").read_bytes()
    before = snapshot(run_copy)
    rerun = cli("run", run_copy)
    assert rerun.returncode == 1 and "Traceback" not in rerun.stderr
    assert "1 finished frames (s01.t02.f03)" in rerun.stderr and "prompt" in rerun.stderr
    assert (run_copy / "movie.json").read_bytes() == edited and snapshot(run_copy) == before
    redone = cli("run", run_copy, "--redo")
    assert redone.returncode == 0, redone.stderr
    after = snapshot(run_copy)
    assert [n for n in before if before[n] != after[n] and n.endswith(".png")] == ["s01.t02.f03.png"]
    assert (run_copy / "movie.json").read_bytes() == edited


def test_truncated_png_is_redone_byte_identical(run_copy, cli):
    png = run_copy / "frames" / "s02.t01.f03.png"
    original = png.read_bytes()
    png.write_bytes(original[: len(original) // 3])
    assert "23/24" in cli("status", run_copy).stdout
    rerun = cli("run", run_copy)
    assert rerun.returncode == 0, rerun.stderr
    assert png.read_bytes() == original


def test_demo_keeps_its_characters(demo_run):
    "The demo draws one sheet per character, conditions every frame on the ones it shows, and measures identity."
    from dreamframe.characters import character_ids
    from dreamframe.schema import frame_characters
    from dreamframe.schema import Movie
    movie, records = Movie.load(demo_run), json.loads((demo_run / "characters" / "characters.json").read_text())["characters"]
    ids = sorted(character_ids(movie).values())
    assert sorted(p.stem for p in (demo_run / "characters").glob("*.png")) == ids == sorted(records)
    assert all(r["source"] == "generated" and r["seed"] == r["seeds"][r["chosen"]] for r in records.values())
    lines = [json.loads(line) for line in (demo_run / "frames" / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == len(movie.frames) and {l["identity"] for l in lines} == {"shared-attention"}
    assert all(list(l["identity_characters"]) == frame_characters(movie, l["frame_id"]) for l in lines)
    assert all(digest == records[i]["digest"] for l in lines for i, digest in l["identity_characters"].items())
    identity = json.loads((demo_run / "eval" / "metrics.json").read_text())["identity"]
    assert isinstance(identity["overall"]["score"], float) and sorted(identity["characters"]) == ids


def test_characters_command_draws_the_sheets_even_without_an_identity_mode(run_copy, cli):
    shutil.rmtree(run_copy / "characters")
    done = cli("characters", run_copy, "--identity", "none")
    assert done.returncode == 0, done.stderr
    assert "nothing to do" not in done.stdout + done.stderr
    from dreamframe.characters import character_ids
    from dreamframe.schema import Movie
    drawn = sorted(p.stem for p in (run_copy / "characters").glob("*.png"))
    assert drawn == sorted(character_ids(Movie.load(run_copy)).values()) and len(drawn) > 1


def test_second_command_on_a_busy_folder_exits_at_once(demo_run, tmp_path):
    first_dir, lone_dir = tmp_path / "together", tmp_path / "alone"
    first = subprocess.Popen([*DREAMFRAME, "demo", str(first_dir), *SMALL], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(200):
        if (first_dir / ".lock.json").exists(): break
        time.sleep(0.05)
    started = time.monotonic()
    second = dreamframe("demo", first_dir, *SMALL)
    assert time.monotonic() - started < 2.0
    assert second.returncode == 1 and "is in use by pid" in second.stderr and str(first.pid) in second.stderr
    assert first.wait(timeout=300) == 0
    assert main(["demo", str(lone_dir), *SMALL]) == 0   # the same demo, alone (in this process: no start-up to pay)
    assert snapshot(first_dir) == snapshot(lone_dir)
    assert (first_dir / "export" / "llava.json").read_bytes() == (lone_dir / "export" / "llava.json").read_bytes()


def test_a_killed_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([*DREAMFRAME, "demo", str(run_dir), *SMALL], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if (run_dir / ".lock.json").exists(): break
        time.sleep(0.05)
    holder.send_signal(signal.SIGKILL); holder.wait()
    assert dreamframe("status", run_dir).returncode == 0
    resumed = dreamframe("demo", run_dir, *SMALL)
    assert resumed.returncode == 0, resumed.stderr


def test_missing_model_fails_before_any_llm_request(tmp_path, cli):
    from dreamframe.testing import LocalLLMServer
    with LocalLLMServer() as server:
        done = cli("run", tmp_path / "run", "--theme", "a dog learns to sail", "--model", "does/not/exist",
                          "--llm-model", "test", "--base-url", server.base_url)
        assert done.returncode == 1 and "does/not/exist" in done.stderr and "Traceback" not in done.stderr
        assert server.requests == []
    assert not (tmp_path / "run" / "movie.json").exists()


# ---------------------------------------------------------------- one name, one default, one meaning per flag

def _flag_table(command):
    parser = command_parser(command)
    table = {}
    for action in parser._actions:
        if "." in (action.dest or ""):
            for flag in action.option_strings:
                if not flag.startswith("--no-"): table[flag] = (action.dest, action.default)
    return table


def test_every_setting_has_one_flag_in_run_and_its_stage_command():
    run = _flag_table("run")
    meaning = {}
    for command in [*STAGE_SECTIONS, "run", "demo"]:
        for flag, (dest, default) in _flag_table(command).items():
            assert meaning.setdefault(flag, dest) == dest, f"{flag} means {meaning[flag]} and {dest}"
    for stage, sections in STAGE_SECTIONS.items():
        stage_flags = _flag_table(stage)
        for section in sections:
            for setting in setting_fields(section_class(section)):
                dest = f"{section}.{setting.name}"
                in_stage = [f for f, (d, _) in stage_flags.items() if d == dest]
                in_run = [f for f, (d, _) in run.items() if d == dest]
                assert in_stage and in_stage == in_run, f"{dest}: {in_stage} in `{stage}`, {in_run} in `run`"
    # the one default of a setting is its field's: the help text says it, and an unset flag leaves the saved value
    help_text = command_parser("keyframes").format_help()
    assert "denoising steps" in help_text and "(default: 30)" in help_text


def test_one_word_one_meaning():
    run = _flag_table("run")
    assert run["--model"][0] == "models.model" and run["--llm-model"][0] == "llm.model"
    assert run["--steps"][0] == "keyframes.steps" and run["--style-steps"][0] == "style.steps"
    assert run["--base-url"][0] == run["--llm-base-url"][0] == "llm.base_url"
