"""The keyframes engine draws the plain loop's frames: each speed switch that runs on a CPU, alone and together, within
2 levels of 255 per pixel (mean under 0.05); on a CPU the entry point is the lesson byte for byte; switches undo.
(torch.compile itself, eager against compiled, is checked in nbs/05a_keyframes_fast: a GPU cell and its CPU twin.)"""
import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from dreamframe.keyframes import KeyframeConfig, generate_keyframes, plan_keyframes, render_group
from dreamframe.keyframes_fast import KeyframeSpeed, fast_render, generate_keyframes_fast, speed_up
from dreamframe.models import load_sdxl
from dreamframe.run_folder import MANIFEST
from dreamframe.schema import sample_movie
from dreamframe.testing import tiny_sdxl

MOVIE = sample_movie()
# batch 5 over 24 frames: the last group has 4 frames, so the padding for a compiled UNet is exercised too
CFG = KeyframeConfig(steps=2, resolution=64, batch_size=5, frame_ids=[f.id for f in MOVIE.frames[3:7] + MOVIE.frames[-3:]],
                     negative_prompt="blurry, low quality")
OFF = KeyframeSpeed.off()
LARGEST, MEAN = 2, 0.05   # tolerance, in levels of 255


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


def draw(tiny, run_dir, speed=None, render=render_group):
    "Pixels of CFG's frames from a fresh tiny pipeline (with `speed` applied) in a fresh run folder."
    pipe = load_sdxl(tiny)
    if speed is not None: speed_up(pipe, speed)
    MOVIE.save(run_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_keyframes(CFG, pipe, MOVIE, run_dir, model_name="tiny", progress=False, render=render)
    return {i: np.asarray(Image.open(Path(run_dir) / "frames" / f"{i}.png"), dtype=np.int16) for i in CFG.frame_ids}


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory):
    return draw(tiny, tmp_path_factory.mktemp("plain"))


def within_tolerance(a, b):
    diffs = np.stack([np.abs(a[i] - b[i]) for i in a])
    return diffs.max() <= LARGEST and diffs.mean() < MEAN, (int(diffs.max()), float(diffs.mean()))


@pytest.mark.parametrize("switches", [dict(fuse_qkv=True), dict(channels_last=True), dict(attention_backend="cudnn"),
                                      dict(compile=True),   # not applied by speed_up's caller here: padding only
                                      dict(fuse_qkv=True, channels_last=True, attention_backend="cudnn")],
                         ids=["fuse_qkv", "channels_last", "attention_cudnn", "padding", "together"])
def test_switch_draws_the_plain_frames(switches, tiny, plain, tmp_path):
    speed = dataclasses.replace(OFF, **switches)
    applied = None if speed.compile else speed   # compiling on a CPU takes minutes: the notebook's twin does that
    ok, measured = within_tolerance(plain, draw(tiny, tmp_path, applied, fast_render(speed)))
    assert ok, measured


def test_cpu_entry_point_is_the_lesson(tiny, plain, tmp_path):
    pipe = load_sdxl(tiny)
    speed_up(pipe, dataclasses.replace(OFF, fuse_qkv=True, channels_last=True))  # undone: on a CPU every switch is off
    MOVIE.save(tmp_path / "fast")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = generate_keyframes_fast(CFG, KeyframeSpeed(compile=True), pipe, MOVIE, tmp_path / "fast", model_name="tiny", progress=False)
    fast = {l["frame_id"]: np.asarray(Image.open(tmp_path / "fast" / l["path"]), dtype=np.int16) for l in lines}
    assert fast.keys() == plain.keys() and all((fast[i] == plain[i]).all() for i in plain)
    assert not hasattr(pipe.unet, "_orig_mod") and not any("Fused" in type(p).__name__ for p in pipe.unet.attn_processors.values())


def test_speed_is_not_recorded(tiny, tmp_path):
    pipe = load_sdxl(tiny)
    MOVIE.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_keyframes_fast(CFG, KeyframeSpeed(), pipe, MOVIE, tmp_path, model_name="tiny", progress=False)
    line = json.loads((tmp_path / "frames" / MANIFEST).read_text().splitlines()[0])
    assert not set(line) & {f.name for f in dataclasses.fields(KeyframeSpeed)}
    assert plan_keyframes(CFG, MOVIE, tmp_path, model_name="tiny").finished   # whatever the speed switches were


def test_speed_up_applies_once_and_undoes(tiny, plain, tmp_path):
    pipe = load_sdxl(tiny)
    fused = dataclasses.replace(OFF, fuse_qkv=True, channels_last=True)
    speed_up(pipe, fused)
    processors = pipe.unet.attn_processors
    assert all("Fused" in type(p).__name__ for p in processors.values())
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    speed_up(pipe, fused)   # same switches: nothing changes
    assert all(a is b for a, b in zip(processors.values(), pipe.unet.attn_processors.values()))
    speed_up(pipe, OFF)
    assert not any("Fused" in type(p).__name__ for p in pipe.unet.attn_processors.values())
    MOVIE.save(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_keyframes(CFG, pipe, MOVIE, tmp_path, model_name="tiny", progress=False)
    again = {i: np.asarray(Image.open(tmp_path / "frames" / f"{i}.png"), dtype=np.int16) for i in CFG.frame_ids}
    assert all((again[i] == plain[i]).all() for i in plain)
