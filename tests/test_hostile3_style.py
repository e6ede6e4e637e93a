"""Hostile input, round 3 (issue 22): the style stage, the advice errors give, the embedding's bytes, pipeline
messages, and the notebook <-> command line contract. Each attack below, and what happens now:

1. Style missing
   - the embedding deleted after a finished style stage (what a kill between the last checkpoint and the write
     leaves): `status` says style *left* 4/4 updates, naming the file and `dreamframe style RUN`; `dreamframe
     keyframes` refuses in one line naming the file and that command; the command writes the same bytes again from
     the last checkpoint, and the run then has nothing to do;
   - a run stopped right before the embedding is written: `pipeline.json` does not say done, `status` says left;
     the next run resumes from the checkpoint and writes the same embedding;
   - training stopped during update 37 of 40 (Ctrl-C): the 36 finished updates are kept in a checkpoint; the next
     call runs 4 updates and lands bit-identically where an uninterrupted run lands (before: no checkpoint, 40 again);
   - a run whose settings have no style stage draws with the plain keyword and says so; the same folder with a style
     section in config.json refuses, before any file is written.
3. Advice that works (every message that gives a command, triggered, then its command run)
   - NaN rows in the embedding: `dreamframe keyframes` names `dreamframe style RUN`, which repairs the run; so does
     `dreamframe run --redo` (before: it repeated the error, and `style --redo` said "nothing to do");
   - a busy folder -> `dreamframe status RUN` (runs beside the holder and names it); frames made with other settings
     -> `--redo`; no qa.json -> `dreamframe qa RUN`; a broken QA item -> delete qa.json and `dreamframe qa RUN`;
     no frames for export, metrics or the viewer -> `dreamframe keyframes RUN`; no loss history -> remove the
     embedding and `dreamframe style RUN`; no metrics -> `dreamframe eval RUN`. Not run here: the demo's closing
     hint (`dreamframe run RUN --model stabilityai/...`), which needs the real weights and an LLM.
8. The same embedding saved 20 times in one process has one set of bytes (safetensors orders metadata per map).
10. Messages: a stale-prompt notice shows the part of the prompt that changed on both sides; a malformed stage record
    in pipeline.json is named (file and stage) and `status` keeps going, a line per stage; a decompression bomb put
    as a character sheet is refused naming the file (characters stage and identity conditioning); a failed story
    says "run again to resume" once.
12. Notebook <-> command line: a run made by the Python API (as the tutorial makes it) shows every stage done to
    `status` and `dreamframe run` redraws nothing; a run made by `dreamframe run` is continued by the Python API
    without drawing or training anything.
"""
import json
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamframe.config import load_run_config, save_stage_config
from dreamframe.embedding import MissingStyleError, read_style_embedding, save_style_embedding
from dreamframe.keyframes import KeyframeConfig, generate_keyframes
from dreamframe.models import load_sdxl
from dreamframe.pipeline import DEMO_THEME, run_pipeline, status
from dreamframe.run_folder import HOLDER_FILE, RECORDS_FILE, stage_records
from dreamframe.schema import Movie, sample_movie
from dreamframe.style import STYLE_TEMPLATES, StyleConfig, accumulate, train_embedding

sys.path.insert(0, str(Path(__file__).parent))
from fault_server import FaultServer  # noqa: E402

SMALL = ("--substories", "2", "--shots", "1", "--frames", "2")
DRAWN = "story,style,keyframes"


def _line(text: str, stage: str) -> str:
    "The status line of `stage`."
    return next(line for line in text.splitlines() if line.startswith(f"  {stage} "))


def _advised(message: str) -> list[str]:
    "The command a one-line message advises, as arguments of `dreamframe` (the text between backticks)."
    found = re.findall(r"`dreamframe ([^`]+)`", message)
    assert len(found) == 1, message
    return found[0].split()


def _copy(base: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(base, tmp_path / name))


def _files(run: Path) -> dict:
    "Bytes and times of what the drawing stages made."
    paths = [run / "style" / "embedding.safetensors", *sorted((run / "frames").glob("*.png")), run / "frames" / "manifest.jsonl"]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}


