"""Keyframes on the tiny pipeline: reproducible bytes, fixed groups, a manifest that records each frame's settings,
stale frames kept until redo, broken PNGs redone, removed frames set aside, kill + resume."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from dreamframe.keyframes import KeyframeConfig, generate_keyframes, plan_keyframes
from dreamframe.models import load_sdxl
from dreamframe.embedding import save_style_embedding
from dreamframe.run_folder import MANIFEST
from dreamframe.schema import Movie, sample_movie
from dreamframe.testing import tiny_sdxl

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=2, resolution=64, batch_size=2, negative_prompt="blurry, low quality")
LINE_KEYS = {"frame_id", "path", "prompt", "negative_prompt", "seed", "steps", "refiner_steps", "guidance", "size",
             "batch_size", "vae_dtype", "model", "style", "recipe", "identity", "identity_characters", "identity_settings", "seconds",
             "machine"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_sdxl(tiny)


def run(cfg, pipe, movie, run_dir, **kwargs):
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if not (Path(run_dir) / "movie.json").exists(): movie.save(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return generate_keyframes(cfg, pipe, movie, run_dir, model_name="tiny", progress=False, **kwargs)


def plan(cfg, movie, run_dir):
    return plan_keyframes(cfg, movie, run_dir, model_name="tiny")


def pngs(run_dir):
    return {p.name: p.read_bytes() for p in sorted((Path(run_dir) / "frames").glob("*.png"))}


def manifest(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "frames" / MANIFEST).read_text().splitlines()]


def test_same_bytes_across_runs_and_pending_sets(pipe, tmp_path):
    movie = sample_movie()
    cfg = KeyframeConfig(limit=6, **SMALL)
    run(cfg, pipe, movie, tmp_path / "a")
    run(cfg, pipe, movie, tmp_path / "b")
    full = pngs(tmp_path / "a")
    assert len(full) == 6 and full == pngs(tmp_path / "b")
    # one frame alone, in a fresh folder: its group is drawn whole, only it is written, same bytes
    lone = movie.frames[3].id
    run(KeyframeConfig(frame_ids=[lone], **SMALL), pipe, movie, tmp_path / "c")
    assert pngs(tmp_path / "c") == {f"{lone}.png": full[f"{lone}.png"]}
    # deleted frames come back identically; the others are not rewritten
    keep = (tmp_path / "a" / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns
    for i in (1, 4): (tmp_path / "a" / "frames" / f"{movie.frames[i].id}.png").unlink()
    run(cfg, pipe, movie, tmp_path / "a")
    assert pngs(tmp_path / "a") == full
    assert (tmp_path / "a" / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns == keep


def test_other_seed_changes_pixels(pipe, tmp_path):
    movie = sample_movie()
    run(KeyframeConfig(limit=2, **SMALL), pipe, movie, tmp_path / "a")
    run(KeyframeConfig(limit=2, seed=1, **SMALL), pipe, movie, tmp_path / "b")
    a, b = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)
    assert len(set(a.values())) == 2  # two frames of one group differ from each other


def test_manifest_records_settings(pipe, tmp_path):
    movie = sample_movie()
    cfg = KeyframeConfig(limit=5, **SMALL)
    records = run(cfg, pipe, movie, tmp_path)
    lines = manifest(tmp_path)
    assert lines == records
    assert [l["frame_id"] for l in lines] == [f.id for f in movie.frames[:5]]
    assert {l["path"] for l in lines} == {f"frames/{n}" for n in pngs(tmp_path)}
    for line in lines:
        assert set(line) == LINE_KEYS
        assert (line["size"], line["steps"], line["batch_size"], line["model"], line["style"]) == ([64, 64], 2, 2, "tiny", movie.style_keyword)
        assert "Mara" not in line["prompt"] and line["negative_prompt"] == SMALL["negative_prompt"]
    saved = json.loads((tmp_path / "config.json").read_text())["keyframes"]
    assert KeyframeConfig(**saved) == cfg
    assert plan(cfg, movie, tmp_path).finished


def test_truncated_or_wrong_size_png_is_redone_byte_identical(pipe, tmp_path):
    from PIL import Image
    movie = sample_movie()
    cfg = KeyframeConfig(limit=6, **SMALL)
    run(cfg, pipe, movie, tmp_path)
    original, lines_before = pngs(tmp_path), manifest(tmp_path)
    cut, small = (tmp_path / "frames" / f"{movie.frames[i].id}.png" for i in (2, 4))
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    Image.new("RGB", (32, 32)).save(small)
    untouched = (tmp_path / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns
    p = plan(cfg, movie, tmp_path)
    assert (p.done, p.stale) == (4, {})  # broken files are simply not done
    run(cfg, pipe, movie, tmp_path)
    assert pngs(tmp_path) == original
    assert (tmp_path / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns == untouched
    strip = lambda lines: [{k: v for k, v in l.items() if k != "seconds"} for l in lines]
    assert strip(manifest(tmp_path)) == strip(lines_before)


def test_changed_steps_are_stale_until_redo(pipe, tmp_path):
    movie = sample_movie()
    two, three = KeyframeConfig(limit=6, **SMALL), KeyframeConfig(limit=6, **{**SMALL, "steps": 3})
    run(two, pipe, movie, tmp_path)
    original, manifest_text = pngs(tmp_path), (tmp_path / "frames" / MANIFEST).read_text()
    p = plan(three, movie, tmp_path)
    assert p.done == 0 and p.stale == {f.id: {"steps": (2, 3)} for f in movie.frames[:6]}
    with pytest.warns(UserWarning, match="redo=True"):
        generate_keyframes(three, pipe, movie, tmp_path, model_name="tiny", progress=False)
    assert pngs(tmp_path) == original and (tmp_path / "frames" / MANIFEST).read_text() == manifest_text
    run(three, pipe, movie, tmp_path, redo=True)
    redone = pngs(tmp_path)
    assert redone.keys() == original.keys() and all(redone[k] != original[k] for k in original)
    assert [(l["frame_id"], l["steps"]) for l in manifest(tmp_path)] == [(f.id, 3) for f in movie.frames[:6]]
    assert plan(three, movie, tmp_path).finished
    run(three, pipe, movie, tmp_path / "fresh")
    assert pngs(tmp_path / "fresh") == redone  # replaced frames are the frames a fresh run draws
    assert not list((tmp_path / "frames").glob(".*.tmp")) and not list((tmp_path / "frames").glob("manifest.rank*"))


def test_batch_size_is_recorded_and_checked(pipe, tmp_path):
    movie = sample_movie()
    run(KeyframeConfig(limit=4, **SMALL), pipe, movie, tmp_path)
    p = plan(KeyframeConfig(limit=4, **{**SMALL, "batch_size": 4}), movie, tmp_path)
    assert p.stale == {f.id: {"batch_size": (2, 4)} for f in movie.frames[:4]}


def test_hand_edited_prompt_makes_exactly_that_frame_stale(pipe, tmp_path):
    movie = sample_movie()
    cfg = KeyframeConfig(limit=8, **SMALL)
    run(cfg, pipe, movie, tmp_path)
    data = json.loads((tmp_path / "movie.json").read_text())
    data["substories"][0]["shots"][1]["frames"][2]["prompt"] = "Tom is sitting by the window"   # s01.t02.f03
    (tmp_path / "movie.json").write_text(json.dumps(data))
    edited = Movie.load(tmp_path)
    p = plan(cfg, edited, tmp_path)
    assert list(p.stale) == ["s01.t02.f03"] and list(p.stale["s01.t02.f03"]) == ["prompt"]
    assert p.stale["s01.t02.f03"]["prompt"][1].endswith("a man who looks like Ryan Gosling in blue clothes is sitting by the window")
    assert p.done == 7
    run(cfg, pipe, edited, tmp_path, redo=True)
    assert plan(cfg, edited, tmp_path).finished and len(manifest(tmp_path)) == 8


def test_removed_frames_are_set_aside(pipe, tmp_path):
    movie = sample_movie()
    cfg = KeyframeConfig(**SMALL)
    run(KeyframeConfig(limit=8, **SMALL), pipe, movie, tmp_path)
    before = pngs(tmp_path)
    shorter = movie.model_copy(deep=True)
    shorter.substories[0].shots = shorter.substories[0].shots[:1]   # s01.t02 (4 frames) is gone
    shorter.save(tmp_path)
    shorter = Movie.load(tmp_path)
    gone = [f"s01.t02.f0{i}" for i in range(1, 5)]
    p = plan(cfg, shorter, tmp_path)
    assert "4 frame(s) no longer in the story" in p.note and gone[0] in p.note
    assert p.done == 4 and p.total == len(shorter.frames)
    run(KeyframeConfig(limit=4, **SMALL), pipe, shorter, tmp_path)
    aside = tmp_path / "frames" / "set_aside"
    assert {p.name: p.read_bytes() for p in aside.iterdir()} == {f"{i}.png": before[f"{i}.png"] for i in gone}
    assert [l["frame_id"] for l in manifest(tmp_path)] == [f.id for f in shorter.frames[:4]]
    assert set(pngs(tmp_path)) == {f"{f.id}.png" for f in shorter.frames[:4]}
    assert plan(cfg, shorter, tmp_path).note == ""
    # the shot comes back: its frames are drawn again (the set-aside files are never used), a second set-aside keeps the first
    movie.save(tmp_path)
    run(KeyframeConfig(limit=8, **SMALL), pipe, movie, tmp_path)
    assert pngs(tmp_path) == before
    shorter.save(tmp_path)
    run(KeyframeConfig(limit=4, **SMALL), pipe, shorter, tmp_path)
    assert len(list(aside.iterdir())) == 8


def test_new_style_embedding_makes_frames_stale(pipe, tiny, tmp_path):
    import torch
    movie = sample_movie()
    cfg = KeyframeConfig(limit=2, **SMALL)
    path = tmp_path / "style" / "embedding.safetensors"
    save_style_embedding(path, "<df-style>", torch.randn(1, 32), torch.randn(1, 64))
    lines = run(cfg, load_sdxl(tiny), movie, tmp_path)
    assert all(l["style"].startswith("<df-style>@") and "<df-style> style" in l["prompt"] for l in lines)
    assert plan(cfg, movie, tmp_path).finished
    save_style_embedding(path, "<df-style>", torch.randn(1, 32), torch.randn(1, 64))   # retrained: same token
    p = plan(cfg, movie, tmp_path)
    assert set(p.stale) == {f.id for f in movie.frames[:2]} and all(list(c) == ["style"] for c in p.stale.values())


def test_plan_loads_no_model(pipe, tmp_path):
    movie = sample_movie()
    run(KeyframeConfig(limit=2, **SMALL), pipe, movie, tmp_path)
    code = ("import sys; from dreamframe.keyframes import KeyframeConfig, plan_keyframes; from dreamframe.schema import Movie;"
            f"cfg = KeyframeConfig(limit=2, **{SMALL!r}); run = {str(tmp_path)!r};"
            "p = plan_keyframes(cfg, Movie.load(run), run, model_name='tiny'); assert p.finished, p;"
            "heavy = [m for m in ('diffusers', 'transformers', 'accelerate', 'dreamframe.models') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


DRAW = """
import sys, warnings, torch
torch.set_num_threads(1); warnings.simplefilter("ignore")
from dreamframe.keyframes import KeyframeConfig, generate_keyframes
from dreamframe.models import load_sdxl
from dreamframe.schema import Movie
run, model = sys.argv[1], sys.argv[2]
cfg = KeyframeConfig(steps=2, resolution=64, batch_size=2, negative_prompt="blurry, low quality")
generate_keyframes(cfg, load_sdxl(model), Movie.load(run), run, model_name="tiny", progress=False)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def test_kill_and_resume(tiny, tmp_path):
    movie = sample_movie()
    for name in ("whole", "killed"): movie.save(tmp_path / name)
    draw = lambda name: [sys.executable, "-c", DRAW, str(tmp_path / name), str(tiny)]
    subprocess.run(draw("whole"), check=True, env=_env(), cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(draw("killed"), env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = tmp_path / "killed" / "frames" / MANIFEST
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if lines.exists() and len(lines.read_text().splitlines()) >= 3: break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done_at_kill = len(pngs(tmp_path / "killed"))
    assert 0 < done_at_kill < len(movie.frames), done_at_kill
    subprocess.run(draw("killed"), check=True, env=_env(), cwd=ROOT, capture_output=True)
    whole, killed = pngs(tmp_path / "whole"), pngs(tmp_path / "killed")
    assert len(whole) == len(movie.frames) and killed == whole
    assert sorted(p.name for p in (tmp_path / "killed" / "frames").iterdir()) == sorted([*whole, MANIFEST])
    strip = lambda lines: [{k: v for k, v in l.items() if k != "seconds"} for l in lines]
    assert strip(manifest(tmp_path / "killed")) == strip(manifest(tmp_path / "whole"))
