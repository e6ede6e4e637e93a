"""Keyframes on the tiny pipeline: reproducible bytes, fixed groups, manifest == files, kill + resume."""
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from dreamframe.keyframes import KeyframeConfig, MANIFEST, generate_keyframes
from dreamframe.models import load_sdxl
from dreamframe.testing import tiny_sdxl
from dreamframe.schema import sample_movie

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(steps=2, resolution=64, batch_size=2, progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_sdxl(tiny)


def run(cfg, pipe, movie, run_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return generate_keyframes(cfg, pipe, movie, run_dir)


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
    # one frame alone, in a fresh folder: its group is re-run whole, only it is written, same bytes
    lone = movie.frames[3].id
    run(KeyframeConfig(frame_ids=[lone], **SMALL), pipe, movie, tmp_path / "c")
    assert pngs(tmp_path / "c") == {f"{lone}.png": full[f"{lone}.png"]}
    # deleted frames come back identically; the others are not rewritten
    keep = (tmp_path / "a" / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns
    for i in (1, 4): (tmp_path / "a" / "frames" / f"{movie.frames[i].id}.png").unlink()
    run(cfg, pipe, movie, tmp_path / "a")
    assert pngs(tmp_path / "a") == full
    assert (tmp_path / "a" / "frames" / f"{movie.frames[0].id}.png").stat().st_mtime_ns == keep


def test_other_seed_or_movie_changes_pixels(pipe, tmp_path):
    movie = sample_movie()
    run(KeyframeConfig(limit=2, **SMALL), pipe, movie, tmp_path / "a")
    run(KeyframeConfig(limit=2, seed=1, **SMALL), pipe, movie, tmp_path / "b")
    a, b = pngs(tmp_path / "a"), pngs(tmp_path / "b")
    assert a.keys() == b.keys() and all(a[k] != b[k] for k in a)
    assert len(set(a.values())) == 2  # two frames of one group differ from each other


def test_manifest_matches_files(pipe, tmp_path):
    movie = sample_movie()
    records = run(KeyframeConfig(limit=5, **SMALL), pipe, movie, tmp_path)
    lines = manifest(tmp_path)
    assert lines == records
    assert [l["frame_id"] for l in lines] == [f.id for f in movie.frames[:5]]
    assert {l["path"] for l in lines} == {f"frames/{n}" for n in pngs(tmp_path)}
    for line in lines:
        assert {"frame_id", "prompt", "negative_prompt", "seed", "steps", "guidance", "size", "model", "path", "seconds"} <= set(line)
        assert line["size"] == [64, 64] and "Mara" not in line["prompt"] and "Tom " not in line["prompt"]
    # a line whose file is gone is dropped at the next run, which makes the frame again
    (tmp_path / "frames" / lines[2]["path"].split("/")[1]).unlink()
    run(KeyframeConfig(limit=5, **SMALL), pipe, movie, tmp_path)
    assert [l["frame_id"] for l in manifest(tmp_path)] == [f.id for f in movie.frames[:5]]
    assert KeyframeConfig(**json.loads((tmp_path / "config.json").read_text())["keyframes"]).steps == 2


DREAMFRAME = [sys.executable, "-c", "import sys; from dreamframe.cli import main; sys.exit(main())"]


def _cli(run_dir, tiny, extra=()):
    return [*DREAMFRAME, "keyframes", str(run_dir), "--model", str(tiny), "--steps", "2",
            "--resolution", "64", "--batch-size", "2", "--no-progress", *extra]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}


def test_kill_and_resume(tiny, tmp_path):
    movie = sample_movie()
    for name in ("whole", "killed"): movie.save(tmp_path / name)
    subprocess.run(_cli(tmp_path / "whole", tiny), check=True, env=_env(), cwd=ROOT, capture_output=True)
    proc = subprocess.Popen(_cli(tmp_path / "killed", tiny), env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard = tmp_path / "killed" / "frames" / MANIFEST
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and len(shard.read_text().splitlines()) >= 3: break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL); proc.wait()
    done_at_kill = len(pngs(tmp_path / "killed"))
    assert 0 < done_at_kill < len(movie.frames), done_at_kill
    subprocess.run(_cli(tmp_path / "killed", tiny), check=True, env=_env(), cwd=ROOT, capture_output=True)
    whole, killed = pngs(tmp_path / "whole"), pngs(tmp_path / "killed")
    assert len(whole) == len(movie.frames) and killed == whole
    assert sorted(p.name for p in (tmp_path / "killed" / "frames").iterdir()) == sorted([*whole, MANIFEST])
    strip = lambda lines: [{k: v for k, v in l.items() if k not in ("seconds", "model")} for l in lines]
    assert strip(manifest(tmp_path / "killed")) == strip(manifest(tmp_path / "whole"))
