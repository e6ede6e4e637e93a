"""`dreamframe run-many --executor ray`: Ray embedded on this machine runs one task per movie. The movies come out
byte-identical to the local executor's, and a movie whose worker is killed mid-run is run again by Ray and resumes
from its folder, with no duplicated manifest lines."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

THEMES = ["a lighthouse keeper finds a message in a bottle", "a heist in a floating city", "a robot learns to paint the sea"]
SMALL = ["--preset", "demo", "--substories", "2", "--shots", "1", "--frames", "2", "--quiet"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DREAMFRAME = [sys.executable, "-m", "dreamframe.cli"]


def outputs(out: Path) -> dict[str, bytes]:
    "Every frame PNG and llava.json of every movie, by path."
    files = sorted([*out.glob("*/frames/*.png"), *out.glob("*/export/llava.json")])
    return {str(p.relative_to(out)): p.read_bytes() for p in files}


def test_ray_matches_local_and_survives_a_killed_worker(tmp_path):
    themes = tmp_path / "themes.txt"
    themes.write_text("\n".join(THEMES) + "\n")
    local = subprocess.run([*DREAMFRAME, "run-many", themes, tmp_path / "local", *SMALL], env=ENV, capture_output=True, text=True, timeout=600)
    assert local.returncode == 0, local.stderr[-2000:]

    out = tmp_path / "ray"
    ray = subprocess.Popen([*DREAMFRAME, "run-many", themes, out, *SMALL, "--executor", "ray", "--refresh-s", "2"],
                           env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, deadline = None, time.monotonic() + 300
    while killed is None and time.monotonic() < deadline and ray.poll() is None:
        for holder in out.glob("*/.lock.json"):
            movie = holder.parent
            if (movie / "frames").is_dir():   # mid-movie: the keyframes stage has started
                try: pid = json.loads(holder.read_text())["pid"]
                except (OSError, ValueError, KeyError): continue
                os.kill(pid, signal.SIGKILL)
                killed = movie.name
                break
        time.sleep(0.05)
    stdout, stderr = ray.communicate(timeout=600)
    assert killed is not None, f"no worker was caught mid-movie:\n{stdout[-2000:]}"
    assert ray.returncode == 0, stderr[-3000:] + stdout[-2000:]
    assert "3 of 3 movies complete" in stdout
    for manifest in out.glob("*/frames/manifest.jsonl"):
        ids = [json.loads(line)["frame_id"] for line in manifest.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4, (manifest, ids)
    assert outputs(out) == outputs(tmp_path / "local")
    print("killed the worker of", killed)
