"""Characters that stay the same person (issue 16) on the tiny pipeline: sheets written once per character and
resumable, the user's own picture kept; identity modes that differ from "none", draw the same bytes again, record the
mode and the characters in every manifest line; "none" is today's frames; a replaced sheet makes exactly its frames
stale; the identity score separates same-character from different-character frames."""
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import dreamframe.characters as characters
from dreamframe.characters import CharacterConfig, make_sheets, plan_sheets, sheet_path
from dreamframe.schema import frame_characters
from dreamframe.evaluate import EvalConfig, evaluate_run
from dreamframe.identity import identity_condition, random_ip_adapter
from dreamframe.keyframes import KeyframeConfig, generate_keyframes, plan_keyframes
from dreamframe.keyframes_fast import KeyframeSpeed, generate_keyframes_fast
from dreamframe.models import load_sdxl
from dreamframe.run_folder import write_manifest
from dreamframe.schema import sample_movie

MOVIE = sample_movie(n_substories=1, n_shots=2, n_frames=4)   # 8 frames; Mara, Tom, and both together
FRAMES = dict(steps=2, resolution=64, batch_size=4, negative_prompt="blurry, low quality")
SHEETS = dict(candidates=2, steps=2, resolution=64)


@pytest.fixture(scope="module")
def pipe(tiny):
    return load_sdxl(tiny)


@pytest.fixture(scope="module")
def sheets(pipe, tmp_path_factory):
    "A run folder with the movie's sheets, and the CharacterConfig (with a random IP-Adapter) that made them."
    work = tmp_path_factory.mktemp("sheets")
    cfg = CharacterConfig(**SHEETS, **random_ip_adapter(work / "ip-adapter", pipe.unet))
    MOVIE.save(work / "run")
    make_sheets(cfg, pipe, MOVIE, work / "run", model_name="tiny", progress=False)
    return work / "run", cfg


@pytest.fixture(scope="module")
def drawn(tiny, sheets, tmp_path_factory):
    "The movie's frames in a mode, drawn once per module by a fresh pipeline in a fresh folder."
    cache = {}
    def frames(mode):
        if mode not in cache: cache[mode] = draw(load_sdxl(tiny), fresh_run(sheets, tmp_path_factory.mktemp(mode)), sheets[1], mode)[0]
        return cache[mode]
    return frames


def fresh_run(sheets, path) -> Path:
    "A new run folder holding a copy of the sheets."
    shutil.copytree(sheets[0] / "characters", path / "characters")
    MOVIE.save(path)
    return path


def draw(pipe, run_dir, chars, mode, **kwargs):
    cfg = KeyframeConfig(**FRAMES, identity=mode)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lines = generate_keyframes(cfg, pipe, MOVIE, run_dir, model_name="tiny", progress=False,
                                   condition=identity_condition(chars, cfg, MOVIE, run_dir), **kwargs)
    return {l["frame_id"]: (run_dir / l["path"]).read_bytes() for l in lines}, lines


