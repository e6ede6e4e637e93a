"""`dreamframe eval` as a user runs it: the console command on a tiny run with `--tiny` models, two runs compared."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dreamframe.schema import sample_movie

_SCRIPT = Path(sys.executable).with_name("dreamframe")
DREAMFRAME = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "import sys; from dreamframe.cli import main; sys.exit(main())"]


def make_run(run_dir: Path, noise: float) -> Path:
    movie = sample_movie(1, 2, 3)
    movie.save(run_dir)
    (run_dir / "frames").mkdir()
    rng = np.random.default_rng(0)
    for frame in movie.frames:
        pixels = np.full((48, 48, 3), (90, 120, 170), np.float32) + rng.normal(0, noise, (48, 48, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(run_dir / "frames" / f"{frame.id}.png")
    return run_dir  # no manifest: the frames are found by id


def test_eval_cli_tiny(tmp_path):
    styled, plain = make_run(tmp_path / "styled", 5), make_run(tmp_path / "plain", 80)
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(DREAMFRAME + ["eval", str(styled), "--against", str(plain), "--tiny", "--lpips-size", "32"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| CLIP image–image, adjacent frames (higher is better) |" in result.stdout
    metrics = json.loads((styled / "eval" / "metrics.json").read_text())
    for run in (metrics, metrics["against"]):
        assert run["movie"]["n_frames"] == 6 and set(run["shots"]) == {"s01.t01", "s01.t02"}
        assert all(run["movie"][k] is not None for k in ("clip_adjacent", "lpips_adjacent", "dino_set", "clip_text_raw"))
    assert metrics["movie"]["lpips_adjacent"] < metrics["against"]["movie"]["lpips_adjacent"]
    assert (styled / "eval" / "metrics.png").stat().st_size > 1000
    assert json.loads((styled / "config.json").read_text())["eval"]["tiny"] is True


def test_eval_cli_explains_missing_run(tmp_path):
    result = subprocess.run(DREAMFRAME + ["eval", str(tmp_path / "nope"), "--tiny"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no movie.json" in result.stderr
