"""Two processes under `accelerate launch --cpu` make the same frames and manifest as one process."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from dreamframe.keyframes import MANIFEST
from dreamframe.testing import tiny_sdxl
from dreamframe.schema import sample_movie

ROOT = Path(__file__).resolve().parents[1]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    tiny = tiny_sdxl(tmp_path / "tiny")
    movie = sample_movie()
    for name in ("one", "two"): movie.save(tmp_path / name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    args = ["keyframes", "--model", str(tiny), "--steps", "2", "--resolution", "64", "--batch-size", "2", "--limit", "10",
            "--no-progress", "--device", "cpu"]
    subprocess.run([sys.executable, "-c", "import sys; from dreamframe.cli import main; sys.exit(main())", args[0], str(tmp_path / "one"), *args[1:]],
                   check=True, env=env, cwd=ROOT, capture_output=True)
    accelerate, script = Path(sys.executable).with_name("accelerate"), Path(sys.executable).with_name("dreamframe")
    if not script.exists(): pytest.skip("needs the `dreamframe` console script (pip install -e .)")
    launched = subprocess.run([str(accelerate), "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
                               str(script), args[0], str(tmp_path / "two"), *args[1:]],
                              env=env, cwd=ROOT, capture_output=True, text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    read = lambda d: {p.name: p.read_bytes() for p in sorted((tmp_path / d / "frames").glob("*.png"))}
    one, two = read("one"), read("two")
    assert len(one) == 10 and one == two
    assert sorted(p.name for p in (tmp_path / "two" / "frames").iterdir()) == sorted([*one, MANIFEST])  # shards merged
    lines = lambda d: [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                       for l in (tmp_path / d / "frames" / MANIFEST).read_text().splitlines()]
    assert lines("one") == lines("two")
    assert [l["frame_id"] for l in lines("two")] == [f.id for f in movie.frames[:10]]
