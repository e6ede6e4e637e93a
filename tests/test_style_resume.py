"""Stage 2 survives a real SIGKILL and resumes from what is on disk, checked (CPU, tiny pipeline, seconds each):
- a `train_style_fast` process killed after update 5 resumes in a new process from its update-3 checkpoint and reaches
  the bit-identical embedding (and loss history) of an uninterrupted run; the lesson's `train_style` does too;
- a checkpoint that does not read back, or that was made with other settings or other images, is not resumed from;
- a style image or an embedding cut short by a kill is made again, byte-identical; a style image that decodes but
  has the wrong size is made again too."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from dreamframe import models
    from dreamframe.schema import sample_movie
    from dreamframe.style import StyleConfig, STYLE_TEMPLATES, train_style
    from dreamframe.style_fast import StyleSpeed, train_style_fast
    tiny, run, kill_at, loop = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if not (run / "movie.json").exists(): sample_movie().save(run)
    cfg = StyleConfig(n_images=4, image_steps=2, resolution=64, steps=8, templates=list(STYLE_TEMPLATES[:4]))
    updates, step = [0], torch.optim.AdamW.step
    def counted(self, *args, **kwargs):  # SIGKILL right after update `kill_at`, as a crash would
        result = step(self, *args, **kwargs); updates[0] += 1
        if updates[0] == kill_at: os.kill(os.getpid(), signal.SIGKILL)
        return result
    torch.optim.AdamW.step = counted
    pipe = models.load_sdxl(tiny)
    if loop == "lesson": train_style(cfg, pipe, run, progress=False)
    else: train_style_fast(cfg, StyleSpeed(checkpoint_every=3, log_every=2) if loop == "engine" else StyleSpeed.off(), pipe, run, progress=False)
""")


def _child(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def whole(tiny, tmp_path_factory):
    "An uninterrupted run of the engine (checkpoints at 3, 6, 8)."
    run = tmp_path_factory.mktemp("whole") / "run"
    done = _child(tiny, run, -1, "engine")
    assert done.returncode == 0, done.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def killed_at_5(tiny, tmp_path_factory):
    "A run of the engine killed after update 5 (its one checkpoint: update 3); tests change copies of it."
    run = tmp_path_factory.mktemp("killed") / "run"
    dead = _child(tiny, run, 5, "engine")
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-2000:]
    return run


def _copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def _embedding(run):
    return load_file(run / "style" / "embedding.safetensors")


def _assert_same_embedding(run, whole):
    a, b = _embedding(run), _embedding(whole)
    for key in ("clip_l", "clip_g"): assert torch.equal(a[key], b[key]), key
    assert json.loads((run / "style" / "loss.json").read_text()) == json.loads((whole / "style" / "loss.json").read_text())


def _checkpoints(run):
    return sorted(p.name for p in (run / "style" / "checkpoints").glob("*.safetensors"))


def test_sigkill_then_resume_matches_uninterrupted(tiny, whole, killed_at_5, tmp_path):
    killed = _copy(killed_at_5, tmp_path)
    assert not (killed / "style" / "embedding.safetensors").exists()
    assert _checkpoints(killed) == ["step-0003.safetensors"]
    assert not list((killed / "style").rglob(".*tmp*"))  # no half-written files left behind
    resumed = _child(tiny, killed, -1, "engine")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_embedding(killed, whole)


def test_lesson_killed_then_rerun_matches_the_engine_with_every_switch_off(tiny, tmp_path):
    "The lesson checkpoints every 100 updates: killed at 5 of 8 it starts again, and lands where the plain engine does."
    killed = tmp_path / "killed"
    assert _child(tiny, killed, 5, "lesson").returncode == -signal.SIGKILL
    assert _child(tiny, killed, -1, "lesson").returncode == 0
    assert _child(tiny, tmp_path / "plain", -1, "plain").returncode == 0  # same process setup: same float rounding
    _assert_same_embedding(killed, tmp_path / "plain")


def _killed_at(tiny, tmp_path, kill_at):
    "A run killed after update `kill_at` (checkpoints every 3 updates)."
    run = tmp_path / "run"
    assert _child(tiny, run, kill_at, "engine").returncode == -signal.SIGKILL
    return run


def test_a_checkpoint_that_does_not_read_back_is_not_resumed_from(tiny, whole, tmp_path):
    run = _killed_at(tiny, tmp_path, 7)
    assert _checkpoints(run) == ["step-0003.safetensors", "step-0006.safetensors"]
    newest = run / "style" / "checkpoints" / "step-0006.safetensors"
    newest.write_bytes(newest.read_bytes()[:200])  # a damaged file (a full disk, a bad copy)
    assert _child(tiny, run, -1, "engine").returncode == 0
    _assert_same_embedding(run, whole)


def test_a_checkpoint_made_with_other_settings_or_images_is_not_resumed_from(tiny, whole, killed_at_5, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    run = _copy(killed_at_5, tmp_path)
    path = run / "style" / "checkpoints" / "step-0003.safetensors"
    with safe_open(str(path), "pt") as file: metadata = file.metadata()
    tensors = {key: value + 1.0 for key, value in load_file(path).items()}  # different numbers, another run's fingerprint
    save_file(tensors, str(path), metadata={**metadata, "fingerprint": "0" * 16})
    assert _child(tiny, run, -1, "engine").returncode == 0
    _assert_same_embedding(run, whole)
    assert _checkpoints(run) == _checkpoints(whole)  # the stale one was deleted, not kept beside the new ones


def test_damaged_images_and_embedding_are_made_again(tiny, whole, tmp_path):
    from PIL import Image
    run = _copy(whole, tmp_path)   # a finished run, then damaged as a kill or a bad copy would
    images = sorted((run / "style" / "images").glob("*.png"))
    originals = {p: p.read_bytes() for p in images}
    images[0].write_bytes(originals[images[0]][:120])  # cut short
    Image.new("RGB", (32, 32)).save(images[1])  # decodes, but not the size the record says
    embedding = run / "style" / "embedding.safetensors"
    embedding.write_bytes(embedding.read_bytes()[:300])
    assert _child(tiny, run, -1, "engine").returncode == 0
    assert {p: p.read_bytes() for p in images} == originals
    _assert_same_embedding(run, whole)
