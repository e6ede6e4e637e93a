"""dreamframe's LPIPS (`dreamframe.lpips`) against the `lpips` package itself (same backbone weights, the package's v0.1 lin weights).

`lpips` needs torchvision, which dreamframe does not install, so this test gives it a stand-in `torchvision.models`
whose AlexNet/VGG16 conv towers are dreamframe's own (random weights: the comparison is of the formula, not the
backbone). Runs where `lpips` is importable (e.g. `pip download lpips --no-deps` and unzip onto PYTHONPATH);
skips elsewhere.
"""
import sys
import types
from pathlib import Path

import pytest
import torch

from dreamframe.lpips import LPIPS, _lin_weights, _weights, alexnet_features, vgg16_features


@pytest.fixture
def lpips_package(monkeypatch):
    towers = {"alex": alexnet_features(), "vgg": vgg16_features()}
    torch.manual_seed(0)
    for tower in towers.values():
        for p in tower.parameters(): p.data.normal_(0, 0.05)
    models = types.ModuleType("torchvision.models")
    models.alexnet = lambda pretrained=False, **kw: types.SimpleNamespace(features=towers["alex"].features)
    models.vgg16 = lambda pretrained=False, **kw: types.SimpleNamespace(features=towers["vgg"].features)
    vision = types.ModuleType("torchvision"); vision.models = models
    monkeypatch.setitem(sys.modules, "torchvision", vision)
    monkeypatch.setitem(sys.modules, "torchvision.models", models)
    try: import scipy.ndimage  # noqa: F401  (lpips.trainer imports it)
    except ImportError:
        scipy = types.ModuleType("scipy"); scipy.ndimage = types.SimpleNamespace(zoom=None)
        monkeypatch.setitem(sys.modules, "scipy", scipy); monkeypatch.setitem(sys.modules, "scipy.ndimage", scipy.ndimage)
    lpips = pytest.importorskip("lpips", reason="the lpips package is not importable; this cross-check needs it")
    return lpips, towers


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_matches_lpips_package(lpips_package, net):
    lpips, towers = lpips_package
    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(3, 3, 64, 64, generator=g) * 2 - 1, torch.rand(3, 3, 64, 64, generator=g) * 2 - 1
    lin_file = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    mine = LPIPS(towers[net], _lin_weights(_weights(str(lin_file), "", "", "", "")))
    with torch.no_grad():
        torch.testing.assert_close(mine(a, b), lpips.LPIPS(net=net, version="0.1", verbose=False).eval()(a, b).flatten(), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(LPIPS(towers[net])(a, b), lpips.LPIPS(net=net, lpips=False, verbose=False).eval()(a, b).flatten(), atol=1e-5, rtol=1e-5)
