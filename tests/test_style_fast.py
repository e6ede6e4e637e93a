"""The style engine learns what the lesson's plain loop learns (CPU, tiny pipeline, 8 updates of batch 1 x 2):
- with every switch off it IS the plain loop (bit-identical rows, checkpoints and loss; the stage writes the same file);
- each switch that runs on a CPU, alone and all together, lands within TOLERANCE of the plain loop's rows: fused
  accumulation, channels-last, gradient checkpointing (bit-identical), sliced attention, a compiled UNet (through
  torch.compile with the aot_eager backend: the tracing and autograd of compilation without a C++ toolchain; the
  default inductor backend is checked in the opt-in test at the end, DREAMFRAME_COMPILE_TEST=1, ~2 min on a CPU);
- the CUDA-graph update's plumbing (static inputs, fresh draws copied in, gradients handed back) with a stand-in
  capture equals the fused update bit for bit, and a failed capture falls back to eager with the same result;
- the switches are undone afterwards, and the graph is only chosen where it can work."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from dreamframe import models
from dreamframe.schema import sample_movie
from dreamframe.style import STYLE_TEMPLATES, StyleConfig, accumulate, train_embedding, train_style
from dreamframe.style_fast import (GraphedUpdate, StyleSpeed, can_graph, fused_update, speed_switches, train_embedding_fast,
                                   train_style_fast)
from dreamframe.testing import tiny_sdxl

TOLERANCE = 1e-6  # largest |fast - plain| of any row value after 8 updates (one update moves a value by ~1e-3 at lr 1e-3)
CFG = StyleConfig(token="<tiny-style>", resolution=64, steps=8, templates=list(STYLE_TEMPLATES[:4]))
IMAGES = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(4)]


pytestmark = pytest.mark.usefixtures("one_thread")  # `one_thread` and `tiny` come from conftest.py


def _plain(tiny, tmp_path, cfg=CFG, **kwargs):
    return train_embedding(cfg, models.load_sdxl(tiny), IMAGES, tmp_path / "plain", init_word="watercolor", progress=False, **kwargs)


def _fast(tiny, tmp_path, speed, cfg=CFG):
    return train_embedding_fast(cfg, speed, models.load_sdxl(tiny), IMAGES, tmp_path / "fast", init_word="watercolor", progress=False)


def _same_file(a, b) -> bool:
    "Same tensors, bit for bit, and the same metadata (safetensors does not keep the metadata's order)."
    with safe_open(str(a), "pt") as first, safe_open(str(b), "pt") as second:
        return (first.metadata() == second.metadata() and set(first.keys()) == set(second.keys())
                and all(torch.equal(first.get_tensor(k), second.get_tensor(k)) for k in first.keys()))


def _largest_difference(a, b):
    return max(float((a[key] - b[key]).abs().max()) for key in ("clip_l", "clip_g"))


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory):
    torch.set_num_threads(1)
    return _plain(tiny, tmp_path_factory.mktemp("plain"))


def test_every_switch_off_is_the_plain_loop(tiny, plain, tmp_path):
    fast = _fast(tiny, tmp_path, StyleSpeed.off())
    assert _largest_difference(fast, plain) == 0.0
    again = _plain(tiny, tmp_path)
    for name in ("loss.json",):
        assert json.loads((tmp_path / "fast" / name).read_text()) == json.loads((tmp_path / "plain" / name).read_text())
    assert _same_file(tmp_path / "fast" / "checkpoints" / "step-0008.safetensors", tmp_path / "plain" / "checkpoints" / "step-0008.safetensors")
    assert _largest_difference(again, plain) == 0.0


@pytest.mark.parametrize("switches, exact", [
    (dict(fuse_accumulation=True), False), (dict(channels_last=True), False), (dict(gradient_checkpointing=True), True),
    (dict(attention_slicing=True), False), (dict(cuda_graph=True), True),  # no CUDA here: cuda_graph alone changes nothing
    (dict(fuse_accumulation=True, channels_last=True, gradient_checkpointing=True, attention_slicing=True), False)],
    ids=["fused", "channels_last", "gradient_checkpointing", "attention_slicing", "cuda_graph_on_cpu", "together"])
def test_each_switch_learns_the_plain_rows(tiny, plain, tmp_path, switches, exact):
    difference = _largest_difference(_fast(tiny, tmp_path, StyleSpeed.off(**switches)), plain)
    assert difference == 0.0 if exact else difference < TOLERANCE, difference


def test_fused_accumulation_matches_larger_batches_too(tiny, tmp_path):
    cfg = dataclasses.replace(CFG, batch_size=2, grad_accum=3, steps=4)
    difference = _largest_difference(_fast(tiny, tmp_path, StyleSpeed.off(fuse_accumulation=True), cfg), _plain(tiny, tmp_path, cfg))
    assert difference < TOLERANCE, difference


def test_compiled_unet_learns_the_plain_rows(tiny, plain, tmp_path, monkeypatch):
    compiled, original = [], torch.compile
    torch._dynamo.reset()
    monkeypatch.setattr(torch, "compile", lambda module, **kwargs: compiled.append(module) or original(module, backend="aot_eager"))
    difference = _largest_difference(_fast(tiny, tmp_path, StyleSpeed.off(compile_unet=True, fuse_accumulation=True)), plain)
    assert len(compiled) == 1 and difference < TOLERANCE, difference


def _eager_capture(update, example, params):
    "The contract of capture_cuda_graph without CUDA: static input buffers, fresh inputs copied in, replayed eagerly."
    static = tuple(tensor.clone() for tensor in example)
    def replay(inputs):
        for buffer, fresh in zip(static, inputs): buffer.copy_(fresh)
        return update(static)
    return replay


def test_graph_plumbing_and_fallback_equal_the_fused_update(tiny, tmp_path):
    fused = _plain(tiny, tmp_path, forward_backward=fused_update)
    captures = []
    def counting_capture(*args):
        captures.append(1); return _eager_capture(*args)
    graphed = _plain(tiny, tmp_path / "graphed", forward_backward=GraphedUpdate(fused_update, capture=counting_capture))
    failed = _plain(tiny, tmp_path / "failed", forward_backward=GraphedUpdate(fused_update, capture=lambda *args: None))
    assert captures == [1]  # captured once, replayed for all 8 updates
    assert _largest_difference(graphed, fused) == 0.0 and _largest_difference(failed, fused) == 0.0


def test_switches_are_undone(tiny):
    pipe = models.load_sdxl(tiny)
    processors = {name: type(p) for name, p in pipe.unet.attn_processors.items()}
    speed = StyleSpeed.off(channels_last=True, gradient_checkpointing=True, attention_slicing=True)
    with speed_switches(speed, pipe):
        assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last) and pipe.unet.is_gradient_checkpointing
        assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"SlicedAttnProcessor"}
    assert pipe.unet.conv_in.weight.is_contiguous() and not pipe.unet.is_gradient_checkpointing
    assert {name: type(p) for name, p in pipe.unet.attn_processors.items()} == processors


def test_the_graph_is_chosen_only_where_it_can_work(tiny):
    pipe = models.load_sdxl(tiny)  # on the CPU
    assert not can_graph(CFG, StyleSpeed(), pipe)
    cuda = type("Pipe", (), {"unet": type("Unet", (), {"device": torch.device("cuda")})()})()  # what the decision reads
    assert can_graph(CFG, StyleSpeed(), cuda)
    for switches in (dict(fuse_accumulation=False), dict(cuda_graph=False), dict(compile_unet=True),
                     dict(gradient_checkpointing=True), dict(attention_slicing=True)):
        assert not can_graph(CFG, StyleSpeed(**switches), cuda), switches
    assert not can_graph(dataclasses.replace(CFG, dtype="float16"), StyleSpeed(), cuda)  # loss scaling syncs with the host


def test_the_stage_with_every_switch_off_is_train_style(tiny, tmp_path):
    cfg = StyleConfig(n_images=4, image_steps=2, resolution=64, steps=4, templates=list(STYLE_TEMPLATES[:4]))
    runs = {}
    for name in ("lesson", "engine"):
        runs[name] = tmp_path / name; sample_movie().save(runs[name])
    train_style(cfg, models.load_sdxl(tiny), runs["lesson"], progress=False)
    train_style_fast(cfg, StyleSpeed.off(), models.load_sdxl(tiny), runs["engine"], progress=False)
    for name in ("embedding.safetensors", "checkpoints/step-0004.safetensors"):
        assert _same_file(runs["lesson"] / "style" / name, runs["engine"] / "style" / name), name
    for name in ("loss.json", "images.json", "images/000.png"):
        assert (runs["lesson"] / "style" / name).read_bytes() == (runs["engine"] / "style" / name).read_bytes(), name


@pytest.mark.skipif(os.environ.get("DREAMFRAME_COMPILE_TEST") != "1", reason="compiling with inductor on a CPU takes ~2 min")
def test_inductor_compiled_unet_learns_the_plain_rows(tiny, plain, tmp_path):
    difference = _largest_difference(_fast(tiny, tmp_path, StyleSpeed.off(compile_unet=True)), plain)
    assert difference < TOLERANCE, difference
