"""Ctrl-C while ffmpeg starts is never swallowed. imageio-ffmpeg's writer started ffmpeg with a `preexec_fn`, so Python
ran the `os.register_at_fork` callbacks of logging and filelock in the parent right after each fork; a Ctrl-C landing in
one of them was printed as "Exception ignored in …" and the export went on, ending with status 0 (the old writer fails
the first test within its 60 interrupts). `video.write_video`
starts ffmpeg with `process_group=0` instead. Here SIGINT is sent at many moments of ffmpeg start-ups: each must come back
as a KeyboardInterrupt, with nothing ignored; and `dreamframe export` interrupted that way exits 130 with one line."""
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from test_export import make_run

CHILD = r"""
import logging, sys
from pathlib import Path
import torch, diffusers, transformers   # as big as the real command: forking it takes a while
import filelock   # its at-fork callback, like logging's, is where an interrupt was swallowed
from PIL import Image
from dreamframe.video import write_video
folder = Path(sys.argv[1])
frames = []
for k in range(2):
    frames.append(folder / f"{k}.png")
    Image.new("RGB", (32, 32), (100 * k, 50, 50)).save(frames[-1])
caught = 0
print("ready", flush=True)
while True:
    try:
        write_video(frames, folder / "clip.mp4", fps=1, progress=False)
    except KeyboardInterrupt:
        caught += 1
        print(f"caught {caught}", flush=True)
"""


def children(pid: int) -> set[int]:
    try: return set(map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split()))
    except OSError: return set()


def lines_of(stream) -> queue.Queue:
    "The lines of `stream` as they come, through a queue (a reader thread)."
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in stream], daemon=True).start()
    return lines


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds ffmpeg's start through /proc")
def test_interrupt_at_ffmpeg_start_is_never_swallowed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    out, err = lines_of(child.stdout), lines_of(child.stderr)
    try:
        assert out.get(timeout=60).strip() == "ready"
        rng = random.Random(0)
        for attempt in range(1, 61):
            seen, deadline = children(child.pid), time.monotonic() + 10
            while not children(child.pid) - seen and time.monotonic() < deadline:   # the next ffmpeg has just forked
                seen = children(child.pid) or seen
                time.sleep(0.0002)
            time.sleep(rng.uniform(0, 0.002))   # somewhere between fork, exec and the first frame
            child.send_signal(signal.SIGINT)
            try: line = out.get(timeout=10).strip()
            except queue.Empty: line = "nothing within 10 s: the interrupt was swallowed"
            assert line == f"caught {attempt}", line
    finally:
        child.kill()
        child.wait()
    errors = []
    while not err.empty(): errors.append(err.get())
    assert not any("Exception ignored" in line for line in errors), "".join(errors)


def test_dreamframe_export_interrupted_at_ffmpeg_start_exits_130(tmp_path):
    "The whole command: SIGINT right after ffmpeg starts gives the one-line message and status 130, twice over."
    source = tmp_path / "source"
    make_run(source)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    for attempt in range(2):
        run = tmp_path / f"run{attempt}"
        shutil.copytree(source, run)
        command = [sys.executable, "-m", "dreamframe.cli", "export", str(run), "--quiet"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 60
        while not children(process.pid) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(0.001 * attempt)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, (process.returncode, err)
        assert err.strip() == f"dreamframe export: interrupted; run the same command again to resume", err
        assert not list((run / "export").glob("**/.*.tmp")) if (run / "export").exists() else True
