"""What the command-line tests share: the command, its environment, a small demo run, and the one-line-failure check."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dreamframe.cli import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
DREAMFRAME = [sys.executable, "-m", "dreamframe.cli"]
SMALL = ["--substories", "2", "--shots", "1", "--frames", "2", "--quiet"]   # a demo of 4 frames


def dreamframe(*args, timeout=600) -> subprocess.CompletedProcess:
    "Run `dreamframe ARGS` as a user does, in a new process."
    return subprocess.run([*DREAMFRAME, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=timeout)


def one_line_failure(done, *words) -> str:
    "The command failed with one line on stderr, no traceback, naming `words`; returns that line."
    lines = done.stderr.strip().splitlines()
    assert done.returncode >= 1, done.stdout
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    for word in words: assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    "A small demo run, made once per test module (copy it with `run_copy` before changing it)."
    run_dir = tmp_path_factory.mktemp("demo") / "run"
    assert main(["demo", str(run_dir), *SMALL]) == 0
    return run_dir


@pytest.fixture
def run_copy(demo_run, tmp_path) -> Path:
    "A copy of the demo run for one test to change."
    shutil.copytree(demo_run, tmp_path / "run")
    return tmp_path / "run"
