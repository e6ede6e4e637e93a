"""`dreamframe run-many --executor ray`: Ray embedded on this machine runs one task per movie. With the default
settings and no thread variables pinned (a Ray worker starts torch on 1 thread, this process on every core), the movies
come out byte-identical to the local executor's: frames, dataset, and the style embedding's rows; every frame's manifest
line records the same machine (device, dtype, CPU threads, versions). A movie whose worker is killed mid-run is run
again by Ray and resumes from its folder, with no duplicated manifest lines."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

THEMES = ["a lighthouse keeper finds a message in a bottle", "a heist in a floating city"]   # one is killed, one is not
SMALL = ["--preset", "demo", "--substories", "2", "--shots", "1", "--frames", "2", "--quiet"]
PINS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")   # the defaults must agree without them
ENV = {**{k: v for k, v in os.environ.items() if k not in PINS}, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
DREAMFRAME = [sys.executable, "-m", "dreamframe.cli"]


def outputs(out: Path) -> dict[str, bytes]:
    "Every frame PNG and llava.json of every movie, and the style embedding's rows, by path."
    from safetensors.torch import load_file
    files = sorted([*out.glob("*/frames/*.png"), *out.glob("*/export/llava.json")])
    found = {str(p.relative_to(out)): p.read_bytes() for p in files}
    for path in sorted(out.glob("*/style/embedding.safetensors")):   # the rows, not the file (its metadata is not ours)
        for key, rows in sorted(load_file(path).items()): found[f"{path.relative_to(out)}:{key}"] = rows.numpy().tobytes()
    return found


def machines(out: Path) -> set[str]:
    "The machine records of every frame's manifest line."
    found = set()
    for path in out.glob("*/frames/manifest.jsonl"):
        for line in path.read_text().splitlines(): found.add(json.dumps(json.loads(line)["machine"], sort_keys=True))
    return found


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
    assert "2 of 2 movies complete" in stdout
    for manifest in out.glob("*/frames/manifest.jsonl"):
        ids = [json.loads(line)["frame_id"] for line in manifest.read_text().splitlines()]
        assert len(ids) == len(set(ids)) == 4, (manifest, ids)
    local, ray_made = outputs(tmp_path / "local"), outputs(out)
    assert local.keys() == ray_made.keys()
    differ = sorted(name for name in local if local[name] != ray_made[name])
    assert not differ, f"{len(differ)} of {len(local)} outputs differ between the executors: {differ[:5]}"
    recorded = machines(out)
    assert recorded == machines(tmp_path / "local") and len(recorded) == 1, (recorded, machines(tmp_path / "local"))
    print("killed the worker of", killed)