def test_sheets_once_per_character_resumable(pipe, sheets, tmp_path, monkeypatch):
    run_dir, cfg = sheets
    records = json.loads((run_dir / "characters" / "characters.json").read_text())["characters"]
    assert sorted(records) == ["mara", "tom"] and sorted(p.name for p in (run_dir / "characters").glob("*.png")) == ["mara.png", "tom.png"]
    assert records["mara"]["prompt"].startswith("a character portrait in watercolor style: a woman who looks like Emma Stone")
    assert len(records["mara"]["seeds"]) == 2 and records["mara"]["chosen"] == 0 and records["mara"]["scores"] is None
    original = {p.name: p.read_bytes() for p in (run_dir / "characters").glob("*.png")}
    # killed while writing Tom's PNG (after its record): the next run draws it again, byte for byte
    killed = fresh_run(sheets, tmp_path / "killed"); shutil.rmtree(killed / "characters")
    writes = []
    def interrupted(path, data, *args, **kwargs):
        if Path(path).name == "tom.png": raise KeyboardInterrupt
        writes.append(path); return real(path, data, *args, **kwargs)
    real = characters.atomic_write_bytes
    monkeypatch.setattr(characters, "atomic_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt): make_sheets(cfg, pipe, MOVIE, killed, model_name="tiny", progress=False)
    monkeypatch.setattr(characters, "atomic_write_bytes", real)
    assert plan_sheets(cfg, MOVIE, killed, model_name="tiny").done == 1
    make_sheets(cfg, pipe, MOVIE, killed, model_name="tiny", progress=False)
    assert {p.name: p.read_bytes() for p in (killed / "characters").glob("*.png")} == original
    assert plan_sheets(cfg, MOVIE, killed, model_name="tiny").finished


def test_users_picture_is_kept_and_scorer_picks(pipe, sheets, tmp_path):
    run_dir, cfg = sheets
    mine = fresh_run(sheets, tmp_path / "mine")
    Image.new("RGB", (40, 30), (250, 0, 0)).save(sheet_path(mine, "tom"))
    made = make_sheets(CharacterConfig(**{**SHEETS, "steps": 3}), pipe, MOVIE, mine, model_name="tiny", redo=True, progress=False)
    assert made["characters"]["tom"]["source"] == "user" and Image.open(sheet_path(mine, "tom")).size == (40, 30)
    assert made["characters"]["mara"]["steps"] == 3
    scores = iter([[0.1, 0.9], [0.8, 0.2]])
    scorer = lambda pictures, text: next(scores)
    scorer.name = "fake"
    picked = make_sheets(cfg, pipe, MOVIE, tmp_path / "picked", model_name="tiny", scorer=scorer, progress=False)["characters"]
    assert (picked["mara"]["chosen"], picked["tom"]["chosen"], picked["mara"]["scorer"]) == (1, 0, "fake")
    assert sheet_path(tmp_path / "picked", "tom").read_bytes() == sheet_path(run_dir, "tom").read_bytes()  # candidate 0 is the first
    assert sheet_path(tmp_path / "picked", "mara").read_bytes() != sheet_path(run_dir, "mara").read_bytes()


def test_none_is_todays_frames(pipe, sheets, drawn, tmp_path):
    today = drawn("none")
    for mode in ("shared-attention", "ip-adapter"):   # a pipeline left with a mode on: sheets and "none" take it out
        draw(pipe, fresh_run(sheets, tmp_path / mode), sheets[1], mode)
        MOVIE.save(tmp_path / f"sheets-after-{mode}")
        make_sheets(sheets[1], pipe, MOVIE, tmp_path / f"sheets-after-{mode}", model_name="tiny", progress=False)
        assert all(sheet_path(tmp_path / f"sheets-after-{mode}", i).read_bytes() == sheet_path(sheets[0], i).read_bytes() for i in ("mara", "tom"))
        draw(pipe, fresh_run(sheets, tmp_path / f"{mode}-again"), sheets[1], mode)
        again, lines = draw(pipe, fresh_run(sheets, tmp_path / f"none-after-{mode}"), sheets[1], "none")
        assert again == today and pipe._dreamframe_identity is None and all((l["identity"], l["identity_characters"], l["identity_settings"]) == ("none", {}, {}) for l in lines)
    assert identity_condition(sheets[1], KeyframeConfig(), MOVIE, tmp_path) is None


@pytest.mark.parametrize("mode", ["ip-adapter", "shared-attention"])
def test_mode_differs_from_none_and_repeats(tiny, sheets, drawn, tmp_path, mode):
    none, first = drawn("none"), drawn(mode)
    second, lines = draw(load_sdxl(tiny), fresh_run(sheets, tmp_path / "first"), sheets[1], mode)
    assert all(first[i] != none[i] for i in none) and first == second
    assert [(l["identity"], list(l["identity_characters"])) for l in lines] == [(mode, frame_characters(MOVIE, f)) for f in MOVIE.frames]
    digests = json.loads((tmp_path / "first" / "characters" / "characters.json").read_text())["characters"]
    assert lines[2]["identity_characters"] == {"mara": digests["mara"]["digest"], "tom": digests["tom"]["digest"]}


def test_fast_entry_point_passes_the_condition(tiny, sheets, drawn, tmp_path):
    plain = drawn("ip-adapter")
    run_dir, cfg = fresh_run(sheets, tmp_path / "fast"), KeyframeConfig(**FRAMES, identity="ip-adapter")
    lines = generate_keyframes_fast(cfg, KeyframeSpeed(), load_sdxl(tiny), MOVIE, run_dir, model_name="tiny", progress=False,
                                    condition=identity_condition(sheets[1], cfg, MOVIE, run_dir))
    assert {l["frame_id"]: (run_dir / l["path"]).read_bytes() for l in lines} == plain


def test_replaced_sheet_makes_exactly_its_frames_stale(pipe, sheets, tmp_path):
    run_dir = fresh_run(sheets, tmp_path / "run")
    draw(pipe, run_dir, sheets[1], "shared-attention")
    cfg = KeyframeConfig(**FRAMES, identity="shared-attention")
    plan = lambda chars=sheets[1], cfg=cfg: plan_keyframes(cfg, MOVIE, run_dir, model_name="tiny", condition=identity_condition(chars, cfg, MOVIE, run_dir))
    assert plan().finished
    Image.new("RGB", (64, 64), (0, 90, 200)).save(sheet_path(run_dir, "mara"))
    stale = plan().stale
    assert sorted(stale) == sorted(f.id for f in MOVIE.frames if "mara" in frame_characters(MOVIE, f)) and len(stale) < 8
    assert all(set(changes) == {"identity_characters"} for changes in stale.values())
    before = {p.name: p.read_bytes() for p in (run_dir / "frames").glob("*.png")}
    draw(pipe, run_dir, sheets[1], "shared-attention")   # without redo: kept
    assert {p.name: p.read_bytes() for p in (run_dir / "frames").glob("*.png")} == before
    draw(pipe, run_dir, sheets[1], "shared-attention", redo=True)
    after = {p.name: p.read_bytes() for p in (run_dir / "frames").glob("*.png")}
    assert {n for n in before if before[n] != after[n]} >= {f"{i}.png" for i in stale} and plan().finished
    assert len(plan(CharacterConfig(**{**SHEETS, "shared_strength": 0.5})).stale) == 8
    assert len(plan_keyframes(KeyframeConfig(**FRAMES), MOVIE, run_dir, model_name="tiny").stale) == 8   # back to "none"


def test_identity_score_separates_characters(tmp_path):
    "Frames of Mara share a picture, frames of Tom another: the identity score is high; pictures that ignore who is shown score lower."
    def frames(run_dir, follow):
        MOVIE.save(run_dir); (run_dir / "frames").mkdir(parents=True)
        rng, lines = np.random.default_rng(0), []
        for n, frame in enumerate(MOVIE.frames):
            who = frame_characters(MOVIE, frame) if follow else [["mara"], ["tom"]][n % 2]
            picture = Image.new("RGB", (48, 48), (235, 235, 225)); pen = ImageDraw.Draw(picture)
            if "mara" in who: pen.ellipse([4, 8, 26, 40], fill=(200, 30, 40))
            if "tom" in who: pen.rectangle([24, 6, 44, 44], fill=(20, 60, 200))
            noisy = np.clip(np.asarray(picture, dtype=np.float32) + rng.normal(0, 6, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(noisy).save(run_dir / "frames" / f"{frame.id}.png")
            lines.append({"frame_id": frame.id, "path": f"frames/{frame.id}.png"})
        write_manifest(run_dir / "frames", lines)
        return run_dir
    followed = evaluate_run(EvalConfig(tiny=True, lpips_size=32), frames(tmp_path / "followed", True), progress=False)
    ignored = evaluate_run(EvalConfig(tiny=True, lpips_size=32), frames(tmp_path / "ignored", False), progress=False)
    saved = json.loads((tmp_path / "followed" / "eval" / "metrics.json").read_text())
    assert saved["movie"]["identity"] == followed["identity"]["overall"]["score"] > 0
    assert all(c["score"] > 0 for c in saved["identity"]["characters"].values())
    assert followed["movie"]["identity"] > ignored["movie"]["identity"] + 0.01
