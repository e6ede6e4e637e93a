"""Two CPU processes (`torchrun`, gloo; `generate_keyframes` splits the work with `accelerate.PartialState`) draw the same frames and write the same manifest as one process,
also when they finish a run that one process started."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from dreamframe.run_folder import MANIFEST
from dreamframe.schema import sample_movie
from dreamframe.testing import tiny_sdxl

ROOT = Path(__file__).resolve().parents[1]

DRAW = """
import sys, warnings, torch
torch.set_num_threads(1); warnings.simplefilter("ignore")
from dreamframe.keyframes import KeyframeConfig
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast
from dreamframe.models import load_sdxl
from dreamframe.schema import Movie
run, model, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = KeyframeConfig(steps=2, resolution=64, batch_size=2, limit=limit, negative_prompt="blurry, low quality")
generate_keyframes_fast(cfg, KeyframeSpeed(), load_sdxl(model), Movie.load(run), run, model_name="tiny", progress=False)
from accelerate import PartialState
state = PartialState()
sys.stdout.write(f"rank {state.process_index} of {state.num_processes}\\n")  # one write: ranks share the pipe
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    tiny = tiny_sdxl(tmp_path / "tiny")
    movie = sample_movie()
    for name in ("one", "two", "resumed"): movie.save(tmp_path / name)
    script = tmp_path / "draw.py"
    script.write_text(DRAW)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}

    def draw(name, processes, limit):
        if processes == 1:
            command = [sys.executable, str(script)]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                       "--master_port", str(_free_port()), str(script)]
        done = subprocess.run([*command, str(tmp_path / name), str(tiny), str(limit)], env=env, cwd=ROOT,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        ranks = sorted(done.stdout.split("\n")[:-1])
        assert ranks == [f"rank {i} of {processes}" for i in range(processes)], done.stdout

    draw("one", 1, 10)
    draw("two", 2, 10)
    draw("resumed", 1, 3)   # one process starts, two finish
    draw("resumed", 2, 10)
    read = lambda d: {p.name: p.read_bytes() for p in sorted((tmp_path / d / "frames").glob("*.png"))}
    one = read("one")
    assert len(one) == 10 and read("two") == one and read("resumed") == one
    lines = lambda d: [{k: v for k, v in json.loads(l).items() if k != "seconds"}
                       for l in (tmp_path / d / "frames" / MANIFEST).read_text().splitlines()]
    for name in ("two", "resumed"):
        assert sorted(p.name for p in (tmp_path / name / "frames").iterdir()) == sorted([*one, MANIFEST])  # shards merged
        assert lines(name) == lines("one")
    assert [l["frame_id"] for l in lines("two")] == [f.id for f in movie.frames[:10]]