@pytest.fixture(scope="module")
def base(tiny, tmp_path_factory):
    "A run made by `dreamframe run` (demo settings, the tiny model by path): story, style and four keyframes."
    from dreamframe.cli import main
    run = tmp_path_factory.mktemp("base") / "run"
    code = main(["run", str(run), "--preset", "demo", "--model", str(tiny), "--identity", "none", "--only", DRAWN,
                 "--quiet", *SMALL])
    assert code == 0
    return run


# 1. Style missing ----------------------------------------------------------------------------------------------------

def test_a_missing_embedding_is_not_done_and_keyframes_refuse_naming_the_command(base, tmp_path, cli):
    run = _copy(base, tmp_path)
    embedding = run / "style" / "embedding.safetensors"
    original, frames = embedding.read_bytes(), _files(run)
    embedding.unlink()
    shown = cli("status", run).stdout
    assert " left " in _line(shown, "style") and "4/4 updates" in _line(shown, "style"), shown
    assert f"`dreamframe style {run}`" in _line(shown, "style")
    assert "waits for the style" in _line(shown, "keyframes")
    refused = cli("keyframes", run, "--quiet")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert str(embedding) in refused.stderr and "plain keyword" in refused.stderr
    assert cli(*_advised(refused.stderr)).returncode == 0   # `dreamframe style RUN`
    assert embedding.read_bytes() == original               # from the last checkpoint: the same rows, the same bytes
    assert cli("run", run, "--only", DRAWN).returncode == 0
    assert {p: v[1] for p, v in _files(run).items()} == {p: v[1] for p, v in frames.items()}
    assert all(" done " in _line(cli("status", run).stdout, stage) for stage in DRAWN.split(","))


def test_a_run_stopped_before_the_embedding_is_written_is_not_done(base, tmp_path, monkeypatch, cli):
    run = _copy(base, tmp_path)
    original = (run / "style" / "embedding.safetensors").read_bytes()
    shutil.rmtree(run / "style")
    import dreamframe.style as style_module
    def stopped(*args, **kwargs): raise KeyboardInterrupt   # the last checkpoint is written, the embedding is not
    monkeypatch.setattr(style_module, "save_style_embedding", stopped)
    with pytest.raises(KeyboardInterrupt): run_pipeline(run, stages=["style"], progress=False)
    monkeypatch.undo()
    assert stage_records(run)["style"]["state"] != "done"
    assert " left " in _line(status(run), "style") and "4/4 updates" in _line(status(run), "style")
    assert cli("run", run, "--only", DRAWN).returncode == 0
    assert (run / "style" / "embedding.safetensors").read_bytes() == original


def test_training_stopped_at_update_37_of_40_resumes_there(tiny, tmp_path, one_thread):
    cfg = StyleConfig(token="<t-style>", n_images=2, resolution=64, steps=40, templates=list(STYLE_TEMPLATES[:4]))
    images = [Image.new("RGB", (64, 64), colour) for colour in ("red", "navy")]
    whole = train_embedding(cfg, load_sdxl(tiny), images, tmp_path / "whole", progress=False)
    updates = []
    def stop_in_37(run, draws):   # Ctrl-C during update 37; the default checkpoints come every 100 updates
        if len(updates) == 36: raise KeyboardInterrupt
        updates.append(1)
        return accumulate(run, draws)
    with pytest.raises(KeyboardInterrupt):
        train_embedding(cfg, load_sdxl(tiny), images, tmp_path / "stopped", progress=False, forward_backward=stop_in_37)
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) == ["step-0036.safetensors"]
    updates.clear()
    def counted(run, draws):
        updates.append(1)
        return accumulate(run, draws)
    resumed = train_embedding(cfg, load_sdxl(tiny), images, tmp_path / "stopped", progress=False, forward_backward=counted)
    assert len(updates) == 4
    for key in ("clip_l", "clip_g"): assert torch.equal(resumed[key], whole[key]), key
    short = StyleConfig(token="<t-style>", n_images=2, resolution=64, steps=3, templates=list(STYLE_TEMPLATES[:4]))
    train_embedding(short, load_sdxl(tiny), images, tmp_path / "timed", progress=False, checkpoint_seconds=1e-9)
    assert len(list((tmp_path / "timed" / "checkpoints").iterdir())) == 3   # one whenever the time bound passed


