"""The viewer as a person sees it: the HTML page from `dreamframe view` in headless Chromium, and the
FramePlayer widget in the 08_viewer notebook rendered by nbconvert with widget state.

Needs Debian's `chromium` package (`apt-get install -y chromium`); the browser test skips, saying so, without it.
"""
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from dreamframe.schema import atomic_write_text, sample_movie

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = Path(sys.executable).with_name("dreamframe")  # the console command, as a user runs it
DREAMFRAME = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "import sys; from dreamframe.cli import main; sys.exit(main())"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def make_run(run_dir: Path, size: int = 64, n_substories: int = 2, shift: int = 0) -> Path:
    "A run folder with movie.json, stand-in PNG frames (one colour per shot, a moving disc) and a manifest."
    movie = sample_movie(n_substories=n_substories)
    movie.save(run_dir)
    (run_dir / "frames").mkdir(parents=True, exist_ok=True)
    manifest = []
    for s, shot in enumerate(movie.shots):
        for f, frame in enumerate(shot.frames):
            img = Image.new("RGB", (size, size), ((60 + 80 * s + shift) % 256, (200 - 40 * s) % 256, (120 + 50 * f - shift) % 256))
            ImageDraw.Draw(img).ellipse([4 + 10 * f, 20, 24 + 10 * f, 40], fill=(255, 250, 220))
            img.save(run_dir / "frames" / f"{frame.id}.png")
            manifest.append({"frame_id": frame.id, "prompt": f"generate an image in <tok> style: {movie.render_prompt(frame)}",
                             "path": f"frames/{frame.id}.png"})
    atomic_write_text(run_dir / "frames" / "manifest.jsonl", "".join(json.dumps(m) + "\n" for m in manifest))
    return run_dir


def chromium(*args: str, tmp_path: Path, timeout: int = 90) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=3000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    run = make_run(tmp / "run")
    plain = make_run(tmp / "plain", shift=90)
    result = subprocess.run(DREAMFRAME + ["view", str(run), "--against", str(plain), "--thumb-size", "48"],
                            capture_output=True, text=True, cwd=tmp)
    assert result.returncode == 0, result.stderr
    return run, run / "view.html"


