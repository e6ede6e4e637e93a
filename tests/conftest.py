"""Fixtures shared by test files."""
import os
import subprocess
import sys

os.environ["HF_HUB_OFFLINE"] = "1"   # before huggingface_hub is imported: no test downloads, whatever the shell says

import pytest
import torch


@pytest.fixture(autouse=True)
def close_figures():
    "Close the matplotlib figures a test leaves open: a later notebook run in this worker would show them too."
    yield
    if "matplotlib.pyplot" in sys.modules: sys.modules["matplotlib.pyplot"].close("all")


@pytest.fixture
def one_thread():
    "Run the test on one CPU thread (bit-exact comparisons between training runs), then restore the count."
    threads = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    "A tiny SDXL-architecture pipeline folder (random weights, 64 px), built once per test module."
    from dreamframe.testing import tiny_sdxl
    return tiny_sdxl(tmp_path_factory.mktemp("tiny") / "sdxl")


@pytest.fixture
def cli(capsys, monkeypatch):
    "Run `dreamframe ARGS` in this process (no interpreter start-up); returns (exit status, stdout, stderr)."
    from dreamframe.cli import main
    monkeypatch.setenv("HF_HUB_OFFLINE", "1"); monkeypatch.setenv("TQDM_DISABLE", "1")
    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)
    return run