def test_the_plain_keyword_only_when_the_settings_have_no_style_stage(tiny, tmp_path):
    movie, pipe = sample_movie(), load_sdxl(tiny)
    cfg = KeyframeConfig(steps=1, resolution=64, limit=1, negative_prompt="blurry")
    plain = tmp_path / "plain"
    movie.save(plain)
    with pytest.warns(UserWarning, match="settings have no style stage"):
        lines = generate_keyframes(cfg, pipe, movie, plain, progress=False)
    assert lines[0]["style"] == movie.style_keyword
    assert lines[0]["model"] == str(tiny) and load_run_config(plain)["models"]["model"] == str(tiny)
    styled = tmp_path / "styled"
    movie.save(styled)
    save_stage_config(styled, "style", StyleConfig())   # the settings include the style stage; no embedding yet
    with pytest.raises(MissingStyleError, match=re.escape(f"`dreamframe style {styled}`")):
        generate_keyframes(cfg, pipe, movie, styled, progress=False)
    assert not (styled / "frames").exists()


# 3. Advice that works -------------------------------------------------------------------------------------------------

def _poison(run: Path) -> None:
    "Give the run's embedding a NaN row (as a diverged or tampered file would have)."
    path = run / "style" / "embedding.safetensors"
    with safe_open(str(path), "pt") as file: metadata = file.metadata()
    rows = load_file(path)
    rows["clip_l"][0, 0] = float("nan")
    save_file(rows, str(path), metadata=metadata)


@pytest.mark.parametrize("repair", ["the advised command", "run --redo"])
def test_a_nan_embedding_is_repaired_by_what_its_error_advises(base, tmp_path, cli, repair):
    run = _copy(base, tmp_path)
    original = (run / "style" / "embedding.safetensors").read_bytes()
    _poison(run)
    assert " left " in _line(cli("status", run).stdout, "style")
    refused = cli("keyframes", run, "--quiet")
    assert refused.returncode == 1 and "NaN/inf" in refused.stderr, refused.stderr
    if repair == "run --redo": assert cli("run", run, "--only", DRAWN, "--redo").returncode == 0
    else: assert cli(*_advised(refused.stderr)).returncode == 0
    assert (run / "style" / "embedding.safetensors").read_bytes() == original
    assert cli("keyframes", run).returncode == 0
    assert all(" done " in _line(cli("status", run).stdout, stage) for stage in DRAWN.split(","))


def test_a_busy_folder_advises_status_which_names_the_holder(base, tmp_path, cli):
    run = _copy(base, tmp_path)
    code = f"from dreamframe.run_folder import run_lock\nimport time\nwith run_lock({str(run)!r}, 'dreamframe run (the other one)'): time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(200):
            if (run / HOLDER_FILE).exists(): break
            time.sleep(0.1)
        refused = cli("keyframes", run, "--quiet")
        assert refused.returncode == 1 and f"is in use by pid {holder.pid}" in refused.stderr, refused.stderr
        shown = cli(*_advised(refused.stderr))   # `dreamframe status RUN`, beside the holder
    finally:
        holder.kill()
        holder.wait()
    assert shown.returncode == 0
    first = shown.stdout.splitlines()[0]
    assert f"in use by pid {holder.pid}" in first and "dreamframe run (the other one)" in first, first
    assert " done " in _line(shown.stdout, "keyframes")
    assert "in use" not in cli("status", run).stdout   # the holder is gone (killed: its .lock.json stays behind)


def test_stale_frames_advise_redo(base, tmp_path, cli):
    run = _copy(base, tmp_path)
    refused = cli("keyframes", run, "--steps", "3", "--quiet")
    assert refused.returncode == 1 and "add --redo" in refused.stderr
    assert cli("keyframes", run, "--steps", "3", "--redo").returncode == 0
    lines = [json.loads(line) for line in (run / "frames" / "manifest.jsonl").read_text().splitlines()]
    assert {line["steps"] for line in lines} == {3}