def test_cli_entry_point_writes_page(page):
    run, out = page
    text = out.read_text()
    assert text.startswith("<!doctype html>") and text.count("data:image/jpeg") > 0
    assert "http://" not in text and "https://" not in text  # self-contained: nothing to fetch
    # the flag is the ViewConfig field: thumbnails are 48 px; `dreamframe view` writes nothing into the run (it takes no lock)
    import base64, io, re
    from PIL import Image
    sides = {max(Image.open(io.BytesIO(base64.b64decode(b64))).size) for b64 in re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", text)}
    assert 48 in sides, sides
    assert not (run / "config.json").exists()


def test_write_view_html_and_link(tmp_path):
    "`write_view`: `html` puts the page elsewhere; `link` points at the PNGs (relative to the page) instead of embedding them."
    from dreamframe.viewer import ViewConfig, write_view
    run = make_run(tmp_path / "run", n_substories=1)
    out = write_view(ViewConfig(html=str(tmp_path / "pages" / "linked.html"), link=True), run)
    assert out == tmp_path / "pages" / "linked.html"
    text = out.read_text()
    assert "data:image" not in text and '"../run/frames/s01.t01.f01.png"' in text
    assert not (run / "view.html").exists()


@pytest.mark.parametrize("path", ["/etc/hostname", "../../outside.png"])
def test_manifest_line_outside_the_run_is_refused(tmp_path, path):
    "Issue 14.6: frames come only through run_folder.read_manifest; a line pointing elsewhere names the line, and nothing is embedded."
    from dreamframe.schema import FormatError
    from dreamframe.viewer import ViewConfig, write_view
    run = make_run(tmp_path / "run", n_substories=1)
    Image.new("RGB", (64, 64), (255, 0, 0)).save(tmp_path / "outside.png")
    manifest = run / "frames" / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    lines[2] = json.dumps({**json.loads(lines[2]), "path": path})
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=r"manifest\.jsonl, line 3: .*path must be 'frames/s01\.t01\.f03\.png'"):
        write_view(ViewConfig(), run)
    assert not (run / "view.html").exists()
    result = subprocess.run(DREAMFRAME + ["view", str(run)], capture_output=True, text=True)
    assert result.returncode != 0 and "manifest.jsonl, line 3" in result.stderr and "Traceback" not in result.stderr
    assert not (run / "view.html").exists()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_html_in_headless_chromium(page, tmp_path):
    run, out = page
    from dreamframe.schema import Movie
    movie = Movie.load(run)
    shot = tmp_path / "shot.png"
    result = chromium(f"--screenshot={shot}", "--window-size=1200,1400", out.as_uri(), tmp_path=tmp_path)
    assert shot.exists(), f"no screenshot; chromium said: {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (1400, 1200)
    assert pixels.std() > 20, f"screenshot looks blank (pixel std {pixels.std():.1f})"
    keep = os.environ.get("DREAMFRAME_KEEP_SCREENSHOT")
    if keep: shutil.copy(shot, keep)

    dom = chromium("--dump-dom", out.as_uri(), tmp_path=tmp_path).stdout
    assert f'data-ready="{len(movie.frames)}"' in dom, "the page's script did not finish"
    body = dom.split("<body", 1)[1]
    body_without_data = re.sub(r'<script type="application/json".*?</script>', "", body, flags=re.S)
    import html
    text = html.unescape(body_without_data)
    for frame in movie.frames:  # every frame as a thumbnail in the strip and a figure in the storyboard
        assert text.count(f'data-frame-id="{frame.id}"') == 2, frame.id
        assert movie.render_prompt(frame) in text, frame.id
    for line in movie.lines:
        assert f"{line.speaker}: {line.text}" in text, line.id
    first = movie.frames[0]
    assert re.search(r'id="prompt" title="SDXL prompt: generate an image in <tok> style: [^"]*">' + re.escape(movie.render_prompt(first)) + "<", text), \
        "caption under the big view, with the exact SDXL prompt as tooltip"
    assert text.count('<figure class="view">') == 2  # side by side

    later = movie.frames[6]  # a link to a frame opens the player there, caption and all
    dom = html.unescape(chromium("--dump-dom", out.as_uri() + "#" + later.id, tmp_path=tmp_path).stdout)
    assert re.search(r'id="prompt"(?: title="[^"]*")?>' + re.escape(movie.render_prompt(later)) + "<", dom)
    assert re.search(r'id="counter">7 / 16<', dom)

    playing = html.unescape(chromium("--dump-dom", out.as_uri() + "?play", tmp_path=tmp_path).stdout)  # 3 s of virtual time at 2 fps
    shown = int(re.search(r'id="counter">(\d+) / 16<', playing).group(1))
    assert shown > 3, f"playing did not advance the frames (at frame {shown})"
    assert re.search(r'id="prompt"(?: title="[^"]*")?>' + re.escape(movie.render_prompt(movie.frames[shown - 1])) + "<", playing), "caption follows playback"


def test_widget_state_in_nbconvert_html(tmp_path):
    nb = ROOT / "nbs" / "08_viewer.ipynb"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    result = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute",
                             "--ExecutePreprocessor.store_widget_state=True", "--ExecutePreprocessor.timeout=300",
                             "--output-dir", str(tmp_path), str(nb)], capture_output=True, text=True, cwd=nb.parent, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / "08_viewer.html").read_text()
    assert "application/vnd.jupyter.widget-state+json" in text
    state = json.loads(re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', text, re.S).group(1))
    models = {m["model_name"] for m in state["state"].values()}
    assert {"PlayModel", "IntSliderModel", "StackModel", "ImageModel", "LinkModel", "DropdownModel"} <= models, models
    views = re.findall(r'application/vnd.jupyter.widget-view\+json">\s*(\{.*?\})\s*</script>', text, re.S)
    assert len(views) >= 2, "the player's views are missing from the page"
    for view in views:
        assert json.loads(view)["model_id"] in state["state"]
    links = [m["state"] for m in state["state"].values() if m["model_name"] == "LinkModel"]
    assert any(l["source"][1] == "value" and l["target"][1] == "selected_index" for l in links), "slider→stack link missing"
    kinds = {m_id: m["model_name"] for m_id, m in state["state"].items()}
    assert any(kinds[l["source"][0].removeprefix("IPY_MODEL_")] == "PlayModel" and kinds[l["target"][0].removeprefix("IPY_MODEL_")] == "IntSliderModel"
               for l in links), "play→slider link missing"
    for link in links:  # linked values agree in the saved state, so the page opens where the kernel left it
        source, target = (state["state"][end[0].removeprefix("IPY_MODEL_")]["state"][end[1]] for end in (link["source"], link["target"]))
        assert source == target, (link, source, target)
