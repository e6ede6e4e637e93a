"""Stage 2 never overwrites finished work unasked (issue 13, item 3), on the CPU with the tiny pipeline:
- a finished embedding with today's settings is kept, with or without `redo` (no file is touched);
- other training settings, other image settings, other images of your own or another model stop the call before
  anything is touched, and the message names what changed (old -> new) and `redo`;
- `redo=True` remakes only the style images whose settings changed, retrains, and lands bit-identically where a fresh
  run with the new settings lands; a redo killed halfway leaves the old embedding in place and resumes on the next redo;
- speed switches (`StyleSpeed`) never make finished work stale."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dreamframe import models
from dreamframe.config import ConfigError
from dreamframe.schema import sample_movie
from dreamframe.style import STYLE_TEMPLATES, StyleConfig, train_style
from dreamframe.style_fast import StyleSpeed, train_style_fast
from dreamframe.testing import tiny_sdxl

CFG = StyleConfig(n_images=4, image_steps=2, resolution=64, steps=4, templates=list(STYLE_TEMPLATES[:4]))


pytestmark = pytest.mark.usefixtures("one_thread")  # `one_thread` and `tiny` come from conftest.py


def _new_run(tmp_path, name="run"):
    run = tmp_path / name
    sample_movie().save(run)
    return run


def _train(cfg, tiny, run, **kwargs):
    return train_style(cfg, models.load_sdxl(tiny), run, progress=False, **kwargs)


def _snapshot(run):
    files = [run / "config.json", *sorted((run / "style").rglob("*"))]
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files if p.is_file()}


def _rows(path):
    return load_file(path)


def _same_rows(a, b):
    return all(torch.equal(a[key], b[key]) for key in ("clip_l", "clip_g"))


@pytest.fixture
def finished(tiny, tmp_path):
    run = _new_run(tmp_path)
    _train(CFG, tiny, run)
    return run


def test_unchanged_settings_touch_nothing(tiny, finished):
    before = _snapshot(finished)
    _train(CFG, tiny, finished)
    _train(CFG, tiny, finished, redo=True)
    train_style_fast(CFG, StyleSpeed(attention_slicing=True, checkpoint_every=1), models.load_sdxl(tiny), finished, progress=False)
    assert _snapshot(finished) == before


@pytest.mark.parametrize("change, message", [(dict(lr=2e-3), "lr: 0.001 → 0.002"), (dict(steps=5), "steps: 4 → 5"),
                                             (dict(image_steps=3), "image_steps: 2 → 3"), (dict(token="<other>"), "token:")])
def test_other_settings_stop_before_touching_anything(tiny, finished, change, message):
    before = _snapshot(finished)
    with pytest.raises(ConfigError, match="redo=True") as error:
        _train(dataclasses.replace(CFG, **change), tiny, finished)
    assert message in str(error.value) and "embedding.safetensors was trained with other settings" in str(error.value)
    assert _snapshot(finished) == before


def test_another_model_is_stale_too(tiny, finished, tmp_path):
    other = tmp_path / "copy-of-tiny"
    shutil.copytree(tiny, other)
    with pytest.raises(ConfigError, match="model:"):
        train_style(CFG, models.load_sdxl(other), finished, progress=False)


def test_redo_keeps_images_whose_settings_did_not_change(tiny, finished, tmp_path):
    images = sorted((finished / "style" / "images").glob("*.png"))
    before = _snapshot(finished)
    new = dataclasses.replace(CFG, lr=2e-3)
    path = _train(new, tiny, finished, redo=True)
    assert {p: before[p] for p in images} == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in images}
    assert json.loads((finished / "config.json").read_text())["style"]["lr"] == 2e-3
    fresh = _train(new, tiny, _new_run(tmp_path, "fresh"))
    assert _same_rows(_rows(path), _rows(fresh))


def test_redo_remakes_images_whose_settings_changed(tiny, finished, tmp_path):
    images = sorted((finished / "style" / "images").glob("*.png"))
    before = {p: p.read_bytes() for p in images}
    new = dataclasses.replace(CFG, image_steps=3)
    with pytest.raises(ConfigError, match="image_steps: 2 → 3"):
        _train(new, tiny, finished)
    path = _train(new, tiny, finished, redo=True)
    assert all(p.read_bytes() != before[p] for p in images)
    fresh_run = _new_run(tmp_path, "fresh")
    fresh = _train(new, tiny, fresh_run)
    assert _same_rows(_rows(path), _rows(fresh))
    assert all(p.read_bytes() == (fresh_run / "style" / "images" / p.name).read_bytes() for p in images)


def test_a_killed_redo_leaves_the_old_embedding_and_resumes(tiny, finished, tmp_path, monkeypatch):
    old = (finished / "style" / "embedding.safetensors").read_bytes()
    new = dataclasses.replace(CFG, lr=2e-3)
    updates, step = [0], torch.optim.AdamW.step

    class Killed(Exception): pass

    def dies_after_3(self, *args, **kwargs):
        result = step(self, *args, **kwargs); updates[0] += 1
        if updates[0] == 3: raise Killed
        return result
    monkeypatch.setattr(torch.optim.AdamW, "step", dies_after_3)
    with pytest.raises(Killed):
        train_style_fast(new, StyleSpeed(checkpoint_every=2), models.load_sdxl(tiny), finished, redo=True, progress=False)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    assert (finished / "style" / "embedding.safetensors").read_bytes() == old
    assert sorted(p.name for p in (finished / "style" / "checkpoints").iterdir()) == ["step-0002.safetensors"]
    with pytest.raises(ConfigError, match="lr: 0.001 → 0.002"):  # the old embedding is still stale
        _train(new, tiny, finished)
    path = train_style_fast(new, StyleSpeed(checkpoint_every=2), models.load_sdxl(tiny), finished, redo=True, progress=False)
    fresh = train_style_fast(new, StyleSpeed(), models.load_sdxl(tiny), _new_run(tmp_path, "fresh"), progress=False)
    assert _same_rows(_rows(path), _rows(fresh))


def test_your_own_images_are_compared_by_their_pixels(tiny, tmp_path):
    folder = tmp_path / "mine"; folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    run, cfg = _new_run(tmp_path), dataclasses.replace(CFG, images_dir=str(folder))
    _train(cfg, tiny, run)
    assert not (run / "style" / "images").exists()
    moved = shutil.copytree(folder, tmp_path / "moved")
    before = _snapshot(run)
    _train(dataclasses.replace(cfg, images_dir=str(moved), image_steps=7), tiny, run)  # same pixels; image_steps unused
    assert _snapshot(run) == before
    Image.new("RGB", (80, 96), "red").save(moved / "2.png")
    with pytest.raises(ConfigError, match="images_digest"):
        _train(dataclasses.replace(cfg, images_dir=str(moved)), tiny, run)
