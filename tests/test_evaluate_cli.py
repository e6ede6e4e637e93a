"""`dreamframe eval` as a user runs it (the console command on a tiny run with `--eval-tiny` models, two runs compared),
and `evaluate_run` as the pipeline calls it: settings checked, frames read only through the manifest."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamframe.config import ConfigError
from dreamframe.evaluate import EvalConfig, evaluate_run
from dreamframe.run_folder import write_manifest
from dreamframe.schema import FormatError, sample_movie

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
    write_manifest(run_dir / "frames", [{"frame_id": f.id, "path": f"frames/{f.id}.png"} for f in movie.frames])
    return run_dir


def test_eval_cli_tiny(tmp_path):
    styled, plain = make_run(tmp_path / "styled", 5), make_run(tmp_path / "plain", 80)
    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "TQDM_DISABLE": "1"}
    result = subprocess.run(DREAMFRAME + ["eval", str(styled), "--eval-against", str(plain), "--eval-tiny", "--eval-lpips-size", "32"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((styled / "eval" / "metrics.json").read_text())
    for run in (metrics, metrics["against"]):
        assert run["movie"]["n_frames"] == 6 and set(run["shots"]) == {"s01.t01", "s01.t02"}
        assert all(run["movie"][k] is not None for k in ("clip_adjacent", "lpips_adjacent", "dino_set", "clip_text_raw"))
    assert metrics["movie"]["lpips_adjacent"] < metrics["against"]["movie"]["lpips_adjacent"]
    assert (styled / "eval" / "metrics.png").stat().st_size > 1000
    saved = json.loads((styled / "config.json").read_text())["eval"]
    assert saved["tiny"] is True and saved["against"] == str(plain) and "device" not in saved and "progress" not in saved


def test_eval_cli_explains_missing_run(tmp_path):
    result = subprocess.run(DREAMFRAME + ["eval", str(tmp_path / "nope"), "--eval-tiny"], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_settings_and_arguments_are_checked_before_loading(tmp_path):
    run = make_run(tmp_path / "run", 5)
    with pytest.raises(ConfigError, match=r"at \$\.batch_size: .*greater than or equal to 1"): EvalConfig(batch_size=0)
    with pytest.raises(ConfigError, match="device"): EvalConfig(device="cuda")      # arguments of evaluate_run, not settings
    with pytest.raises(ValueError, match=r"dtype=torch.float16 needs a GPU"): evaluate_run(EvalConfig(tiny=True), run, dtype="float16")
    with pytest.raises(ValueError, match=r"dtype='half': use one of float32, float16, bfloat16"): evaluate_run(EvalConfig(tiny=True), run, dtype="half")
    with pytest.raises(FileNotFoundError, match=r"against .*nowhere has no movie\.json"):
        evaluate_run(EvalConfig(tiny=True, against=str(tmp_path / "nowhere")), run)
    assert not (run / "eval").exists()


def test_frames_only_through_the_manifest(tmp_path):
    "Issue 14.6: a manifest line whose path is absolute or ../ is an error naming the line; unlisted PNGs are not read."
    run = make_run(tmp_path / "run", 5)
    manifest = run / "frames" / "manifest.jsonl"
    good = manifest.read_text()
    for bad in ("/etc/hostname", "../elsewhere.png"):
        manifest.write_text(good.replace('"frames/s01.t01.f02.png"', json.dumps(bad)))
        with pytest.raises(FormatError, match=r"manifest\.jsonl, line 2: .*path must be 'frames/s01\.t01\.f02\.png'"):
            evaluate_run(EvalConfig(tiny=True, lpips_size=32), run, progress=False)
    manifest.write_text("".join(line + "\n" for line in good.splitlines()[:4]))   # 4 of 6 frames finished
    metrics = evaluate_run(EvalConfig(tiny=True, lpips_size=32), run, progress=False)
    assert metrics["movie"]["n_frames"] == 4 and [f["frame_id"] for f in metrics["frames"]] == ["s01.t01.f01", "s01.t01.f02", "s01.t01.f03", "s01.t02.f01"]
