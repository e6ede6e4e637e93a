"""Stage 2 survives a real SIGKILL: a killed `train_style` process resumes in a new process and reaches the
bit-identical embedding of an uninterrupted run (CPU, tiny pipeline, a few seconds)."""
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

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
    tiny, run, kill_at, resume = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
    if not (run / "movie.json").exists(): sample_movie().save(run)
    cfg = StyleConfig(n_images=4, image_steps=2, resolution=64, steps=8, checkpoint_every=3, log_every=2,
                      templates=list(STYLE_TEMPLATES[:4]))
    def on_step(done):
        if done == kill_at: os.kill(os.getpid(), signal.SIGKILL)
    train_style(cfg, models.load_sdxl(tiny), run, resume=resume, on_step=on_step)
""")


def _child(tmp_path, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    from dreamframe import models
    tiny = __import__('dreamframe.testing', fromlist=['tiny_sdxl']).tiny_sdxl(tmp_path / "tiny")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = _child(tmp_path, tiny, whole, -1, 0)
    assert done.returncode == 0, done.stderr[-2000:]
    dead = _child(tmp_path, tiny, killed, 5, 0)
    assert dead.returncode == -signal.SIGKILL, dead.stderr[-2000:]
    assert not (killed / "style" / "embedding.safetensors").exists()
    assert sorted(p.name for p in (killed / "style" / "checkpoints").glob("*.safetensors")) == ["step-0003.safetensors"]
    assert not list((killed / "style").rglob(".*tmp*"))  # no half-written files left behind
    resumed = _child(tmp_path, tiny, killed, -1, 1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(whole / "style" / "embedding.safetensors")
    b = load_file(killed / "style" / "embedding.safetensors")
    for key in ("clip_l", "clip_g"):
        assert torch.equal(a[key], b[key]), key