def test_export_viewer_and_metrics_advice_works(base, tmp_path, cli):
    from dreamframe.evaluate import plot_metrics
    from dreamframe.viewer import plot_loss_curve
    run = _copy(base, tmp_path)
    refused = cli("export", run)   # no qa.json yet
    assert refused.returncode == 1 and cli(*_advised(refused.stderr)).returncode == 0   # `dreamframe qa RUN`
    items = json.loads((run / "qa.json").read_text())
    items[0]["frame_ids"] = ["s09.t09.f09"]
    (run / "qa.json").write_text(json.dumps(items))
    broken = cli("export", run, "--quiet")
    assert broken.returncode == 1 and "delete the file" in broken.stderr, broken.stderr
    (run / "qa.json").unlink()
    assert cli(*_advised(broken.stderr)).returncode == 0 and cli("export", run).returncode == 0

    frames = {p.name: p.read_bytes() for p in (run / "frames").glob("*.png")}
    shutil.rmtree(run / "frames")
    for command in ("export", "eval"):   # each names the command that draws the frames again
        refused = cli(command, run, "--quiet")
        assert refused.returncode == 1 and _advised(refused.stderr) == ["keyframes", str(run)], refused.stderr
    no_frames = cli("view", run, "--quiet")
    assert no_frames.returncode == 1 and cli(*_advised(no_frames.stderr)).returncode == 0   # `dreamframe keyframes RUN`
    assert cli("view", run).returncode == 0
    assert {p.name: p.read_bytes() for p in (run / "frames").glob("*.png")} == frames

    (run / "style" / "loss.json").unlink()
    with pytest.raises(FileNotFoundError) as missing: plot_loss_curve(run)
    (run / "style" / "embedding.safetensors").unlink()   # what the message says to do, then its command
    assert cli(*_advised(str(missing.value))).returncode == 0
    plot_loss_curve(run)

    with pytest.raises(FileNotFoundError) as no_metrics: plot_metrics(run)
    assert cli(*_advised(str(no_metrics.value))).returncode == 0   # `dreamframe eval RUN`
    plot_metrics(run)


# 8. The embedding's bytes ---------------------------------------------------------------------------------------------

def test_the_same_embedding_has_the_same_bytes(tmp_path):
    settings = {"steps": 400, "lr": 0.001, "model": "stabilityai/stable-diffusion-xl-base-1.0", "seed": 0}
    written = set()
    for n in range(20):   # safetensors orders the metadata of each file by a hash seeded per map
        path = save_style_embedding(tmp_path / f"{n}.safetensors", "<s>", torch.ones(1, 32), torch.ones(1, 64), settings=settings)
        written.add(path.read_bytes())
    assert len(written) == 1
    assert read_style_embedding(tmp_path / "0.safetensors")[0] == "<s>"


# 10. Messages ---------------------------------------------------------------------------------------------------------

def test_a_stale_prompt_notice_shows_the_part_that_changed(base, tmp_path, cli):
    run = _copy(base, tmp_path)
    movie = Movie.load(run)
    movie.frames[0].prompt = movie.frames[0].prompt + " under a red umbrella"
    movie.save(run)
    refused = cli("keyframes", run, "--quiet")
    assert refused.returncode == 1, refused.stderr
    old, new = re.search(r"prompt: ('[^']*') → ('[^']*')", refused.stderr).groups()
    assert old != new and "umbrella" in new and "umbrella" not in old, refused.stderr


def test_a_malformed_stage_record_is_named_and_status_keeps_going(base, tmp_path, cli):
    run = _copy(base, tmp_path)
    records = json.loads((run / RECORDS_FILE).read_text())
    records["stages"]["story"] = "done"
    (run / RECORDS_FILE).write_text(json.dumps(records))
    shown = cli("status", run)
    assert shown.returncode == 0
    lines = shown.stdout.splitlines()
    assert len(lines) == 9 and f"{run / RECORDS_FILE}, stage 'story'" in _line(shown.stdout, "story"), shown.stdout
    assert " done " in _line(shown.stdout, "keyframes")   # the frames do not depend on the broken record
    refused = cli("run", run, "--only", DRAWN)
    assert refused.returncode == 1 and f"{run / RECORDS_FILE}, stage 'story'" in refused.stderr


