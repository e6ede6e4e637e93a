"""Fixtures shared by test files."""
import pytest
import torch


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