def _bomb(path: Path) -> Path:
    "A PNG header that claims 30000 x 30000 pixels: what a decompression bomb looks like when it is opened."
    def chunk(kind, data): return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_as_a_character_sheet_is_named(base, tmp_path, cli):
    from dreamframe.characters import character_ids, sheet_path
    run = _copy(base, tmp_path)
    first, *others = character_ids(Movie.load(run)).values()
    bomb = _bomb(sheet_path(run, first))
    for other in others: Image.new("RGB", (64, 64), "teal").save(sheet_path(run, other))   # the user's own, fine
    refused = cli("characters", run, "--quiet")
    assert refused.returncode == 1 and f"character sheet {str(bomb)!r} cannot be used" in refused.stderr, refused.stderr
    drawn = cli("keyframes", run, "--identity", "shared-attention", "--redo", "--quiet")   # the sheets condition the frames
    assert drawn.returncode == 1 and f"character sheet {str(bomb)!r}" in drawn.stderr, drawn.stderr


def test_a_failed_story_says_run_again_to_resume_once(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    def plan(request, attempt): return "500" if "level" in str(request).lower() else None   # the preflight passes
    with FaultServer(plan=plan) as server:
        failed = cli("story", tmp_path / "run", "--theme", "a lighthouse", "--llm-base-url", server.base_url,
                     "--llm-model", "m", "--llm-max-retries", "0", "--quiet")
    assert failed.returncode == 1 and "calls failed" in failed.stderr, failed.stderr
    assert failed.stderr.count("run again to resume") == 1, failed.stderr


# 12. Notebook <-> command line ----------------------------------------------------------------------------------------

def test_the_command_line_continues_a_python_api_run(tiny, tmp_path, cli):
    from dreamframe.llm import LLMConfig
    from dreamframe.pipeline import make_llm
    from dreamframe.story import StoryConfig, expand_story
    from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast
    from dreamframe.style_fast import StyleSpeed, train_style_fast
    run = tmp_path / "run"
    llm = make_llm(LLMConfig(model="scripted"), run)
    expand_story(StoryConfig(theme=DEMO_THEME, substories=2, shots=1, frames=2), llm, run, progress=False)
    style = StyleConfig(n_images=2, image_steps=2, resolution=64, steps=2, templates=list(STYLE_TEMPLATES[:4]))
    train_style_fast(style, StyleSpeed(), load_sdxl(tiny), run, progress=False)
    keyframes = KeyframeConfig(steps=2, resolution=64, negative_prompt="blurry")
    generate_keyframes_fast(keyframes, KeyframeSpeed(), load_sdxl(tiny), Movie.load(run), run, progress=False)
    made = _files(run)
    shown = cli("status", run).stdout
    for stage in DRAWN.split(","):
        assert " done " in _line(shown, stage) and "brought by the user" not in _line(shown, stage), shown
    assert cli("run", run, "--only", DRAWN).returncode == 0
    assert _files(run) == made   # nothing redrawn, nothing retrained, not even rewritten


def test_the_python_api_continues_a_command_line_run(base, tiny, tmp_path, cli):
    from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast
    from dreamframe.style_fast import StyleSpeed, train_style_fast
    run = _copy(base, tmp_path)
    saved, made = load_run_config(run), _files(run)
    train_style_fast(StyleConfig(**saved["style"]), StyleSpeed(**saved["style_speed"]), load_sdxl(tiny), run, progress=False)
    generate_keyframes_fast(KeyframeConfig(**saved["keyframes"]), KeyframeSpeed(**saved["keyframes_speed"]), load_sdxl(tiny),
                            Movie.load(run), run, progress=False)
    assert _files(run) == made
    assert all(" done " in _line(cli("status", run).stdout, stage) for stage in DRAWN.split(","))
